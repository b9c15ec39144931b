"""`loraops serve --engine vllm [--base NAME] [--port P]`: serve a base and its production adapters until stopped."""

from registry import AdapterRegistry

from ..serve import serving


def serve(args, print_=print) -> None:
    with serving(AdapterRegistry(), args.base, args.host, args.port, args.max_lora_rank, args.dtype) as live:
        served, sizing = live.served, live.served.sizing
        print_(f"vLLM serves {served.base} at {live.url}/v1 (pid {live.engine.pid}; log {live.engine.log})")
        for a in served.adapters:
            print_(f"  model {a.adapter.name!r}: {a.adapter.name} v{a.adapter.version} (rank {a.adapter.rank})")
        print_(
            f"  sizing: --max-loras {sizing.max_loras} --max-cpu-loras {sizing.max_cpu_loras} "
            f"--max-lora-rank {sizing.max_lora_rank}"
        )
        for line in served.not_served:
            print_(f"  not served: {line}")
        print_("promote and rollback on this base reach it; Ctrl-C stops it", flush=True)
        live.wait()
