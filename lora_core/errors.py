"""Exception types raised by lora_core. Each message names the cause and the fix."""


class LoraError(ValueError):
    """Base class: bad input or a request the model's current state cannot satisfy."""


class TargetError(LoraError):
    """A target module pattern matched nothing, or matched a layer type LoRA cannot wrap."""


class AdapterMismatchError(LoraError):
    """An adapter's names or shapes do not fit the model it is loaded into."""


class MergeError(LoraError):
    """Merging twice, unmerging nothing, or a merge that would write NaN/Inf."""


class UnsafeFormatError(LoraError):
    """A pickle-based weight file was offered; only safetensors are loaded."""


class ModelFileError(LoraError):
    """A file of a model or adapter folder is not a regular file, or its JSON is malformed or of the wrong shape."""


class WeightFileError(ModelFileError):
    """A weight file is not valid safetensors, or is truncated or damaged."""
