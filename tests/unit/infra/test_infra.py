"""infra/compose.yaml (Docker hosts) and infra/stack.sh (no Docker) describe the same stack: the same services, the
same published ports, the same variables pointing loraops at it, the same buckets and work pool."""

import json
import re
from pathlib import Path

import pytest
import yaml

INFRA = Path(__file__).resolve().parents[3] / "infra"
COMPOSE = yaml.safe_load((INFRA / "compose.yaml").read_text())
STACK = (INFRA / "stack.sh").read_text()
# stack.sh service -> the compose service that plays its part
SAME = {"postgres": "postgres", "s3": "minio", "mlflow": "mlflow", "prefect": "prefect", "worker": "worker"}


def stack_services() -> list[str]:
    return re.search(r"^SERVICES=\((.*)\)$", STACK, re.M).group(1).split()


def stack_ports() -> dict[str, int]:
    defaults = re.search(r"LORAOPS_STACK_PORTS:-([\d ]+)}", STACK).group(1).split()
    return dict(zip(["postgres", "s3", "mlflow", "prefect"], map(int, defaults)))


def stack_env() -> dict[str, str]:
    block = STACK[STACK.index('cat >"$STACK/stack.env"') : STACK.index("\nEOF", STACK.index('cat >"$STACK/stack.env"'))]
    pool = re.search(r"^POOL=\$\{LORAOPS_WORK_POOL:-(\S+)\}$", STACK, re.M).group(1)
    return {k: v.replace("$POOL", pool) for k, v in re.findall(r"^export (\w+)=(\S+)$", block, re.M)}


def test_compose_and_stack_run_the_same_services():
    assert stack_services() == list(SAME)
    assert set(SAME.values()) | {"buckets"} == set(COMPOSE["services"])  # buckets: MinIO's bucket creation step


def test_compose_publishes_the_ports_stack_sh_listens_on():
    for service, port in stack_ports().items():
        published = [int(p.split(":")[0]) for p in COMPOSE["services"][SAME[service]].get("ports", [])]
        assert port in published, (service, port, published)
    assert "PREFECT_PORT/api" in STACK and "http://prefect:4200/api" in str(COMPOSE["services"]["worker"])


def test_the_variables_that_point_loraops_at_the_stack_are_the_same():
    worker = COMPOSE["services"]["worker"]["environment"]
    env = stack_env()
    assert set(env) <= set(worker), set(env) - set(worker)
    for name in ("LORAOPS_WORK_POOL", "LORAOPS_PROMOTION_TARGET", "AWS_DEFAULT_REGION"):
        assert str(worker[name]) == env[name], name
    assert f"--pool {env['LORAOPS_WORK_POOL']}" in COMPOSE["services"]["worker"]["command"]
    for bucket in ("mlflow-artifacts", "loraops-promoted"):
        assert bucket in COMPOSE["services"]["buckets"]["entrypoint"] and bucket in STACK
    assert "--artifacts-destination s3://mlflow-artifacts" in STACK
    assert "--artifacts-destination s3://mlflow-artifacts" in COMPOSE["services"]["mlflow"]["command"]


GPU_POOL = json.loads((INFRA / "k8s" / "gpu-work-pool.json").read_text())


def render_gpu_job(**values) -> dict:
    """The Job a Prefect Kubernetes worker makes from the GPU pool's base job template: defaults, then `values`, with
    the worker's own fill-ins (command as args, env as name/value pairs, labels, name)."""
    from prefect.utilities.templating import apply_values

    filled = {name: spec["default"] for name, spec in GPU_POOL["variables"]["properties"].items()} | values
    filled |= {
        "command": ["prefect", "flow-run", "execute"],
        "name": "train-adapter-abc12",
        "labels": {"app": "loraops"},
        "env": [{"name": k, "value": v} for k, v in filled["env"].items()],
    }
    return apply_values(GPU_POOL["job_configuration"]["job_manifest"], filled)


def test_every_gpu_pool_variable_reaches_the_job():
    from prefect.utilities.templating import find_placeholders

    used = {p.name for p in find_placeholders(GPU_POOL["job_configuration"])}
    assert set(GPU_POOL["variables"]["properties"]) <= used | {"pod_watch_timeout_seconds"}


def test_the_gpu_job_requests_gpus_and_passes_the_kubernetes_schema():
    import kubernetes_validate

    job = render_gpu_job(gpus=4, env={"LORAOPS_LOG": "debug"})
    kubernetes_validate.validate(job, desired_version="1.30.0", strict=True)  # raises on any schema error
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert (
        container["resources"]["limits"]["nvidia.com/gpu"] == 4 == container["resources"]["requests"]["nvidia.com/gpu"]
    )
    assert container["args"] == ["prefect", "flow-run", "execute"] and container["env"] == [
        {"name": "LORAOPS_LOG", "value": "debug"}
    ]
    assert container["envFrom"] == [
        {"configMapRef": {"name": "loraops-settings"}},
        {"secretRef": {"name": "loraops-env"}},
    ]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    broken = render_gpu_job()
    broken["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = [1]
    with pytest.raises(kubernetes_validate.ValidationError):  # the check can fail
        kubernetes_validate.validate(broken, desired_version="1.30.0", strict=True)


K8S = list(yaml.safe_load_all((INFRA / "k8s" / "loraops.yaml").read_text()))
VALUES = {
    name: yaml.safe_load((INFRA / "k8s" / f"{name}-values.yaml").read_text())
    for name in ("mlflow", "prefect-server", "prefect-worker")
}


def k8s(kind: str, name: str) -> dict:
    return next(doc for doc in K8S if doc["kind"] == kind and doc["metadata"]["name"] == name)


def test_the_loraops_manifests_pass_the_kubernetes_schema():
    import kubernetes_validate

    for doc in K8S:
        kubernetes_validate.validate(doc, desired_version="1.30.0", strict=True)
    assert {doc["kind"] for doc in K8S} == {
        "Namespace",
        "ServiceAccount",
        "PersistentVolumeClaim",
        "Secret",
        "ConfigMap",
        "Deployment",
    }


def test_train_nodes_share_the_flow_pods_home_and_settings():
    """Multi-node training needs the flow-run pod and the train-node pods on one LORAOPS_HOME at one path."""
    settings = k8s("ConfigMap", "loraops-settings")["data"]
    node = k8s("Deployment", "loraops-train-node")["spec"]["template"]["spec"]
    container = node["containers"][0]
    assert container["args"] == ["loraops", "train-node"]
    job = render_gpu_job()["spec"]["template"]["spec"]
    for pod in (node, job):
        home = next(v for v in pod["volumes"] if v["name"] == "home")["persistentVolumeClaim"]["claimName"]
        assert home == k8s("PersistentVolumeClaim", "loraops-home")["metadata"]["name"]
        mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        assert mounts["home"] == settings["LORAOPS_HOME"] and mounts["dshm"] == "/dev/shm"
        assert pod["containers"][0]["envFrom"] == [
            {"configMapRef": {"name": "loraops-settings"}},
            {"secretRef": {"name": "loraops-env"}},
        ]
    assert "ReadWriteMany" in k8s("PersistentVolumeClaim", "loraops-home")["spec"]["accessModes"]


def test_the_cluster_uses_the_names_the_stack_uses():
    settings = k8s("ConfigMap", "loraops-settings")["data"]
    secret = k8s("Secret", "loraops-env")["stringData"]
    assert set(stack_env()) == (set(settings) | set(secret)) - {"LORAOPS_HOME"}
    assert settings["LORAOPS_WORK_POOL"] == VALUES["prefect-worker"]["worker"]["config"]["workPool"]
    assert settings["PREFECT_API_URL"] == VALUES["prefect-worker"]["worker"]["selfHostedServerApiConfig"]["apiUrl"]
    mlflow = VALUES["mlflow"]
    assert settings["MLFLOW_TRACKING_URI"].endswith(f":{mlflow['service']['port']}")
    assert (
        mlflow["artifactRoot"]["s3"]["bucket"] == "mlflow-artifacts"
        and mlflow["artifactRoot"]["proxiedArtifactStorage"]
    )
    assert mlflow["extraEnvVars"]["MLFLOW_S3_ENDPOINT_URL"] == settings["AWS_ENDPOINT_URL"]
    assert mlflow["artifactRoot"]["s3"]["existingSecret"]["name"] == "loraops-env"
    databases = re.search(r"for db in ([\w ]+); do", STACK).group(1).split()  # what stack.sh creates
    assert VALUES["prefect-server"]["externalDatabase"]["name"] in databases
    assert mlflow["backendStore"]["postgres"]["database"] in databases
