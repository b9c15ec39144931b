"""Tiny models built from transformers configs (BERT-like, GPT-2 with Conv1D, Llama-like) and a plain MLP."""

import pytest
import torch
import transformers
from torch import nn
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

from lora_core.injection import lora_layers

transformers.logging.set_verbosity_error()
TIERS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(items):
    """Each test carries its tier's marker, from its folder: `pytest -m unit` is the inner loop."""
    for item in items:
        tier = next((part for part in item.path.parts if part in TIERS), None)
        if tier:
            item.add_marker(tier)


VOCAB = 64


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(12, 24), nn.Linear(24, 16), nn.Linear(16, 3)

    def forward(self, x):
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def make_bert():
    return BertForSequenceClassification(
        BertConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=48,
            max_position_embeddings=32,
            num_labels=3,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
    )


def make_gpt2():
    return GPT2LMHeadModel(
        GPT2Config(
            vocab_size=VOCAB,
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_positions=32,
            bos_token_id=0,
            eos_token_id=0,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
    )


def make_llama():
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=32,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
        )
    )


# name → (factory, LoRA targets, input maker)
MODELS = {
    "bert": (make_bert, ["query", "value"]),
    "gpt2": (make_gpt2, ["c_attn", "c_proj"]),
    "llama": (make_llama, ["q_proj", "v_proj", "down_proj"]),
    "mlp": (MLP, ["fc1", "fc2"]),
}


def build(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return MODELS[name][0]().eval()


def targets(name: str) -> list[str]:
    return MODELS[name][1]


def inputs(name: str, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if name == "mlp":
        return torch.randn(5, 12, generator=g)
    return torch.randint(1, VOCAB, (2, 9), generator=g)


def output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(x)
    return (out if isinstance(out, torch.Tensor) else out.logits).float()


def randomize_b(model: nn.Module, adapter: str = "default", seed: int = 2, std: float = 0.05) -> None:
    """Give B non-zero values so the adapter changes the output (B = 0 at init)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            if adapter in layer.lora_B:
                w = layer.lora_B[adapter].weight
                w.copy_(torch.randn(w.shape, generator=g) * std)


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture(params=list(MODELS))
def model_name(request):
    return request.param


def write_artifacts(root, seed: int = 0) -> dict:
    """A tiny BERT base, a trained-looking adapter on it and the merged model, saved as a user would.

    Returns the folders and the adapted model's logits on `inputs("bert")` for round-trip checks.
    """
    from lora_core import LoraConfig, inject, merge_and_unload, save_adapter

    model = build("bert")
    model.save_pretrained(root / "base")
    inject(
        model,
        LoraConfig(
            r=4, alpha=8, target_modules=["query", "value"], modules_to_save=["classifier"], task_type="SEQ_CLS"
        ),
    )
    randomize_b(model, seed=seed + 2)
    save_adapter(model, root / f"adapter-{seed}", base_model_name_or_path="tiny/bert")
    logits = output(model, inputs("bert"))
    merge_and_unload(model).save_pretrained(root / f"merged-{seed}")
    return {
        "base": root / "base",
        "adapter": root / f"adapter-{seed}",
        "merged": root / f"merged-{seed}",
        "logits": logits,
    }


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory):
    """An embedded MLflow database with its schema made once: creating it (Alembic migrations) takes seconds."""
    from mlflow import MlflowClient

    database = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{database}").search_experiments(max_results=1)
    return database


@pytest.fixture
def embedded_home(tmp_path, mlflow_template, monkeypatch):
    """A fresh $LORAOPS_HOME on the embedded default (MLflow on SQLite, folder promotions), set in the environment."""
    import shutil

    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(mlflow_template, home / "mlflow.db")
    monkeypatch.setenv("LORAOPS_HOME", str(home))
    for name in ("MLFLOW_TRACKING_URI", "LORAOPS_PROMOTION_TARGET", "PREFECT_API_URL"):
        monkeypatch.delenv(name, raising=False)
    return home


from servers import mlflow_server, postgres_uri, s3_auth_server, s3_env, s3_server  # noqa: E402,F401  (fixtures)
