"""infra/k8s/vllm.yaml: the vLLM Deployment and Service that `loraops serve` describes pass the Kubernetes schema,
the engine reads the adapters the init containers put beside it, with the sizing serve-config gives, and the
probes and the Service reach the engine's /health and API port."""

import re
import subprocess
import sys
from pathlib import Path

import yaml

from pipelines.serve_plan import BaseGroup, ServedAdapter, size

INFRA = Path(__file__).resolve().parents[3] / "infra"
DOCS = list(yaml.safe_load_all((INFRA / "k8s" / "vllm.yaml").read_text()))
DEPLOYMENT = next(d for d in DOCS if d["kind"] == "Deployment")
SERVICE = next(d for d in DOCS if d["kind"] == "Service")
POD = DEPLOYMENT["spec"]["template"]["spec"]
PLAN, SYNC = POD["initContainers"]
ENGINE = POD["containers"][0]


def env(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


def mount(container: dict, volume: str) -> str:
    return next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == volume)


def test_the_vllm_manifests_pass_the_kubernetes_schema():
    import kubernetes_validate

    for doc in DOCS:
        kubernetes_validate.validate(doc, desired_version="1.30.0", strict=True)
    assert sorted(d["kind"] for d in DOCS) == ["Deployment", "Service"]


def test_the_engine_is_the_vllm_release_the_tests_run():
    setup = (INFRA / "setup-serve.sh").read_text()
    version = re.search(r"VLLM_VERSION=\$\{LORAOPS_VLLM_VERSION:-([\d.]+)\}", setup).group(1)
    assert ENGINE["image"] == f"vllm/vllm-openai:v{version}"


def test_the_service_and_the_probes_reach_the_engine():
    port = ENGINE["ports"][0]
    assert SERVICE["spec"]["selector"] == DEPLOYMENT["spec"]["template"]["metadata"]["labels"]
    assert SERVICE["spec"]["ports"][0]["targetPort"] == port["name"]
    assert f"--port {port['containerPort']}" in ENGINE["args"][0] and "--host 0.0.0.0" in ENGINE["args"][0]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert ENGINE[probe]["httpGet"] == {"path": "/health", "port": port["name"]}, probe
    startup = ENGINE["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600  # a base loads and compiles for minutes


def test_the_engine_reads_the_adapters_the_init_containers_fetch():
    """plan asks the registry (settings and keys of the other loraops pods), sync writes with the S3 keys, the engine
    reads the same volume (filesystem resolver included) and serves the base under the name adapters carry."""
    assert "loraops adapters serve-config --engine vllm" in PLAN["args"][0]
    assert SYNC["command"] == ["/bin/sh", "/adapters/sync.sh"] and SYNC["image"].startswith("amazon/aws-cli:")
    for container in (PLAN, SYNC):
        assert container["envFrom"] == [
            {"configMapRef": {"name": "loraops-settings"}},
            {"secretRef": {"name": "loraops-env"}},
        ]
    assert mount(PLAN, "adapters") == mount(SYNC, "adapters") == mount(ENGINE, "adapters") == "/adapters"
    assert env(ENGINE)["VLLM_LORA_RESOLVER_CACHE_DIR"] == "/adapters"
    assert env(ENGINE)["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert env(PLAN)["LORAOPS_SERVE_BASE"] == env(ENGINE)["LORAOPS_SERVE_BASE"]
    assert '--served-model-name "$LORAOPS_SERVE_BASE"' in ENGINE["args"][0]
    assert "$(cat /adapters/engine-args)" in ENGINE["args"][0]


def run_plan(tmp_path: Path, count: int) -> tuple[list[str], str]:
    """The plan container's script on serve-config's --json for `count` adapters promoted to S3, with /adapters moved
    to tmp_path and serve-config replaced by that JSON: (sync.sh lines, engine-args)."""
    adapters = [
        ServedAdapter(
            name=f"task-{i}",
            version=1,
            uri=f"s3://loraops-promoted/prod/task-{i}/v1/adapter",
            path=f"/adapters/task-{i}",
            fetch=f"aws s3 sync s3://loraops-promoted/prod/task-{i}/v1/adapter /adapters/task-{i}",
            rank=8 if i else 16,
            bytes=2**20,
        )
        for i in range(count)
    ]
    group = BaseGroup(base="llama", fingerprint="f" * 64, adapters=adapters, merged=[], sizing=size(adapters))
    (tmp_path / "plan.json").write_text(f"[{group.model_dump_json()}]")
    script = PLAN["args"][0].replace("/adapters", str(tmp_path))
    script = re.sub(r"loraops adapters serve-config [^>]*>\s*\S+", "true", script)
    subprocess.run(["/bin/sh", "-c", script.replace("python -", f"{sys.executable} -")], check=True)
    return (tmp_path / "sync.sh").read_text().splitlines(), (tmp_path / "engine-args").read_text()


def test_the_plan_writes_serve_configs_sync_lines_and_sizing_for_few_adapters(tmp_path):
    sync, args = run_plan(tmp_path, 3)
    assert sync == [f"aws s3 sync s3://loraops-promoted/prod/task-{i}/v1/adapter /adapters/task-{i}" for i in range(3)]
    assert args == (
        "--enable-lora --max-loras 3 --max-lora-rank 16 --max-cpu-loras 3 "
        "--lora-modules task-0=/adapters/task-0 task-1=/adapters/task-1 task-2=/adapters/task-2"
    )


def test_past_sixteen_adapters_the_engine_loads_them_by_name(tmp_path):
    sync, args = run_plan(tmp_path, 20)
    assert len(sync) == 20 and sync[-1].endswith(" /adapters/task-19")
    assert args == "--enable-lora --max-loras 16 --max-lora-rank 16 --max-cpu-loras 20"  # the resolver finds them
