"""Fleet promotion on the embedded default: the gate verdict as a version tag, which candidates `promote
--all-passing` picks, and one failing task leaving the others promoted."""

import pytest
from conftest import write_artifacts

from pipelines.cli.main import main
from registry import AdapterRegistry, LoraSummary, RegistryError, RegistrySettings, VersionRecord
from registry.fleet import select
from registry.stores import LocalStore

DATASET = "f" * 64
LOADER = "pipelines.pyfunc"


@pytest.fixture
def fleet(embedded_home, tmp_path):
    """Four tasks with a candidate each: two passed their gate, one blocked, one registered outside a flow."""
    registry = AdapterRegistry(RegistrySettings.from_env(home=embedded_home, tracking_uri=None, actor="tester"))
    folders = write_artifacts(tmp_path)
    base = registry.register_base(folders["base"], name="tiny/bert")
    for task, gate in (("fleet-a", "passed"), ("fleet-b", "blocked"), ("fleet-c", "passed"), ("other-d", None)):
        registry.register(task, folders["adapter"], base, DATASET, {"accuracy": 0.8}, loader_module=LOADER, gate=gate)
    return registry


def record(task: str, aliases: list[str], gate: str | None) -> VersionRecord:
    return VersionRecord(
        task=task,
        version=1,
        aliases=aliases,
        base_name="b",
        base_fingerprint="0" * 64,
        base_version=1,
        dataset_fingerprint=DATASET,
        lora=LoraSummary(r=4, alpha=8, targets=["q"]),
        metrics={},
        code_version="",
        run_id=None,
        created="",
        artifacts={},
        manifests={},
        promoted={},
        gate=gate,
    )


def test_select_takes_passing_candidates_and_says_why_it_skips_the_others():
    records = [  # candidates, as list_versions(alias="candidate") gives them
        record("a", ["candidate"], "passed"),
        record("b", ["candidate"], "blocked"),
        record("c", ["candidate", "production"], "passed"),
        record("d", ["candidate"], None),
        record("xa", ["candidate"], "passed"),
    ]
    chosen, skipped = select(records)
    assert [r.task for r in chosen] == ["a", "xa"]
    assert {o.task: (o.result, o.detail) for o in skipped} == {
        "b": ("skipped", "gate blocked"),
        "c": ("skipped", "already production"),
        "d": ("skipped", "no gate verdict (registered outside a flow)"),
    }


def test_the_gate_verdict_is_a_version_tag_read_back_on_the_record(fleet):
    assert {r.task: r.gate for r in fleet.list_versions()} == {
        "fleet-a": "passed",
        "fleet-b": "blocked",
        "fleet-c": "passed",
        "other-d": None,
    }
    with pytest.raises(RegistryError, match="gate verdict 'maybe' is not one of passed, blocked"):
        fleet.register("fleet-e", "unused", None, DATASET, {}, loader_module=LOADER, gate="maybe")


def test_promote_passing_promotes_passed_candidates_and_skips_the_rest(fleet):
    fleet.promote("fleet-c", 1)  # production already: skipped with a word
    outcomes = fleet.promote_passing(task_prefix="fleet-", jobs=2)
    assert [(o.task, o.version, o.result, o.detail) for o in outcomes] == [
        ("fleet-a", 1, "promoted", str(fleet.settings.home / "promoted" / "fleet-a" / "v1" / "adapter")),
        ("fleet-b", 1, "skipped", "gate blocked"),
        ("fleet-c", 1, "skipped", "already production"),
    ]
    assert fleet.aliases("fleet-a")["production"] == 1 and "production" not in fleet.aliases("fleet-b")
    assert (fleet.settings.home / "promoted" / "fleet-a" / "v1" / "adapter" / "manifest.json").is_file()
    assert fleet.promote_passing(task_prefix="fleet-")[0].detail == "already production"  # nothing left to do


def test_a_failing_task_leaves_the_others_promoted_and_the_cli_names_it(fleet, monkeypatch, capsys):
    upload = LocalStore.upload

    def broken_for_c(self, source, key, *args, **kwargs):
        if key.startswith("fleet-c/"):
            raise OSError(28, "No space left on device")
        return upload(self, source, key, *args, **kwargs)

    monkeypatch.setattr(LocalStore, "upload", broken_for_c)
    code = main(["promote", "--all-passing", "--task-prefix", "fleet-", "--jobs", "3"])
    out, err = capsys.readouterr()
    assert code == 1
    assert "1 promoted, 1 skipped, 1 failed" in out
    assert [line.split()[:3] for line in out.splitlines()[2:5]] == [
        ["fleet-a", "v1", "promoted"],
        ["fleet-b", "v1", "skipped"],
        ["fleet-c", "v1", "failed"],
    ]
    assert err.startswith("loraops: error: 1 of 3 promotions failed: fleet-c v1 (OSError: ") and err.count("\n") == 1
    assert fleet.aliases("fleet-a")["production"] == 1
    assert fleet.aliases("fleet-c") == {"candidate": 1}  # not moved
    assert not (fleet.settings.home / "promoted" / "fleet-c" / "v1" / "adapter" / "manifest.json").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["promote", "--all-passing", "t"], "drop TASK and --version"),
        (["promote", "t"], "promote needs TASK --version N"),
        (["promote", "t", "--version", "1", "--task-prefix", "x"], "--base and --task-prefix narrow --all-passing"),
    ],
)
def test_promote_arguments_that_contradict_are_refused_before_any_work(argv, message, embedded_home, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err
