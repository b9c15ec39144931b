"""Fold the active adapter into the base weights (W = W0 + s·B·A) and back out again."""

from torch import nn

from .errors import MergeError
from .injection import CONFIGS_ATTR, active_adapter, forget_wrappers, lora_layers, saved_modules


def merge(model: nn.Module) -> nn.Module:
    """W ← W0 + s·B·A in every layer carrying the active adapter; the forward then costs nothing extra."""
    layers = lora_layers(model)
    name = active_adapter(model)
    if name is None:
        raise MergeError("no active adapter to merge; set_active_adapter(model, NAME) first")
    merged = [path for path, layer in layers.items() if layer.merged_adapter]
    if merged:
        raise MergeError(
            f"adapter {layers[merged[0]].merged_adapter!r} is already merged; unmerge() before merging again"
        )
    done = []
    try:
        for layer in layers.values():
            if name in layer.lora_A:
                layer.merge()
                done.append(layer)
    except MergeError:
        for layer in done:  # all or nothing: no half-merged model
            layer.unmerge()
        raise
    return model


def unmerge(model: nn.Module) -> nn.Module:
    """W ← W − s·B·A: W0 comes back up to float32 rounding."""
    layers = [layer for layer in lora_layers(model).values() if layer.merged_adapter]
    if not layers:
        raise MergeError("nothing is merged; call merge() first")
    for layer in layers:
        layer.unmerge()
    return model


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge the active adapter and replace every wrapper by a plain layer: the model to export."""
    if not any(layer.merged_adapter for layer in lora_layers(model).values()):
        merge(model)
    layers, saved = lora_layers(model), saved_modules(model)
    for path, layer in layers.items():
        model.set_submodule(path, layer.base_layer)
    for path, wrapper in saved.items():
        model.set_submodule(path, wrapper.active_module())
    model.__dict__.pop(CONFIGS_ATTR, None)
    forget_wrappers(model)
    model.requires_grad_(False)
    return model
