"""Registry on the embedded default: MLflow on SQLite in a tmp dir, promotion into a local folder."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import build, inputs, output, write_artifacts
from mlflow import MlflowClient

from lora_core import load_adapter
from registry import (
    AdapterRegistry,
    BaseName,
    IntegrityError,
    Lineage,
    LoraSummary,
    RegistryError,
    RegistrySettings,
    fingerprint_weights,
)
from registry.aliases import DriftError
from registry.errors import BaseMismatchError, StoreError
from registry.manifest import scan_folder, verify_folder
from registry.names import base_model_name, check_task_name, parse_ref

DATASET = "d" * 64
LOADER = "pipelines.pyfunc"  # the pyfunc loader module of every registered MLflow Model


@pytest.fixture
def artifacts(tmp_path):
    return write_artifacts(tmp_path)


@pytest.fixture
def registry(embedded_home):
    return AdapterRegistry(RegistrySettings.from_env(home=embedded_home, tracking_uri=None, actor="tester"))


@pytest.fixture
def registered(registry, artifacts):
    base = registry.register_base(artifacts["base"], name="tiny/bert", source="hf:tiny/bert", revision="r1")
    v1 = registry.register(
        "topics",
        artifacts["adapter"],
        base,
        DATASET,
        {"accuracy": 0.8},
        merged_dir=artifacts["merged"],
        loader_module=LOADER,
    )
    return registry, base, v1


@pytest.mark.parametrize("name", ["", "..", "a/b", "Topics", "-topics", "topics-", "a_b", "a.b", "x" * 64, "../etc"])
def test_task_names_that_could_escape_or_collide_are_refused_before_any_io(name, tmp_path):
    # A tracking URI nobody listens on: any I/O would fail differently (and slowly).
    offline = AdapterRegistry(RegistrySettings.from_env(home=tmp_path, tracking_uri="http://127.0.0.1:9"))
    with pytest.raises(RegistryError, match="not a slug"):
        offline.resolve(name)
    with pytest.raises(RegistryError, match="not a slug"):
        offline.promote(name, 1)
    assert not (tmp_path / "promoted").exists()


def test_slugs_and_refs_parse():
    assert check_task_name("support-tickets-2") == "support-tickets-2"
    assert base_model_name("sentence-transformers/all-MiniLM-L6-v2") == "base.sentence-transformers--all-minilm-l6-v2"
    assert [parse_ref(r) for r in (None, "@production", "candidate", 3, "3", ":3", "v3")] == [
        "production",
        "production",
        "candidate",
        3,
        3,
        3,
        3,
    ]
    with pytest.raises(RegistryError, match="neither a version number nor an alias"):
        parse_ref("staging")


def test_weight_fingerprint_ignores_folder_name_sharding_and_tool_version(tmp_path):
    model = build("bert")
    model.save_pretrained(tmp_path / "one")
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    config = json.loads((tmp_path / "one" / "config.json").read_text())
    config["transformers_version"] = "0.0.1"
    (tmp_path / "one" / "config.json").write_text(json.dumps(config))
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 1
    assert fingerprint_weights(tmp_path / "one") == fingerprint_weights(tmp_path / "sharded")
    with torch.no_grad():
        model.bert.encoder.layer[0].attention.self.query.weight[0, 0] += 1e-3
    model.save_pretrained(tmp_path / "changed")
    assert fingerprint_weights(tmp_path / "changed") != fingerprint_weights(tmp_path / "one")


def test_fingerprint_refuses_a_folder_without_safetensors(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(RegistryError, match="pickle files are not read"):
        fingerprint_weights(tmp_path)


def test_manifest_catches_a_flipped_byte_and_a_truncated_file(artifacts):
    folder = artifacts["adapter"]
    files = scan_folder(folder)
    verify_folder(folder, files)
    weights = folder / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(data)
    with pytest.raises(IntegrityError, match="altered"):
        verify_folder(folder, files)
    weights.write_bytes(data[:-10])
    with pytest.raises(IntegrityError, match="truncated"):
        verify_folder(folder, files)


def test_register_records_lineage_and_base_is_registered_once(registered, artifacts):
    registry, base, v1 = registered
    assert registry.register_base(artifacts["base"], name="another name") == base  # same weights, same record
    assert base.fingerprint == fingerprint_weights(artifacts["base"]) and base.revision == "r1"
    assert v1.version == 1 and v1.aliases == ["candidate"]
    assert (v1.base_fingerprint, v1.base_version, v1.dataset_fingerprint) == (base.fingerprint, 1, DATASET)
    assert v1.lora == LoraSummary(r=4, alpha=8.0, targets=["query", "value"]) and v1.metrics == {"accuracy": 0.8}
    assert v1.code_version.startswith(("git:", "loraops=="))
    assert set(v1.manifests) == {"adapter", "merged"}
    mv = MlflowClient(registry.settings.tracking_uri).get_model_version("topics", "1")
    assert mv.run_id == v1.run_id and mv.tags["loraops.manifest.sha256"] == v1.manifests["adapter"]
    assert [r.version for r in registry.list_versions(base="tiny/bert")] == [1]
    assert registry.list_versions(base="other/model") == []
    assert mv.tags["loraops.lora.alpha"] == "8.0" and json.loads(mv.tags["loraops.lora.targets"]) == ["query", "value"]


def test_register_base_reads_the_config_once_for_fingerprint_name_and_type(registry, artifacts, monkeypatch):
    import lora_core.model_files as model_files

    opened = []
    real = model_files.open_regular
    monkeypatch.setattr(model_files, "open_regular", lambda path: opened.append(Path(path).name) or real(path))
    base = registry.register_base(artifacts["base"], revision="r1")
    assert opened.count("config.json") == 1 and base.model_type == "bert"


def test_lineage_is_typed_and_names_a_base_it_cannot_find(registered):
    registry, base, v1 = registered
    lineage = registry.lineage("topics")
    assert isinstance(lineage, Lineage) and lineage.bases == [base] and lineage.versions == [v1]
    assert [(e.action, e.alias, e.to_version) for e in lineage.history] == [("register", "candidate", 1)]
    MlflowClient(registry.settings.tracking_uri).delete_registered_model(
        base.model
    )  # a base removed by hand: the version still names it
    assert registry.lineage("topics").bases == [BaseName(name="tiny/bert")]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: (a["adapter"] / "adapter_model.safetensors").unlink(), "missing adapter_model.safetensors"),
        (
            lambda a: (a["adapter"] / "adapter_config.json").write_text('{"peft_type": "IA3"}'),
            "peft_type 'IA3' is not LORA; only LoRA adapters load here",
        ),
        (lambda a: (a["merged"] / "config.json").unlink(), "merged model needs config.json"),
    ],
)
def test_bad_artifacts_register_nothing(registry, artifacts, change, message):
    base = registry.register_base(artifacts["base"], name="tiny/bert")
    change(artifacts)
    with pytest.raises(RegistryError, match=message):
        registry.register(
            "topics",
            artifacts["adapter"],
            base,
            DATASET,
            {"accuracy": 0.8},
            merged_dir=artifacts["merged"],
            loader_module=LOADER,
        )
    assert registry.list_versions() == []


@pytest.mark.parametrize(
    "dataset, metrics, message",
    [
        ("not-a-digest", {"accuracy": 0.8}, "not a sha256"),
        (DATASET, {"accuracy": float("nan")}, "not a finite number"),
    ],
)
def test_bad_lineage_registers_nothing(registry, artifacts, dataset, metrics, message):
    base = registry.register_base(artifacts["base"], name="tiny/bert")
    with pytest.raises(RegistryError, match=message):
        registry.register("topics", artifacts["adapter"], base, dataset, metrics, loader_module=LOADER)
    assert registry.list_versions() == []


def test_promote_into_folder_verifies_and_moves_production_then_repeat_uploads_nothing(registered):
    registry, _, v1 = registered
    first = registry.promote("topics", 1, "adapter", reason="first")
    target = registry.settings.home / "promoted" / "topics" / "v1" / "adapter"
    assert first.uri == str(target) and sorted(first.uploaded) == ["adapter_config.json", "adapter_model.safetensors"]
    manifest = json.loads((target / "manifest.json").read_text())
    assert (manifest["task"], manifest["version"], manifest["base_fingerprint"]) == ("topics", 1, v1.base_fingerprint)
    verify_folder(target, scan_folder(target))
    assert registry.resolve("topics").version == 1
    again = registry.promote("topics", 1, "adapter")
    assert again.uploaded == [] and again.bytes_uploaded == 0 and again.events == []


def test_fetch_returns_verified_cache_copy_that_loads_onto_the_base(registered, artifacts):
    registry, _, v1 = registered
    registry.promote("topics", 1, "adapter")
    folder = registry.fetch("topics", "production")
    assert folder.parent == registry.settings.cache and folder.name == v1.manifests["adapter"]
    model = build("bert")
    registry.check_base(v1, artifacts["base"])
    load_adapter(model, folder)
    torch.testing.assert_close(output(model, inputs("bert")), artifacts["logits"])


def test_fetch_refuses_a_tampered_promoted_copy(registered):
    registry, _, _ = registered
    promotion = registry.promote("topics", 1, "adapter")
    weights = registry.settings.home / "promoted" / "topics" / "v1" / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    shutil.rmtree(registry.settings.cache)  # else fetch is served by the verified copy promote left there
    with pytest.raises(IntegrityError, match="altered"):
        registry.fetch("topics", "production")
    assert not any(registry.settings.cache.iterdir()) and promotion.version == 1


def test_wrong_base_is_refused_with_both_fingerprints(registered, tmp_path):
    registry, base, v1 = registered
    build("bert", seed=5).save_pretrained(tmp_path / "other-base")
    other = fingerprint_weights(tmp_path / "other-base")
    with pytest.raises(BaseMismatchError, match=f"{base.fingerprint[:12]}.*{other[:12]}"):
        registry.check_base(v1, tmp_path / "other-base")


def test_rollback_walks_back_through_promotions_and_history_records_every_move(registered, artifacts):
    registry, base, _ = registered
    for seed in (1, 2):
        extra = write_artifacts(artifacts["base"].parent, seed=seed)
        registry.register(
            "topics", extra["adapter"], base, DATASET, {"accuracy": 0.8 + seed / 100}, loader_module=LOADER
        )
    for version in (1, 2, 3):
        registry.promote("topics", version, "adapter", reason=f"ship v{version}")
    assert registry.resolve("topics", "previous-production").version == 2
    registry.rollback("topics", reason="v3 regressed")
    assert (registry.resolve("topics").version, registry.resolve("topics", "previous-production").version) == (2, 1)
    registry.rollback("topics")
    assert registry.resolve("topics").version == 1
    with pytest.raises(RegistryError, match="no version with alias 'previous-production'"):
        registry.resolve("topics", "previous-production")
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        registry.rollback("topics")
    production = [
        (e.action, e.from_version, e.to_version) for e in registry.history("topics") if e.alias == "production"
    ]
    assert production == [
        ("promote", None, 1),
        ("promote", 1, 2),
        ("promote", 2, 3),
        ("rollback", 3, 2),
        ("rollback", 2, 1),
    ]
    event = next(e for e in registry.history("topics") if e.reason == "v3 regressed")
    assert event.actor == "tester" and event.time.endswith("+00:00")


def test_promote_errors_move_no_alias(registered, tmp_path):
    registry, _, _ = registered
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StoreError, match="cannot be created"):
        registry.promote("topics", 1, "adapter", target=str(blocker / "sub"))
    with pytest.raises(RegistryError, match="unsupported scheme") as error:  # bad input, not a store failure
        registry.promote("topics", 1, "adapter", target="gs://bucket")
    assert not isinstance(error.value, StoreError)
    with pytest.raises(RegistryError, match="has no version 7"):
        registry.promote("topics", 7)
    assert registry.aliases("topics") == {"candidate": 1}
    assert [e.action for e in registry.history("topics")] == ["register"]


def test_promote_merged_requires_a_merged_model(registry, artifacts):
    base = registry.register_base(artifacts["base"], name="tiny/bert")
    registry.register("topics", artifacts["adapter"], base, DATASET, {"accuracy": 0.8}, loader_module=LOADER)
    with pytest.raises(RegistryError, match="has no merged model"):
        registry.promote("topics", 1, "merged")


def test_two_promotions_of_one_task_at_once_leave_consistent_aliases_and_history(registered, artifacts):
    import threading

    registry, base, _ = registered
    extra = write_artifacts(artifacts["base"].parent, seed=1)
    registry.register("topics", extra["adapter"], base, DATASET, {"accuracy": 0.9}, loader_module=LOADER)
    threads = [
        threading.Thread(target=registry.promote, args=("topics", v, "adapter"), kwargs={"progress": False})
        for v in (1, 2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    aliases = registry.aliases("topics")
    assert {aliases["production"], aliases["previous-production"]} == {1, 2}
    moves = [(e.alias, e.from_version, e.to_version) for e in registry.history("topics") if e.action == "promote"]
    first, second = aliases["previous-production"], aliases["production"]
    assert moves == [("production", None, first), ("previous-production", None, first), ("production", first, second)]
    assert registry.drift("topics") == []


def test_check_drift_passes_a_new_task_and_refuses_an_alias_moved_outside_loraops(registered, artifacts):
    registry, base, _ = registered
    registry.check_drift("never-registered")
    registry.check_drift("topics")
    extra = write_artifacts(artifacts["base"].parent, seed=1)
    registry.register("topics", extra["adapter"], base, DATASET, {"accuracy": 0.9}, loader_module=LOADER)
    MlflowClient(registry.settings.tracking_uri).set_registered_model_alias(
        "topics", "candidate", "1"
    )  # by hand, as the MLflow UI would
    assert [str(d) for d in registry.drift("topics")] == [
        "topics candidate is v1 in the registry but v2 in loraops's history"
    ]
    with pytest.raises(DriftError, match="topics candidate is v1 in the registry but v2"):
        registry.check_drift("topics")


@pytest.mark.parametrize(
    "tag, value, says",
    [
        ("loraops.lora.r", "eight", "topics v1: tag loraops.lora.r='eight' is damaged"),
        ("loraops.metrics", "{accuracy: 0.8", "topics v1: tag loraops.metrics='{accuracy: 0.8' is damaged"),
        ("loraops.metrics", '{"accuracy": "high"}', "topics v1: a tag is damaged (metrics.accuracy: Input should be"),
        ("loraops.spectrum.elbow", "", "topics v1: tag loraops.spectrum.elbow='' is damaged"),
        ("loraops.lora.targets", None, "topics v1: tag loraops.lora.targets is missing"),
        ("loraops.lora.targets", "[" * 5000, "topics v1: tag loraops.lora.targets='[[[["),  # past the JSON stack
    ],
)
def test_a_version_tag_edited_by_hand_is_one_error_naming_the_version_and_the_tag(registered, tag, value, says):
    registry, _, _ = registered
    client = MlflowClient(registry.settings.tracking_uri)
    if value is None:
        client.delete_model_version_tag("topics", "1", tag)
    else:
        client.set_model_version_tag("topics", "1", tag, value)
    for read in (lambda: registry.resolve("topics", 1), lambda: registry.list_versions(task="topics")):
        with pytest.raises(RegistryError) as raised:
            read()
        assert str(raised.value).startswith(says) and "register the version again" in str(raised.value)
