"""`loraops adapters serve-config [TASK] --engine vllm|lorax|tgi`: what a serving engine needs to serve the production
adapters, one engine process per base (engines load adapters next to the one base they were started with).

Every adapter is checked against the engine's loading rules first (registry/engines.py); a version in production
as a merged model is served as a model of its own and is listed apart.
"""

import json
import shlex
from typing import Any

from registry import AdapterRegistry, RegistryError, VersionRecord
from registry.engines import max_lora_rank, max_rank
from registry.s3 import is_s3_uri


def production(registry: AdapterRegistry, task: str | None, base: str | None) -> list[VersionRecord]:
    records = [r for r in registry.list_versions(task=task, base=base) if "production" in r.aliases]
    if not records:
        raise RegistryError(
            f"no production version{' of ' + task if task else ''}; promote one first "
            f"(loraops promote TASK --version N)"
        )
    return records


def local_path(uri: str, task: str, lora_dir: str) -> tuple[str, str | None]:
    """(path the engine reads, command that puts the promoted copy there, if one is needed)."""
    if is_s3_uri(uri):
        return f"{lora_dir}/{task}", f"aws s3 sync {shlex.quote(uri)} {shlex.quote(f'{lora_dir}/{task}')}"
    return uri, None


def plan(registry: AdapterRegistry, engine: str, task: str | None, base: str | None, lora_dir: str) -> list[dict]:
    """Per base: the adapters (name, promoted uri, local path, fetch command) and the merged models in production."""
    groups: dict[str, dict] = {}
    for record in production(registry, task, base):
        group = groups.setdefault(
            record.base_fingerprint,
            {"base": record.base_name, "fingerprint": record.base_fingerprint, "adapters": [], "merged": []},
        )
        if "adapter" not in record.promoted:
            group["merged"].append(
                {"name": record.task, "version": record.version, "uri": record.promoted.get("merged")}
            )
            continue
        folder = registry.fetch(record.task, record.version)
        registry.check_servable(record, engine, folder)
        path, fetch = local_path(record.promoted["adapter"], record.task, lora_dir)
        config = json.loads((folder / "adapter_config.json").read_text())
        group["adapters"].append(
            {
                "name": record.task,
                "version": record.version,
                "uri": record.promoted["adapter"],
                "path": path,
                "fetch": fetch,
                "rank": max_rank(config),
            }
        )
    return list(groups.values())


def render(engine: str, group: dict[str, Any], lora_dir: str) -> list[str]:
    base, adapters = group["base"], group["adapters"]
    lines = [f"# base {base} (fingerprint {group['fingerprint'][:12]}): {len(adapters)} adapter(s) in production"]
    lines += [a["fetch"] for a in adapters if a["fetch"]]
    for merged in group["merged"]:
        lines.append(
            f"# {merged['name']} v{merged['version']} is in production merged: serve {merged['uri']} as a model"
        )
    if not adapters:
        return lines
    if engine == "vllm":
        modules = " ".join(
            shlex.quote(json.dumps({"name": a["name"], "path": a["path"], "base_model_name": base})) for a in adapters
        )
        rank = max_lora_rank(max(a["rank"] for a in adapters))
        lines.append(
            f"vllm serve {shlex.quote(base)} --enable-lora --max-loras {len(adapters)} --max-lora-rank {rank} "
            f"--lora-modules {modules}"
        )
        lines.append(
            f"# or load them by name at request time: VLLM_ALLOW_RUNTIME_LORA_UPDATING=True "
            f"VLLM_PLUGINS=lora_filesystem_resolver VLLM_LORA_RESOLVER_CACHE_DIR={shlex.quote(lora_dir)} "
            f"(one folder per adapter name)"
        )
        lines.append('# request: {"model": "<task>", ...} on /v1/completions')
    elif engine == "lorax":
        lines.append(f"lorax-launcher --model-id {shlex.quote(base)}")
        for a in adapters:
            source = "s3" if is_s3_uri(a["uri"]) else "local"
            adapter_id = a["uri"] if source == "s3" else a["path"]
            lines.append(
                f"# {a['name']}: POST /generate with parameters "
                f"{json.dumps({'adapter_id': adapter_id, 'adapter_source': source})}"
            )
    else:
        pairs = ",".join(f"{a['name']}={a['path']}" for a in adapters)
        lines.append(f"text-generation-launcher --model-id {shlex.quote(base)} --lora-adapters {shlex.quote(pairs)}")
        lines.append('# request: POST /generate with parameters {"adapter_id": "<task>"}')
    return lines


def serve_config(args, print_=print) -> list[dict]:
    registry = AdapterRegistry()
    groups = plan(registry, args.engine, args.ref, args.base, args.lora_dir)
    if args.json:
        print_(json.dumps(groups, indent=2))
    else:
        print_("\n\n".join("\n".join(render(args.engine, group, args.lora_dir)) for group in groups))
    return groups
