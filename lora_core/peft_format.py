"""Save and load adapters in Hugging Face PEFT's on-disk format (safetensors only).

Folder: adapter_config.json + adapter_model.safetensors with keys
`base_model.model.<module path>.lora_A.weight` ([r, in]), `.lora_B.weight` ([out, r]) (on an embedding
`.lora_embedding_A` ([r, vocabulary]) and `.lora_embedding_B` ([width, r])) and
`base_model.model.<module path>.<param>` for modules_to_save.
"""

import json
import math
import os
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from safetensors.torch import save_file
from torch import nn

from .config import ALL_LINEAR, LoraConfig
from .errors import AdapterMismatchError, LoraError, UnsafeFormatError
from .injection import (
    adapter_configs,
    inject,
    lora_layers,
    resolve_saved_modules,
    resolve_targets,
    saved_modules,
    set_trainable,
    wrappers,
)
from .layer import layer_weight, stored_in_out
from .model_files import read_json_object
from .safetensors_io import read_tensors

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PICKLE_FILES = ("adapter_model.bin", "adapter_model.pt", "adapter_model.pth")
PREFIX = "base_model.model."
LINEAR_FACTORS = (".lora_A.weight", ".lora_B.weight")
EMBEDDING_FACTORS = (".lora_embedding_A", ".lora_embedding_B")


def factor_keys(path: str, embedding: bool = False) -> tuple[str, str]:
    """PEFT's names of the A and B of module `path`."""
    a, b = EMBEDDING_FACTORS if embedding else LINEAR_FACTORS
    return PREFIX + path + a, PREFIX + path + b


def a_factor(key: str) -> tuple[str, bool] | None:
    """(module path, whether the module is an embedding) when `key` is PEFT's name of an A factor, else None."""
    for (suffix, _), embedding in ((LINEAR_FACTORS, False), (EMBEDDING_FACTORS, True)):
        if key.endswith(suffix):
            return key.removeprefix(PREFIX).removesuffix(suffix), embedding
    return None


def is_factor(key: str) -> bool:
    return key.endswith(LINEAR_FACTORS + EMBEDDING_FACTORS)


def factor_module(key: str) -> str:
    """The module path in a PEFT tensor name: the prefix and a factor's suffix taken off."""
    suffix = next((s for s in LINEAR_FACTORS + EMBEDDING_FACTORS if key.endswith(s)), "")
    return key.removeprefix(PREFIX).removesuffix(suffix)


def adapter_tensors(model: nn.Module, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """The adapter's weights under PEFT's names; a PiSSA adapter is exported as a plain LoRA.

    PiSSA trains B·A on the residual W0 − s·B0·A0. On the original W0 the same update is
    s·B·A − s·B0·A0 = s'·[B, −B0]·[A; A0] with rank 2r and s' = s (alpha scaled to match).
    """
    tensors: dict[str, torch.Tensor] = {}
    for path, layer in lora_layers(model).items():
        if adapter_name not in layer.lora_A:
            continue
        a, b = layer.factors(adapter_name)
        init = layer.pissa_init_factors(adapter_name)
        if init is not None:
            a, b = torch.cat([a, init[0].to(a.dtype)]), torch.cat([b, -init[1].to(b.dtype)], dim=1)
        key_a, key_b = factor_keys(path, layer.embedding)
        tensors[key_a], tensors[key_b] = a, b
    for path, wrapper in saved_modules(model).items():
        if adapter_name in wrapper.modules_to_save:
            for key, value in wrapper.modules_to_save[adapter_name].state_dict().items():
                tensors[f"{PREFIX}{path}.{key}"] = value
    return tensors


class PeftConfig(BaseModel):
    """adapter_config.json as PEFT writes it: the keys loraops reads, PEFT's defaults where one is absent or null.
    PEFT writes many more; they are kept (extra), never read."""

    model_config = ConfigDict(extra="allow", frozen=True)

    peft_type: Literal["LORA"] = "LORA"  # read_peft_config refuses another kind by name
    task_type: str | None = None
    base_model_name_or_path: str | None = None
    r: int
    lora_alpha: float = 8
    lora_dropout: float = 0.0
    target_modules: list[str] | str | None = None
    use_rslora: bool = False
    fan_in_fan_out: bool = False
    modules_to_save: list[str] | None = None
    bias: str = "none"
    rank_pattern: dict[str, int] = {}
    alpha_pattern: dict[str, float] = {}
    init_lora_weights: bool | str = True
    use_dora: bool = False
    lora_bias: bool = False

    @model_validator(mode="before")
    @classmethod
    def _nulls_are_defaults(cls, data: Any) -> Any:
        """PEFT writes null for an unset pattern or flag: the default, as PEFT reads it."""
        if not isinstance(data, dict):
            return data
        nullable = {"task_type", "base_model_name_or_path", "target_modules", "modules_to_save"}
        return {k: v for k, v in data.items() if v is not None or k in nullable}

    @classmethod
    def of(cls, config: LoraConfig, fan_in_fan_out: bool, base_model_name_or_path: str | None) -> "PeftConfig":
        """The config written for `config`: only keys every PEFT version understands (as_json writes what is set)."""
        return cls(
            peft_type="LORA",
            task_type=config.task_type,
            base_model_name_or_path=base_model_name_or_path,
            r=config.r,
            lora_alpha=config.alpha,
            lora_dropout=config.dropout,
            target_modules=config.target_modules,
            use_rslora=config.use_rslora,
            fan_in_fan_out=fan_in_fan_out,
            modules_to_save=list(config.modules_to_save) or None,
            bias=config.bias,
            rank_pattern=config.rank_pattern,
            alpha_pattern=config.alpha_pattern,
            init_lora_weights="gaussian" if config.init == "gaussian" else True,
            inference_mode=True,
        )

    def as_json(self) -> dict[str, Any]:
        """adapter_config.json's content: the keys read or given, PEFT's extras among them."""
        return self.model_dump(exclude_unset=True)

    @property
    def max_rank(self) -> int:
        """The largest rank of any module (rank_pattern's included)."""
        return max([self.r, *self.rank_pattern.values()])

    def lora_config(self, source: str | Path = CONFIG_FILE) -> LoraConfig:
        """LoraConfig from PEFT's keys; refuses what lora_core cannot reproduce."""
        for flag in ("use_dora", "lora_bias"):
            if getattr(self, flag):
                raise AdapterMismatchError(
                    f"{source}: {flag}=true is not supported by lora_core; merge it in PEFT first"
                )
        if self.bias != "none":
            raise AdapterMismatchError(
                f"{source}: bias={self.bias!r} is not supported; only bias='none' adapters load here"
            )
        if str(self.init_lora_weights).lower() in ("pissa", "olora", "corda", "eva", "loftq"):
            raise AdapterMismatchError(
                f"{source}: init_lora_weights={self.init_lora_weights!r} needs a rewritten base; "
                "save it from PEFT with path_initial_model_for_weight_conversion to get a plain LoRA"
            )
        if not self.target_modules:  # a saved adapter names its modules; None would mean "pick defaults" here
            raise AdapterMismatchError(
                f"{source}: target_modules is missing; the adapter config is damaged, re-save the adapter"
            )
        try:
            return LoraConfig(
                r=self.r,
                alpha=self.lora_alpha,
                dropout=self.lora_dropout,
                target_modules=self.target_modules,
                use_rslora=self.use_rslora,
                modules_to_save=self.modules_to_save or [],
                rank_pattern=self.rank_pattern,
                alpha_pattern=self.alpha_pattern,
                task_type=self.task_type,
                init="gaussian" if self.init_lora_weights == "gaussian" else "default",
            )
        except ValidationError as e:
            raise AdapterMismatchError(
                f"{source}: {damage(e)}; the adapter config is damaged, re-save the adapter"
            ) from None


def damage(error: ValidationError) -> str:
    """The first thing pydantic found wrong: where, and what."""
    first = error.errors()[0]
    return f"{'.'.join(map(str, first['loc'])) or 'config'}: {first['msg']}"


def write_adapter(
    path: str | Path,
    tensors: dict[str, torch.Tensor],
    config: LoraConfig,
    fan_in_fan_out: bool = False,
    base_model_name_or_path: str | None = None,
) -> Path:
    """Write a PEFT adapter folder from PEFT-named tensors and their config."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    content = PeftConfig.of(config, fan_in_fan_out, base_model_name_or_path).as_json()
    (out / CONFIG_FILE).write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
    return out


def exported_config(model: nn.Module, adapter_name: str) -> LoraConfig:
    """The config as written to disk: "all-linear" resolved, PiSSA turned into a plain rank-2r LoRA.

    Exported PiSSA has rank 2r; alpha grows so that the scale s stays the same.
    """
    config = adapter_configs(model)[adapter_name]
    layers = {p: layer for p, layer in lora_layers(model).items() if adapter_name in layer.lora_A}
    update: dict[str, Any] = {"init": "gaussian" if config.init == "gaussian" else "default"}
    if config.target_modules == ALL_LINEAR:  # PEFT expands it the same way; write what we resolved
        update["target_modules"] = sorted(layers)
    if any(layer.pissa_init_factors(adapter_name) is not None for layer in layers.values()):
        a = math.sqrt(2) if config.use_rslora else 2.0
        update |= {
            "r": config.r * 2,
            "alpha": config.alpha * a,
            "rank_pattern": {k: v * 2 for k, v in config.rank_pattern.items()},
            "alpha_pattern": {k: v * a for k, v in config.alpha_pattern.items()},
        }
    return config.model_copy(update=update)


def save_adapter(
    model: nn.Module, path: str | Path, adapter_name: str = "default", base_model_name_or_path: str | None = None
) -> Path:
    """Write adapter `adapter_name` as a PEFT folder that PeftModel.from_pretrained loads."""
    if adapter_name not in adapter_configs(model):
        raise LoraError(f"no adapter {adapter_name!r} in this model; have {sorted(adapter_configs(model))}")
    if base_model_name_or_path is None:
        base_model_name_or_path = getattr(getattr(model, "config", None), "_name_or_path", None) or None
    # PEFT's flag is the linear layers' layout (Conv1D); an embedding's factors are named apart
    layers = [layer for layer in lora_layers(model).values() if adapter_name in layer.lora_A and not layer.embedding]
    fan_in_fan_out = any(layer.fan_in_fan_out for layer in layers)
    return write_adapter(
        path,
        adapter_tensors(model, adapter_name),
        exported_config(model, adapter_name),
        fan_in_fan_out,
        base_model_name_or_path,
    )


def read_peft_config(path: str | Path) -> PeftConfig:
    """adapter_config.json of an adapter folder (a JSON object, read by model_files' rules)."""
    folder = Path(path)
    file = folder / CONFIG_FILE
    if not os.path.lexists(file):
        raise LoraError(
            f"{folder} has no {CONFIG_FILE}: not a PEFT adapter folder; point at the folder save_adapter() wrote"
        )
    raw = read_json_object(file, "re-save the adapter")
    if raw.get("peft_type", "LORA") != "LORA":
        raise AdapterMismatchError(f"{file}: peft_type {raw['peft_type']!r} is not LORA; only LoRA adapters load here")
    try:
        return PeftConfig.model_validate(raw)
    except ValidationError as e:
        raise AdapterMismatchError(f"{file}: {damage(e)}; the adapter config is damaged, re-save the adapter") from None


def read_adapter_config(path: str | Path) -> LoraConfig:
    """LoraConfig from a PEFT adapter folder's adapter_config.json."""
    return read_peft_config(path).lora_config(Path(path) / CONFIG_FILE)


def read_adapter_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    folder = Path(path)
    weights = folder / WEIGHTS_FILE
    if not os.path.lexists(weights):
        pickled = [name for name in PICKLE_FILES if (folder / name).exists()]
        if pickled:
            raise UnsafeFormatError(
                f"{folder / pickled[0]} is a pickle file, which can run code on load; loraops loads "
                f"safetensors only: re-save it as {WEIGHTS_FILE} (PEFT: save_pretrained(safe_serialization=True))"
            )
        raise LoraError(f"{folder} has no {WEIGHTS_FILE}; point at the folder save_adapter() wrote")
    return read_tensors(weights)


def expected_shapes(model: nn.Module, config: LoraConfig) -> dict[str, tuple[int, ...]]:
    """PEFT key → shape the model needs for an adapter with this config."""
    shapes: dict[str, tuple[int, ...]] = {}
    for path, module in resolve_targets(model, config).items():
        layer = getattr(module, "base_layer", module)
        w = layer_weight(layer)
        out_f, in_f = w.shape[::-1] if stored_in_out(layer) else w.shape
        r = config.rank_for(path)
        key_a, key_b = factor_keys(path, isinstance(layer, nn.Embedding))
        shapes[key_a], shapes[key_b] = (r, in_f), (out_f, r)
    for path, module in resolve_saved_modules(model, config).items():
        source = getattr(module, "original_module", module)
        for key, value in source.state_dict().items():
            shapes[f"{PREFIX}{path}.{key}"] = tuple(value.shape)
    return shapes


def check_adapter_fits(model: nn.Module, config: LoraConfig, tensors: dict[str, torch.Tensor]) -> None:
    """Refuse, naming the modules, an adapter made for other modules or other shapes."""
    expected = expected_shapes(model, config)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = sorted(k for k in set(expected) & set(tensors) if tuple(tensors[k].shape) != expected[k])
    problems = []
    if missing:
        problems.append(f"missing weights for {_modules(missing)}")
    if unexpected:
        problems.append(f"weights for modules this model lacks: {_modules(unexpected)}")
    if wrong:
        problems.append(
            "wrong shapes: " + ", ".join(f"{_strip(k)} {tuple(tensors[k].shape)} != {expected[k]}" for k in wrong[:4])
        )
    if problems:
        raise AdapterMismatchError(
            "adapter does not fit this model ("
            + "; ".join(problems)
            + "): load it onto the base model it was trained on"
        )


def _strip(key: str) -> str:
    return key.removeprefix(PREFIX)


def _modules(keys: list[str]) -> str:
    names = sorted({factor_module(k) for k in keys})
    return ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")


def load_adapter(
    model: nn.Module, path: str | Path, adapter_name: str = "default", trainable: bool = False
) -> nn.Module:
    """Add the PEFT-format adapter in `path` as `adapter_name` and make it active.

    Names and shapes are checked before the model is touched; on a mismatch nothing changes.
    """
    config = read_adapter_config(path)
    tensors = read_adapter_tensors(path)
    present = [m for m in config.modules_to_save if any(f".{m}." in f".{_strip(k)}" for k in tensors)]
    config = config.model_copy(update={"modules_to_save": present})  # PEFT lists heads a task type may lack
    check_adapter_fits(model, config, tensors)
    inject(model, config, adapter_name)
    with torch.no_grad():
        for path_, layer in lora_layers(model).items():
            if adapter_name in layer.lora_A:
                lora_a, lora_b = layer.factors(adapter_name)
                key_a, key_b = factor_keys(path_, layer.embedding)
                lora_a.copy_(tensors[key_a])
                lora_b.copy_(tensors[key_b])
        for path_, wrapper in saved_modules(model).items():
            if adapter_name in wrapper.modules_to_save:
                copy = wrapper.modules_to_save[adapter_name]
                copy.load_state_dict({k: tensors[f"{PREFIX}{path_}.{k}"] for k in copy.state_dict()})
    if not trainable:
        for module in wrappers(model).values():
            set_trainable(module, adapter_name, False)
    return model
