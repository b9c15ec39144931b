"""Put adapters into a model, switch between them and take them out again."""

import difflib
import re

from torch import nn

from .config import ALL_LINEAR, LoraConfig
from .errors import LoraError, MergeError, TargetError
from .layer import LoraLayer, ModulesToSave, can_wrap, is_wrappable, layer_weight
from .targets import default_targets

CONFIGS_ATTR = "lora_configs"  # {adapter name: LoraConfig}, set on the root model
WRAPPERS_ATTR = "lora_wrappers"  # {path: LoraLayer | ModulesToSave}, known since inject: switching walks only these


def adapter_configs(model: nn.Module) -> dict[str, LoraConfig]:
    return model.__dict__.setdefault(CONFIGS_ATTR, {})


def wrappers(model: nn.Module) -> dict[str, LoraLayer | ModulesToSave]:
    """Every wrapper in the model, found once and kept on the root until inject/delete/unload changes them."""
    found = model.__dict__.get(WRAPPERS_ATTR)
    if found is None:
        found = {p: m for p, m in model.named_modules() if isinstance(m, (LoraLayer, ModulesToSave))}
        model.__dict__[WRAPPERS_ATTR] = found
    return found


def forget_wrappers(model: nn.Module) -> None:
    model.__dict__.pop(WRAPPERS_ATTR, None)


def lora_layers(model: nn.Module) -> dict[str, LoraLayer]:
    return {path: m for path, m in wrappers(model).items() if isinstance(m, LoraLayer)}


def saved_modules(model: nn.Module) -> dict[str, ModulesToSave]:
    return {path: m for path, m in wrappers(model).items() if isinstance(m, ModulesToSave)}


def _plain_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Module paths as the user sees them: a wrapper stands for the module it wraps."""
    hidden: list[str] = []
    found = {}
    for path, module in model.named_modules():
        if path and not any(path.startswith(h) for h in hidden):
            found[path] = module
            if isinstance(module, (LoraLayer, ModulesToSave)):
                hidden.append(path + ".")
    return found


def _name_matches(path: str, names: list[str]) -> bool:
    return any(path == n or path.endswith("." + n) for n in names)


def _output_head(model: nn.Module) -> nn.Module | None:
    get = getattr(model, "get_output_embeddings", None)
    return get() if callable(get) else None


def resolve_saved_modules(model: nn.Module, config: LoraConfig) -> dict[str, nn.Module]:
    """{module path: module} that `config.modules_to_save` selects (outermost matches only)."""
    matched = [p for p in _plain_modules(model) if _name_matches(p, config.modules_to_save)]
    outer = [p for p in matched if not any(p.startswith(q + ".") for q in matched)]
    return {p: model.get_submodule(p) for p in outer}


def resolve_targets(model: nn.Module, config: LoraConfig) -> dict[str, nn.Module]:
    """{module path: module} that `config.target_modules` selects, checked for type and rank.
    None selects the architecture's defaults (lora_core.targets); neither they nor "all-linear" reach into the output
    head or modules_to_save."""
    modules = _plain_modules(model)
    spec = config.target_modules if config.target_modules is not None else default_targets(model)
    if spec == ALL_LINEAR:
        chosen = {p: m for p, m in modules.items() if is_wrappable(m) or isinstance(m, LoraLayer) and not m.embedding}
    elif isinstance(spec, str):
        chosen = {p: m for p, m in modules.items() if re.fullmatch(spec, p)}
    else:
        chosen = {p: m for p, m in modules.items() if _name_matches(p, spec)}
    if spec == ALL_LINEAR or config.target_modules is None:
        head, kept = _output_head(model), list(resolve_saved_modules(model, config))
        chosen = {
            p: m for p, m in chosen.items() if m is not head and not any(p == k or p.startswith(k + ".") for k in kept)
        }
    if not chosen:
        raise TargetError(_no_match_message(spec, modules))
    for path, module in chosen.items():
        if not (can_wrap(module) or isinstance(module, LoraLayer)):
            raise TargetError(
                f"target {path!r} is a {type(module).__name__}; LoRA wraps nn.Linear, Conv1D and nn.Embedding "
                "layers only: name its linear sub-modules instead"
            )
        layer = module.base_layer if isinstance(module, LoraLayer) else module
        if isinstance(layer, nn.Embedding):
            _check_untied(model, path, layer)
        w = layer_weight(layer)
        r, limit = config.rank_for(path), min(w.shape)
        if r > limit:
            raise LoraError(
                f"r={r} exceeds min(out, in)={limit} of {path!r} {tuple(w.shape)}: "
                f"use r <= {limit} or leave this module out"
            )
    return chosen


def _check_untied(model: nn.Module, path: str, embedding: nn.Embedding) -> None:
    """An embedding whose weight is also another module's (tied input and output embeddings) cannot take a merged
    update without changing that module too."""
    for other, module in model.named_modules():
        if module is embedding or isinstance(module, LoraLayer) and module.base_layer is embedding:
            continue
        if getattr(module, "weight", None) is embedding.weight:
            raise TargetError(
                f"target {path!r} shares its weight with {other!r} (tied embeddings): a merged update would change "
                "both; leave the embedding out of target_modules"
            )


def _no_match_message(spec: list[str] | str, modules: dict[str, nn.Module]) -> str:
    leaves = sorted({p.rsplit(".", 1)[-1] for p, m in modules.items() if is_wrappable(m) or isinstance(m, LoraLayer)})
    asked = [spec] if isinstance(spec, str) else spec
    close = sorted({c for a in asked for c in difflib.get_close_matches(a.rsplit(".", 1)[-1], leaves, n=5, cutoff=0.4)})
    hint = f"close names: {close}" if close else f"linear modules here: {leaves[:12]}"
    return f"target_modules {spec!r} matched no module of the model; {hint}"


def inject(model: nn.Module, config: LoraConfig, adapter_name: str = "default") -> nn.Module:
    """Wrap the targets of `config` in LoraLayers carrying adapter `adapter_name`; make it active.

    Base weights are frozen; only the new adapter (and its modules_to_save copies) trains.
    A layer that already has adapters gets one more instead of a nested wrapper.
    """
    if not re.fullmatch(r"[A-Za-z0-9_-]+", adapter_name):
        raise LoraError(f"adapter name {adapter_name!r} must be letters, digits, '_' or '-'")
    configs = adapter_configs(model)
    if adapter_name in configs:
        raise LoraError(f"adapter {adapter_name!r} is already in this model; delete_adapter() it or pick another name")
    if any(layer.merged_adapter for layer in lora_layers(model).values()):
        raise MergeError("an adapter is merged into the base weights; unmerge() before adding another")
    targets = resolve_targets(model, config)
    keep = resolve_saved_modules(model, config)
    if config.modules_to_save and not keep:
        raise TargetError(f"modules_to_save {config.modules_to_save} matched no module; name e.g. the classifier head")
    forget_wrappers(model)
    if not configs:  # the base is frozen once; switching then toggles adapter parameters only
        model.requires_grad_(False)
    for path, module in targets.items():
        layer = module if isinstance(module, LoraLayer) else LoraLayer(module)
        layer.add_adapter(adapter_name, config.rank_for(path), config.scaling_for(path), config.dropout, config.init)
        if layer is not module:
            model.set_submodule(path, layer)
    for path, module in keep.items():
        wrapper = module if isinstance(module, ModulesToSave) else ModulesToSave(module)
        wrapper.add_adapter(adapter_name)
        if wrapper is not module:
            model.set_submodule(path, wrapper)
    # what was chosen, not how: a saved or reloaded adapter names its modules whatever picked them
    configs[adapter_name] = (
        config if config.target_modules is not None else config.model_copy(update={"target_modules": sorted(targets)})
    )
    set_active_adapter(model, adapter_name)
    return model


def set_active_adapter(model: nn.Module, adapter_name: str | None) -> None:
    """Route every wrapped layer through `adapter_name` (None: the base model alone).

    Only pointers change: base weights are neither copied nor reloaded, and only the wrappers
    are visited (cost flat in the number of adapters loaded). The active adapter's parameters
    become trainable, the previously active one's frozen; the base stays frozen.
    """
    if adapter_name is not None and adapter_name not in adapter_configs(model):
        raise LoraError(f"no adapter {adapter_name!r} in this model; have {sorted(adapter_configs(model))}")
    found = wrappers(model).values()
    if any(getattr(w, "merged_adapter", None) for w in found):
        raise MergeError("an adapter is merged into the base weights; unmerge() before switching adapters")
    for wrapper in found:
        set_trainable(wrapper, wrapper.active_adapter, False)
        wrapper.active_adapter = adapter_name
        set_trainable(wrapper, adapter_name, True)


def set_trainable(wrapper: LoraLayer | ModulesToSave, adapter_name: str | None, trainable: bool) -> None:
    stores = [wrapper.lora_A, wrapper.lora_B] if isinstance(wrapper, LoraLayer) else [wrapper.modules_to_save]
    for store in stores:
        if adapter_name is not None and adapter_name in store:
            store[adapter_name].requires_grad_(trainable)


def active_adapter(model: nn.Module) -> str | None:
    return next((layer.active_adapter for layer in lora_layers(model).values()), None)


def delete_adapter(model: nn.Module, adapter_name: str) -> None:
    """Remove an adapter; layers left with none are unwrapped back to their base layer."""
    configs = adapter_configs(model)
    if adapter_name not in configs:
        raise LoraError(f"no adapter {adapter_name!r} in this model; have {sorted(configs)}")
    layers, saved = lora_layers(model), saved_modules(model)
    forget_wrappers(model)
    for path, layer in layers.items():
        if adapter_name in layer.lora_A:
            layer.remove_adapter(adapter_name)
            if not layer.lora_A:
                model.set_submodule(path, layer.base_layer)
    for path, wrapper in saved.items():
        if adapter_name in wrapper.modules_to_save:
            del wrapper.modules_to_save[adapter_name]
            if wrapper.active_adapter == adapter_name:
                wrapper.active_adapter = None
            if not wrapper.modules_to_save:
                model.set_submodule(path, wrapper.original_module)
    del configs[adapter_name]


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; for LoRA alone trainable = Σ r·(in + out) over targets."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
