"""A registry past one page: every search pages to the end, and listing costs requests per page, not per task."""

import importlib
import json
import math

import pytest
from conftest import write_artifacts

from registry import AdapterRegistry, RegistryError, RegistrySettings
from registry.tags import KIND

cli = importlib.import_module("pipelines.cli.main")  # the module (the package exports its main function)
DATASET = "d" * 64
LOADER = "pipelines.pyfunc"


def fleet(embedded_home, tmp_path, tasks: int, page_size: int | None) -> AdapterRegistry:
    """`tasks` tasks of two versions each (v1 production, v2 candidate) on one base, plus `topics` (one version,
    candidate). The fleet's versions are copies of topics' version (same tags and artifacts), made with the raw
    client: registering each through the project's API would cost seconds per task."""
    registry = AdapterRegistry(
        RegistrySettings.from_env(home=embedded_home, tracking_uri=None, actor="tester"), page_size=page_size
    )
    files = write_artifacts(tmp_path)
    base = registry.register_base(files["base"], name="tiny/bert")
    registry.register("topics", files["adapter"], base, DATASET, {"accuracy": 0.8}, loader_module=LOADER)
    client = registry._client
    source = client.get_model_version("topics", "1")
    for i in range(tasks):
        name = f"fleet-{i:04d}"
        client.create_registered_model(name, tags={KIND: "task"})
        for _ in range(2):
            client.create_model_version(name, source.source, run_id=source.run_id, tags=source.tags)
        client.set_registered_model_alias(name, "production", "1")
        client.set_registered_model_alias(name, "candidate", "2")
    return registry


class Counted:
    """Counts the searches and lookups the registry sends to MLflow."""

    def __init__(self, registry: AdapterRegistry, monkeypatch):
        self.calls: dict[str, int] = {}
        client = registry._client
        for name in ("search_registered_models", "search_model_versions", "get_registered_model"):
            monkeypatch.setattr(client, name, self.wrap(name, getattr(client, name)))

    def wrap(self, name, method):
        def counted(*args, **kwargs):
            self.calls[name] = self.calls.get(name, 0) + 1
            return method(*args, **kwargs)

        return counted


def test_listing_sees_every_task_past_one_page_at_one_request_per_page(embedded_home, tmp_path, monkeypatch):
    registry = fleet(embedded_home, tmp_path, tasks=7, page_size=3)
    counted = Counted(registry, monkeypatch)
    records = registry.list_versions()
    assert len({r.task for r in records}) == 8 and len(records) == 15  # 7 x 2 + topics
    assert [(r.task, r.version) for r in records] == sorted((r.task, r.version) for r in records)
    assert {r.task: r.aliases for r in records if r.version == 1}["fleet-0006"] == ["production"]
    # 8 tasks in pages of 3, 15 versions (and 1 base version) in pages of 3: requests follow pages, not tasks
    assert counted.calls == {"search_registered_models": math.ceil(8 / 3), "search_model_versions": math.ceil(16 / 3)}


def test_filters_by_prefix_alias_and_base_run_on_the_server_where_mlflow_can(embedded_home, tmp_path, monkeypatch):
    registry = fleet(embedded_home, tmp_path, tasks=5, page_size=2)
    production = registry.list_versions(alias="production")
    assert [(r.task, r.version) for r in production] == [(f"fleet-{i:04d}", 1) for i in range(5)]
    assert {r.task for r in registry.list_versions(task_prefix="fleet-000")} == {f"fleet-{i:04d}" for i in range(5)}
    assert registry.list_versions(task_prefix="fleet-0004", alias="candidate")[0].version == 2
    fingerprint = production[0].base_fingerprint
    for base in ("tiny/bert", "base.tiny--bert", fingerprint[:8], fingerprint):
        assert len(registry.list_versions(base=base)) == 11, base
    assert registry.list_versions(base="other/base") == []
    assert registry.list_versions(base="0" * 12) == []
    assert [r.version for r in registry.list_versions(task="topics")] == [1]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"task_prefix": "Fleet"}, "cannot start a task name"),
        ({"task_prefix": "a%"}, "cannot start a task name"),
        ({"task_prefix": "a_b"}, "cannot start a task name"),
        ({"base": "x' or name != '"}, "cannot be searched for"),
        ({"alias": "staging"}, "not one of production"),
    ],
)
def test_a_filter_mlflow_would_reject_or_misread_is_one_line_before_any_request(kwargs, message, tmp_path):
    offline = AdapterRegistry(RegistrySettings.from_env(home=tmp_path, tracking_uri="http://127.0.0.1:9"))
    with pytest.raises(RegistryError, match=message):
        offline.list_versions(**kwargs)


def test_drift_of_every_task_comes_from_the_same_pages(embedded_home, tmp_path, monkeypatch):
    registry = fleet(embedded_home, tmp_path, tasks=4, page_size=2)
    registry._client.set_registered_model_alias("topics", "production", "1")  # by hand, outside loraops
    counted = Counted(registry, monkeypatch)
    found = registry.drift()
    # the fleet's aliases were also set by hand: each task's production and candidate drift
    assert {(d.task, d.alias) for d in found} >= {("topics", "production"), ("fleet-0003", "candidate")}
    assert counted.calls == {"search_registered_models": 3}  # 5 tasks in pages of 2
    assert {d.task for d in registry.drift(task_prefix="topics")} == {"topics"}


def test_past_mlflows_default_page_of_100_tasks_nothing_is_lost(embedded_home, tmp_path, monkeypatch, capsys):
    registry = fleet(embedded_home, tmp_path, tasks=101, page_size=None)
    counted = Counted(registry, monkeypatch)
    assert len({r.task for r in registry.list_versions()}) == 102
    assert counted.calls == {"search_registered_models": 1, "search_model_versions": 1}
    assert len(registry.list_versions(alias="production")) == 101
    assert cli.main(["adapters", "list", "--alias", "production", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert len(listed) == 101 and all(r["aliases"] == ["production"] for r in listed)


def test_resolve_is_one_request_at_any_fleet_size(embedded_home, tmp_path, monkeypatch):
    registry = fleet(embedded_home, tmp_path, tasks=20, page_size=5)
    counted = Counted(registry, monkeypatch)
    calls = []
    monkeypatch.setattr(
        registry._client,
        "get_model_version_by_alias",
        lambda *a, _m=registry._client.get_model_version_by_alias: calls.append(a) or _m(*a),
    )
    assert registry.resolve("fleet-0019").version == 1
    assert len(calls) == 1 and counted.calls == {}


def test_cli_task_prefix_mlflow_cannot_filter_is_one_line_and_exit_2(embedded_home, capsys):
    assert cli.main(["adapters", "list", "--task-prefix", "A%"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot start a task name" in err
