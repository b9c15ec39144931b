"""The catalogue of bad input: each case exits with its code and one line naming the cause and the fix, raises
nothing (no traceback), and registers and promotes nothing. Everything here is found before any training."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tasks import data_slice

from pipelines.cli.main import main

LORAOPS = str(Path(sys.executable).parent / "loraops")
GOOD = {
    "task": "sections",
    "type": "classification",
    "base": {"model": "default"},
    "data": {"path": "data.jsonl"},
    "lora": {"r": 4, "alpha": 8, "target_modules": ["query", "value"], "modules_to_save": ["classifier"]},
    "training": {"max_steps": 5, "device": "cpu"},
}


def changed(**changes) -> dict:
    """GOOD with `section__field=value` changes (value None removes the field)."""
    spec = json.loads(json.dumps(GOOD))
    for key, value in changes.items():
        section, _, field = key.partition("__")
        where, name = (spec[section], field) if field else (spec, section)
        if value is None:
            where.pop(name, None)
        else:
            where[name] = value
    return spec


def lines(path: Path, rows: list) -> str:
    path.write_text("".join((json.dumps(r) if not isinstance(r, str) else r) + "\n" for r in rows))
    return str(path)


def base_folder(tmp: Path, damage: str) -> str:
    """A copy of a tiny saved BERT, damaged one way."""
    from transformers import BertConfig, BertForSequenceClassification

    folder = tmp / f"base-{damage}"
    BertForSequenceClassification(
        BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=48)
    ).save_pretrained(folder)
    weights = folder / "model.safetensors"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:-1000])
    elif damage == "pickle-only":
        torch.save({}, folder / "pytorch_model.bin")  # written by the test as a stand-in; loraops never loads it
        weights.unlink()
    elif damage == "no-config":
        (folder / "config.json").unlink()
    elif damage == "bad-config":
        (folder / "config.json").write_text("{not json")
    return str(folder)


# (id, what the task file is, exit code, what the one line says)
CASES = [
    ("rank-zero", lambda t: changed(lora__r=0), 2, r"lora.r: r=0: the rank must be a positive integer"),
    ("rank-negative", lambda t: changed(lora__r=-4), 2, r"r=-4"),
    ("rank-text", lambda t: changed(lora__r="eight"), 2, r"lora.r: .*integer"),
    ("alpha-zero", lambda t: changed(lora__alpha=0), 2, r"alpha=0.0: alpha must be a positive number"),
    ("targets-empty", lambda t: changed(lora__target_modules=[]), 2, r"target_modules is empty"),
    ("targets-bad-regex", lambda t: changed(lora__target_modules="(query"), 2, r"not a valid regex"),
    ("targets-match-nothing", lambda t: changed(lora__target_modules=["qkv"]), 2, r"matched no module"),
    (
        "saved-module-missing",
        lambda t: changed(lora__modules_to_save=["score"]),
        2,
        r"modules_to_save \['score'\] matched no",
    ),
    ("rank-above-width", lambda t: changed(lora__r=1000), 2, r"r=1000 exceeds min\(out, in\)=384"),
    ("dropout-one", lambda t: changed(lora__dropout=1.0), 2, r"lora.dropout"),
    ("init-unknown", lambda t: changed(lora__init="svd"), 2, r"lora.init"),
    ("yaml-malformed", lambda t: "task: [sections\n", 2, r"not valid YAML"),
    ("yaml-empty", lambda t: "", 2, r"a task file is a YAML mapping"),
    ("yaml-list", lambda t: "- task\n- type\n", 2, r"a task file is a YAML mapping"),
    ("unknown-key", lambda t: changed(epochs=3), 2, r"epochs: unknown field"),
    ("unknown-nested-key", lambda t: changed(training__max_step=5), 2, r"training.max_step: unknown field"),
    ("task-dotdot", lambda t: changed(task=".."), 2, r"not a slug"),
    ("task-slash", lambda t: changed(task="a/b"), 2, r"not a slug"),
    ("task-upper", lambda t: changed(task="Sections"), 2, r"not a slug"),
    ("task-unicode", lambda t: changed(task="séctions"), 2, r"not a slug"),
    ("task-300-chars", lambda t: changed(task="x" * 300), 2, r"not a slug"),
    ("task-missing", lambda t: changed(task=None), 2, r"task: required field is missing"),
    ("type-unknown", lambda t: changed(type="regression"), 2, r"type: "),
    ("metric-for-other-type", lambda t: changed(gate={"metric": "perplexity"}), 2, r"does not apply to classification"),
    ("mode-unknown", lambda t: changed(promotion={"mode": "both"}), 2, r"promotion.mode"),
    ("engine-unknown", lambda t: changed(promotion={"serve_with": "triton"}), 2, r"promotion.serve_with"),
    (
        "both-lengths",
        lambda t: changed(training__epochs=1),
        2,
        r"one of training.max_steps or training.epochs, not both",
    ),
    (
        "validation-fraction",
        lambda t: changed(data={"path": "data.jsonl", "validation_fraction": -0.1}),
        2,
        r"data.validation_fraction: .*greater than or equal to 0",
    ),
    ("patience-zero", lambda t: changed(training__patience=0), 2, r"training.patience: .*greater than 0"),
    (
        "patience-without-validation",
        lambda t: changed(data={"path": "data.jsonl", "validation_fraction": 0}, training__patience=2),
        2,
        r"need a validation split",
    ),
    ("best-metric-wrong-type", lambda t: changed(training__best_metric="perplexity"), 2, r"does not apply to classif"),
    ("packing-classifier", lambda t: changed(training__packing=True), 2, r"packing applies to causal-lm"),
    ("lr-ratio-negative", lambda t: changed(lora__lr_ratio=-2), 2, r"lora.lr_ratio: .*greater than 0"),
    (
        "qlora-without-gpu",
        lambda t: changed(base={"model": "default", "load_in_4bit": True}),
        2,
        r"load_in_4bit \(QLoRA\) needs a CUDA GPU",
    ),
    ("batch-zero", lambda t: changed(training__batch_size=0), 2, r"training.batch_size: .*greater than 0"),
    ("lr-negative", lambda t: changed(training__lr=-1), 2, r"training.lr: .*greater than 0"),
    ("device-unknown", lambda t: changed(training__device="tpu"), 2, r"training.device"),
    ("test-fraction", lambda t: changed(data={"path": "data.jsonl", "test_fraction": 1.5}), 2, r"test_fraction"),
    ("merge-tolerance-zero", lambda t: changed(gate={"merge_tolerance": 0}), 2, r"gate.merge_tolerance"),
    ("data-missing", lambda t: changed(data={"path": "nowhere.jsonl"}), 2, r"nowhere.jsonl"),
    ("data-empty", lambda t: changed(data={"path": lines(t / "e.jsonl", [])}), 2, r"e.jsonl"),
    (
        "data-binary",
        lambda t: (t / "b.jsonl").write_bytes(bytes(range(256)) * 8) and changed(data={"path": str(t / "b.jsonl")}),
        2,
        r"b.jsonl",
    ),
    (
        "data-not-utf8",
        lambda t: (
            (t / "l.jsonl").write_bytes('{"text": "caf\xe9", "label": "x"}\n'.encode("latin-1") * 20)
            and changed(data={"path": str(t / "l.jsonl")})
        ),
        2,
        r"l.jsonl",
    ),
    (
        "data-one-class",
        lambda t: changed(
            data={"path": lines(t / "o.jsonl", [{"text": f"t{i}", "label": "games"} for i in range(40)])}
        ),
        2,
        r"o.jsonl",
    ),
    (
        "data-missing-field",
        lambda t: changed(
            data={"path": lines(t / "f.jsonl", [{"body": f"t{i}", "label": str(i % 2)} for i in range(40)])}
        ),
        2,
        r"text",
    ),
    (
        "data-unseen-test-label",
        lambda t: changed(
            data={
                "path": lines(t / "tr.jsonl", [{"text": f"t{i}", "label": str(i % 2)} for i in range(40)]),
                "test_path": lines(t / "te.jsonl", [{"text": "u", "label": "9"}]),
            }
        ),
        2,
        r"'9'",
    ),
    ("base-missing", lambda t: changed(base={"model": str(t / "no-base")}), 2, r"no-base.: no such folder"),
    ("base-truncated", lambda t: changed(base={"model": base_folder(t, "truncated")}), 2, r"truncated"),
    (
        "base-pickle-only",
        lambda t: changed(base={"model": base_folder(t, "pickle-only")}),
        2,
        r"pickle files are never loaded",
    ),
    ("base-no-config", lambda t: changed(base={"model": base_folder(t, "no-config")}), 2, r"no config.json"),
    ("base-bad-config", lambda t: changed(base={"model": base_folder(t, "bad-config")}), 2, r"config.json"),
    ("device-cuda-without-gpu", lambda t: changed(training__device="cuda"), 2, r"no CUDA GPU is visible"),
    ("target-ftp", lambda t: changed(promotion={"target": "ftp://host/x"}), 2, r"unsupported scheme"),
    ("target-no-bucket", lambda t: changed(promotion={"target": "s3:///x"}), 2, r"names no bucket"),
    ("engine-refuses", lambda t: changed(promotion={"serve_with": "vllm"}), 2, r"vLLM will not load this adapter"),
]


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("LORAOPS_HOME", str(tmp_path / "home"))
    for name in ("MLFLOW_TRACKING_URI", "LORAOPS_PROMOTION_TARGET", "PREFECT_API_URL"):
        monkeypatch.delenv(name, raising=False)
    data_slice(tmp_path).rename(tmp_path / "data.jsonl")
    return tmp_path / "home"


def nothing_registered_or_promoted(home: Path) -> bool:
    return not (home / "mlflow.db").exists() and not any(p.is_file() for p in (home / "promoted").rglob("*"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the cuda case needs a machine without a GPU")
@pytest.mark.parametrize("case, make, code, says", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_one_line_and_changes_nothing(case, make, code, says, home, tmp_path, capsys):
    spec = make(tmp_path)
    path = tmp_path / "task.yaml"
    path.write_text(spec if isinstance(spec, str) else yaml.safe_dump(spec))
    capsys.readouterr()  # what making the case printed
    assert main(["run", str(path)]) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("loraops: error: "), err
    assert re.search(says, err), err
    assert nothing_registered_or_promoted(home)


def test_the_catalogue_is_at_least_forty_cases():
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)


def test_a_dead_tracking_server_is_one_line_naming_it_and_no_traceback(home, tmp_path):
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(GOOD))
    env = {**os.environ, "LORAOPS_HOME": str(home), "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}
    for command in (["run", str(path)], ["adapters", "list"]):
        done = subprocess.run([LORAOPS, *command], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        last = done.stderr.strip().splitlines()[-1]
        assert (
            last.startswith("loraops: error: the MLflow tracking server at http://127.0.0.1:9 ") and "start it" in last
        )
    assert nothing_registered_or_promoted(home)
