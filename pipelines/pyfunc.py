"""The pyfunc loader every version's MLmodel names (registry/mlflow_model.py):

    model = mlflow.pyfunc.load_model("models:/package-sections@production")
    model.predict(["chess engine with a graphical board"])      # DataFrame: label, probability
    mlflow models serve -m models:/package-sections@production --env-manager local

A version with a merged model loads that: plain layers, nothing extra at inference. An adapter-only version
loads the base it names: from `model_config={"base_path": ...}`, else $LORAOPS_BASE_PATH, else where the base
was registered from (or the packaged default base); refuses a base whose weight fingerprint is not the one the
adapter was trained on; and merges the adapter into it (W = W0 + s·B·A, then plain layers).
"""

import os
from pathlib import Path

import pandas as pd

from lora_core import load_adapter, merge_and_unload
from registry import BaseMismatchError, RegistrySettings, fingerprint_weights
from registry.digests import DigestCache
from registry.mlflow_model import DESCRIPTION, ModelDescription

from .adapter_files import read_labels, trained_with_chat_template
from .models import load_model, locate_base
from .serving import classify, complete


def _load_pyfunc(data_path: str, model_config: dict | None = None) -> "TaskModel":
    """MLflow's entry point: `data_path` is <model>/data/loraops; the weights are in <model>/adapter and merged."""
    description = ModelDescription.model_validate_json((Path(data_path) / DESCRIPTION).read_text())
    base_path = (model_config or {}).get("base_path") or os.environ.get("LORAOPS_BASE_PATH")
    return TaskModel(Path(data_path).parents[1], description, base_path)


class TaskModel:
    def __init__(self, root: Path, description: ModelDescription, base_path: str | None = None):
        kind, base = description.kind, description.base
        self.kind = kind
        self.labels = read_labels(root / "adapter")
        self.chat = trained_with_chat_template(root / "adapter")
        if (root / "merged").is_dir():
            self.model, self.tokenizer = load_model(root / "merged", kind, self.labels)
            return
        path = Path(base_path) if base_path else locate_base(base.name, base.source)
        cache = DigestCache(RegistrySettings.from_env().digests) if "LORAOPS_HOME" in os.environ else None
        actual = fingerprint_weights(path, cache)
        if actual != base.fingerprint:
            raise BaseMismatchError(
                f"this adapter was trained on {base.name} (fingerprint {base.fingerprint[:12]}), but {path} has "
                f"fingerprint {actual[:12]}; load it with model_config={{'base_path': <folder of that base>}} "
                f"or LORAOPS_BASE_PATH"
            )
        self.model, self.tokenizer = load_model(path, kind, self.labels)
        load_adapter(self.model, root / "adapter")
        merge_and_unload(self.model)

    def predict(self, model_input, params: dict | None = None) -> pd.DataFrame:
        """Texts (a list, a string, or a DataFrame's first column) -> label + probability, or a completion."""
        texts = _texts(model_input)
        if self.kind == "classification":
            return pd.DataFrame(
                classify(self.model, self.tokenizer, texts, self.labels), columns=["label", "probability"]
            )
        tokens = int((params or {}).get("max_new_tokens", 20))
        return pd.DataFrame({"completion": [complete(self.model, self.tokenizer, t, tokens, self.chat) for t in texts]})


def _texts(model_input) -> list[str]:
    if isinstance(model_input, pd.DataFrame):
        column = "text" if "text" in model_input.columns else model_input.columns[0]
        return [str(t) for t in model_input[column]]
    if isinstance(model_input, str):
        return [model_input]
    return [str(t) for t in model_input]
