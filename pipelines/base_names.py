"""What a task's base is called where it is recorded: the registry's lineage, an adapter's base_model_name_or_path,
a study's name. Light (no transformers), so a task file is checked and a study named before the models load."""

from .spec import BaseSpec

DEFAULT_BASE_NAME = "sentence-transformers/all-MiniLM-L6-v2"  # base.model: default (pipelines.models)


def base_name(base: BaseSpec) -> str:
    """The base's name as recorded and written into adapters (base_model_name_or_path): what an engine loads."""
    return DEFAULT_BASE_NAME if base.model == "default" else base.model
