"""`loraops adapters serve-config [TASK] --engine vllm|lorax|tgi`: what a serving engine needs to serve the production
adapters, one engine process per base (engines load adapters next to the one base they were started with).

Every adapter is checked against the engine's loading rules first (registry/engines.py); a version in production
as a merged model is served as a model of its own and is listed apart. The plan and its sizing for hundreds of
adapters (GPU slots, host cache, runtime loading by name, replicas) are in pipelines/serve_plan.py; this prints it.
"""

import json
import shlex

from registry import AdapterRegistry
from registry.s3 import is_s3_uri

from ..serve_plan import BaseGroup, plan

RESOLVER = "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True VLLM_PLUGINS=lora_filesystem_resolver VLLM_LORA_RESOLVER_CACHE_DIR={}"


def render(engine: str, group: BaseGroup, lora_dir: str) -> list[str]:
    base, adapters, sizing = group.base, group.adapters, group.sizing
    lines = [f"# base {base} (fingerprint {group.fingerprint[:12]}): {len(adapters)} adapter(s) in production"]
    if engine != "lorax":  # LoRAX reads S3 itself
        lines += [a.fetch for a in adapters if a.fetch]
    for merged in group.merged:
        lines.append(f"# {merged.name} v{merged.version} is in production merged: serve {merged.uri} as a model")
    if sizing is None:
        return lines
    if engine == "vllm":
        flags = f"--enable-lora --max-loras {sizing.max_loras} --max-lora-rank {sizing.max_lora_rank}"
        if sizing.max_cpu_loras != sizing.max_loras:  # vLLM's default is --max-loras
            flags += f" --max-cpu-loras {sizing.max_cpu_loras}"
        if sizing.inline:
            modules = " ".join(
                shlex.quote(json.dumps({"name": a.name, "path": a.path, "base_model_name": base})) for a in adapters
            )
            lines.append(f"vllm serve {shlex.quote(base)} {flags} --lora-modules {modules}")
            lines.append(
                f"# or load them by name at request time: {RESOLVER.format(shlex.quote(lora_dir))} "
                f"(one folder per adapter name)"
            )
        else:
            lines.append(
                f"# {len(adapters)} adapters: each is loaded by name at its first request from "
                f"{lora_dir}/<name>/ (vLLM >= 0.9 filesystem resolver)"
            )
            lines.append(f"{RESOLVER.format(shlex.quote(lora_dir))} vllm serve {shlex.quote(base)} {flags}")
        lines.append('# request: {"model": "<task>", ...} on /v1/completions')
    elif engine == "lorax":
        sources = {"s3" if is_s3_uri(a.uri) else "local" for a in adapters}
        default = " --default-adapter-source s3" if sources == {"s3"} else ""
        lines.append(f"lorax-launcher --model-id {shlex.quote(base)}{default}")
        for a in adapters:
            source = "s3" if is_s3_uri(a.uri) else "local"
            adapter_id = a.uri if source == "s3" else a.path
            lines.append(
                f"# {a.name}: POST /generate with parameters "
                f"{json.dumps({'adapter_id': adapter_id, 'adapter_source': source})}"
            )
    else:
        pairs = ",".join(f"{a.name}={a.path}" for a in adapters)
        lines.append(f"text-generation-launcher --model-id {shlex.quote(base)} --lora-adapters {shlex.quote(pairs)}")
        lines.append('# request: POST /generate with parameters {"adapter_id": "<task>"}')
    if group.warning:
        lines.append(group.warning)
    return lines


def serve_config(args, print_=print) -> list[BaseGroup]:
    groups = plan(AdapterRegistry(), args.engine, args.ref, args.base, args.lora_dir)
    if args.json:
        print_(json.dumps([{**g.model_dump(), "warning": g.warning} for g in groups], indent=2))
    else:
        print_("\n\n".join("\n".join(render(args.engine, group, args.lora_dir)) for group in groups))
    return groups
