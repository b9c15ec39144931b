"""An adapter as data: per module the factors A: [r, k], B: [d, r] and the scale s of ΔW = s·B·A."""

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import LoraConfig
from ..errors import AdapterMismatchError, LoraError
from ..model_files import open_regular
from ..peft_format import (
    CONFIG_FILE,
    a_factor,
    factor_keys,
    is_factor,
    read_adapter_tensors,
    read_peft_config,
    write_adapter,
)
from ..safetensors_io import TensorEntry, read_header, read_tensor


@dataclass(frozen=True)
class AdaptedModule:
    path: str
    lora_a: torch.Tensor  # [r, k]
    lora_b: torch.Tensor  # [d, r]
    scale: float
    embedding: bool = False  # on an nn.Embedding: k is the vocabulary, d the width, and W0 is stored [k, d]

    @property
    def rank(self) -> int:
        return self.lora_a.shape[0]

    def delta(self) -> torch.Tensor:
        """ΔW = s·B·A as [d, k] = [out, in], float64."""
        return self.scale * self.lora_b.double() @ self.lora_a.double()


@dataclass(frozen=True)
class Adapter:
    config: LoraConfig
    modules: dict[str, AdaptedModule]
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # modules_to_save weights, PEFT names
    fan_in_fan_out: bool = False
    base_model_name_or_path: str | None = None

    def save(self, path: str | Path) -> Path:
        tensors = dict(self.extra)
        for m in self.modules.values():
            key_a, key_b = factor_keys(m.path, m.embedding)
            tensors[key_a], tensors[key_b] = m.lora_a, m.lora_b
        return write_adapter(path, tensors, self.config, self.fan_in_fan_out, self.base_model_name_or_path)


def read_adapter(path: str | Path) -> Adapter:
    """Load a PEFT-format adapter folder as factors (no model needed)."""
    folder = Path(path)
    peft = read_peft_config(folder)
    config = peft.lora_config(folder / CONFIG_FILE)
    tensors = read_adapter_tensors(folder)
    modules, extra = {}, {}
    for key, value in tensors.items():
        if factor := a_factor(key):
            module, embedding = factor
            b = tensors.get(factor_keys(module, embedding)[1])
            if b is None or b.shape[1] != value.shape[0]:
                raise AdapterMismatchError(
                    f"{folder}: {module} has lora_A {tuple(value.shape)} but lora_B "
                    f"{None if b is None else tuple(b.shape)}; the adapter file is damaged"
                )
            modules[module] = AdaptedModule(module, value, b, config.scaling_for(module), embedding)
        elif not is_factor(key):
            extra[key] = value
    if not modules:
        raise LoraError(f"{folder}: no lora_A/lora_B weights; point at a LoRA adapter folder")
    return Adapter(
        config,
        dict(sorted(modules.items())),
        extra,
        peft.fan_in_fan_out,
        peft.base_model_name_or_path,
    )


def as_adapter(adapter: "Adapter | str | Path") -> Adapter:
    return adapter if isinstance(adapter, Adapter) else read_adapter(adapter)


class BaseWeights:
    """Base model weights by module path, from an HF model folder (*.safetensors) or a state dict.

    Adapter paths are those of the task model (e.g. `bert.encoder...query`); base checkpoints
    often drop the task wrapper's prefix (`encoder...query`), so leading components are tried off.
    """

    def __init__(self, source: "str | Path | dict[str, torch.Tensor]") -> None:
        self._state: dict[str, torch.Tensor] = {}
        self._files: dict[str, tuple[Path, TensorEntry]] = {}  # tensor name -> the file holding it, and where
        if isinstance(source, dict):
            self._state = source
            return
        folder = Path(source)
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise LoraError(f"{folder} has no *.safetensors weights; pass the base model's folder")
        for file in files:
            self._files.update({key: (file, entry) for key, entry in read_header(file)[0].items()})

    def _get(self, key: str) -> torch.Tensor | None:
        if key in self._state:
            return self._state[key]
        if key in self._files:
            file, entry = self._files[key]
            with open_regular(file) as f:
                return read_tensor(f, entry)
        return None

    def weight(self, module_path: str, shape: tuple[int, int], fan_in_fan_out: bool = False) -> torch.Tensor:
        """W0 of `module_path` as [out, in] = `shape`."""
        parts = module_path.split(".")
        for start in range(len(parts)):
            w = self._get(".".join(parts[start:]) + ".weight")
            if w is not None:
                w = w.T if fan_in_fan_out else w
                if tuple(w.shape) != tuple(shape):
                    raise AdapterMismatchError(
                        f"base weight of {module_path} is {tuple(w.shape)} but the adapter's "
                        f"ΔW is {tuple(shape)}: pass the base model the adapter was trained on"
                    )
                return w
        raise AdapterMismatchError(
            f"the base model has no weight for {module_path}: pass the base model the adapter was trained on"
        )
