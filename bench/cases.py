"""The benchmark cases. Each runs loraops and its anchor side by side on the same inputs and returns rows:
{case, ours, anchor, unit, ratio, target, note}; `ratio` = ours / anchor (lower is better for seconds and bytes)."""

import copy
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

from bench.harness import in_child, interleaved, ratio
from bench.models import adapter_for, describe, folder_bytes, llama, llama_on_disk, shard_sizes

ROOT = Path(__file__).resolve().parent.parent


def row(case, ours, anchor, unit, target, note="", floor=None):
    return {
        "case": case,
        "ours": ours,
        "anchor": anchor,
        "unit": unit,
        "ratio": ratio(ours, anchor),
        "target": target,
        "note": note,
        "floor": floor,
    }


PRECISION = (
    "ours: bf16 autocast where the CPU has native bf16, the LoRA update float32, fused AdamW; "
    "PEFT: float32, torch.optim.AdamW's default"
)


def train_step(quick: bool) -> list[dict]:
    """loraops's train step (its loop's CPU dropout and precision) against PEFT's in a plain float32 loop, and in
    the same loop under bf16 autocast (float32 weights on every side) where the CPU has native bf16 (elsewhere
    autocast emulates it, minutes a step, and loraops trains in float32)."""
    from pipelines.device import cpu_bf16

    steps, runs = (2, 1) if quick else (6, 3)
    impls = ("ours", "peft", "full", "ours-compiled") + (("peft-bf16",) if cpu_bf16() else ())
    results = {impl: [in_child("bench.worker", "train", impl, str(steps)) for _ in range(runs)] for impl in impls}
    ours, peft, full, compiled, *peft_bf16 = (
        {k: statistics.median(r[k] for r in results[i]) for k in results[i][0]} for i in results
    )
    note = PRECISION + ("" if peft_bf16 else "; PEFT under bf16 autocast not run: no native bf16 on this CPU")
    return [
        row("LoRA train step, MiniLM r=8 q,v, batch 32x64 (s)", ours["step"], peft["step"], "s", "<= 0.9x PEFT", note),
        *[row("  same, PEFT under bf16 autocast too (s)", ours["step"], p["step"], "s", "report") for p in peft_bf16],
        row("  same, peak RSS of the training process", ours["peak"], peft["peak"], "bytes", "<= 1.0x PEFT"),
        row(
            "  same, under torch.compile (inductor, dynamic shapes) vs loraops eager (s)",
            compiled["step"],
            ours["step"],
            "s",
            "report: the loop stays eager unless this wins",
            f"the first compiled step (the compile) took {compiled['first']:.1f} s",
        ),
        row("LoRA vs full fine-tune: step time", ours["step"], full["step"], "s", "report"),
        row("LoRA vs full fine-tune: trainable parameters", ours["trainable"], full["trainable"], "count", "report"),
        row(
            "LoRA vs full fine-tune: checkpoint bytes",
            ours["checkpoint_bytes"],
            full["checkpoint_bytes"],
            "bytes",
            "report",
        ),
        row("LoRA vs full fine-tune: peak RSS", ours["peak"], full["peak"], "bytes", "report"),
    ]


def merge_in_memory(quick: bool) -> list[dict]:
    """merge_and_unload of an all-linear r=16 adapter on a Llama-like model, fresh copies each repeat."""
    import peft

    from lora_core import LoraConfig, inject, merge_and_unload
    from lora_core.injection import lora_layers

    base = llama("tiny" if quick else "100m")
    names = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    models = {}

    def setup():
        ours = copy.deepcopy(base)
        inject(ours, LoraConfig(r=16, alpha=32, target_modules=names))
        for layer in lora_layers(ours).values():
            torch.nn.init.normal_(layer.lora_B["default"].weight, std=0.01)
        theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=16, lora_alpha=32, target_modules=names))
        for module in theirs.modules():
            if hasattr(module, "lora_B") and "default" in getattr(module, "lora_B", {}):
                torch.nn.init.normal_(module.lora_B["default"].weight, std=0.01)
        targets = [m.weight for n, m in base.named_modules() if n.rsplit(".", 1)[-1] in names]
        models.update(ours=ours, peft=theirs, floor=(targets, [t.clone() for t in targets]))

    def floor():  # read and write every adapted weight once: the copy-bandwidth floor of any merge
        for dst, src in zip(*models["floor"]):
            dst.copy_(src)

    with torch.no_grad():
        times = interleaved(
            {
                "ours": lambda: merge_and_unload(models["ours"]),
                "peft": lambda: models["peft"].merge_and_unload(),
                "floor": floor,
            },
            repeats=2 if quick else 5,
            setup=setup,
        )
    params = sum(p.numel() for p in base.parameters()) / 1e6
    return [
        row(
            f"merge all-linear r=16, Llama-like {params:.0f}M, in memory (s)",
            times["ours"],
            times["peft"],
            "s",
            "<= 0.5x PEFT, <= 3x floor",
            f"floor {times['floor']:.4f}s, ours/floor {times['ours'] / times['floor']:.1f}x",
            times["floor"],
        )
    ]


def load_and_switch(quick: bool, tmp: Path) -> list[dict]:
    import peft
    from transformers import AutoModelForSequenceClassification

    from lora_core import LoraConfig, delete_adapter, inject, load_adapter, save_adapter, set_active_adapter
    from pipelines.models import default_base_model

    def minilm():
        torch.manual_seed(0)
        return AutoModelForSequenceClassification.from_pretrained(default_base_model(), num_labels=4).eval()

    loaded = 4 if quick else 20
    model = minilm()
    inject(model, LoraConfig(r=8, alpha=16, target_modules=["query", "value"], modules_to_save=["classifier"]))
    save_adapter(model, tmp / "adapter")
    delete_adapter(model, "default")
    theirs = peft.PeftModel.from_pretrained(minilm(), tmp / "adapter", adapter_name="a0")
    ours = model
    load_adapter(ours, tmp / "adapter", "a0")
    counter = iter(range(1, 10**6))

    def ours_load():
        name = f"x{next(counter)}"
        load_adapter(ours, tmp / "adapter", name)
        delete_adapter(ours, name)

    def peft_load():
        name = f"x{next(counter)}"
        theirs.load_adapter(tmp / "adapter", adapter_name=name)
        theirs.delete_adapter(name)
        theirs.set_adapter("a0")

    load = interleaved({"ours": ours_load, "peft": peft_load}, repeats=3 if quick else 15)
    for i in range(1, loaded):
        load_adapter(ours, tmp / "adapter", f"a{i}")
        theirs.load_adapter(tmp / "adapter", adapter_name=f"a{i}")
    turn = iter(range(10**6))
    switches = 20 if quick else 200

    def ours_switch():
        for _ in range(switches):
            set_active_adapter(ours, f"a{next(turn) % loaded}")

    def peft_switch():
        for _ in range(switches):
            theirs.set_adapter(f"a{next(turn) % loaded}")

    switch = interleaved({"ours": ours_switch, "peft": peft_switch}, repeats=3 if quick else 7)
    # flat in the number loaded: the same switch with only two adapters loaded
    for i in range(2, loaded):
        delete_adapter(ours, f"a{i}")
    two = interleaved(
        {"ours": lambda: [set_active_adapter(ours, f"a{k % 2}") for k in range(switches)]}, repeats=3 if quick else 7
    )["ours"]
    return [
        row("load one adapter onto a loaded MiniLM (s)", load["ours"], load["peft"], "s", "<= 0.5x PEFT"),
        row(
            f"switch the active adapter, {loaded} loaded (s per switch)",
            switch["ours"] / switches,
            switch["peft"] / switches,
            "s",
            "<= 0.5x PEFT; flat in the number loaded",
            f"with 2 loaded: {two / switches * 1e6:.0f} us per switch (x{switch['ours'] / two:.2f})",
        ),
    ]


def disk_merge(quick: bool, home: Path) -> tuple[list[dict], Path, Path]:
    base = llama_on_disk(
        "tiny" if quick else "1b", home / ("llama-tiny" if quick else "llama-1b"), shard="200KB" if quick else "500MB"
    )
    adapter = adapter_for(base, home / f"{base.name}-adapter")
    results = {impl: [] for impl in ("ours", "peft", "floor")}
    for _ in range(1 if quick else 2):  # interleaved; each run starts and ends with the page cache written back
        for impl, found in results.items():
            found.append(
                in_child("bench.worker", "disk-merge", impl, str(base), str(adapter), str(home / f"out-{impl}"))
            )
    runs = {
        impl: {k: sorted(r[k] for r in found)[len(found) // 2] for k in ("seconds", "peak")}
        for impl, found in results.items()
    }
    floor = runs["floor"]["seconds"]
    note = (
        f"{describe(base)}, largest shard {max(shard_sizes(base)) / 1e6:.0f} MB; all-linear r=16; base in the page "
        f"cache, each until its output is on disk (sync); floor = read + write every byte once: {floor:.2f}s, ours/floor "
        f"{runs['ours']['seconds'] / floor:.1f}x"
    )
    rows = [
        row(
            "merge a bf16 sharded Llama disk to disk (s)",
            runs["ours"]["seconds"],
            runs["peft"]["seconds"],
            "s",
            "<= 0.5x PEFT",
            note,
            floor,
        ),
        row("  same, peak RSS", runs["ours"]["peak"], runs["peft"]["peak"], "bytes", "<= 0.3x PEFT"),
    ]
    return rows, base, adapter


def fingerprint(base: Path, home: Path) -> list[dict]:
    from registry import fingerprint_weights
    from registry.digests import DigestCache

    db = home / "fingerprint-digests.sqlite"
    db.unlink(missing_ok=True)
    cache = DigestCache(db)
    started = time.perf_counter()
    first = fingerprint_weights(base, cache)
    cold = time.perf_counter() - started
    started = time.perf_counter()
    assert fingerprint_weights(base, cache) == first
    warm = time.perf_counter() - started
    return [
        row(
            "base fingerprint of an unchanged base, second run (s)",
            warm,
            cold,
            "s",
            "<= 2% of the first run",
            f"{folder_bytes(base) / 1e9:.2f} GB; first run {folder_bytes(base) / cold / 1e9:.2f} GB/s",
        )
    ]


def registry_cases(quick: bool, home: Path, merged_source: Path, base: Path, adapter: Path) -> list[dict]:
    """resolve vs MlflowClient on an mlflow server; promote vs boto3 upload_file on moto's S3 server."""
    import boto3
    from mlflow import MlflowClient

    from bench.servers import mlflow_server, moto_server, use_s3
    from registry import AdapterRegistry, RegistrySettings

    with moto_server(home) as endpoint, mlflow_server(home) as url:
        use_s3(endpoint)
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="promoted")
        settings = RegistrySettings.from_env(
            home=home / "registry", tracking_uri=url, promotion_target="s3://promoted/bench", actor="bench"
        )
        registry = AdapterRegistry(settings)
        record = registry.register_base(base, name="bench/llama")
        merged = home / "merged"
        if not merged.is_dir():
            from lora_core.checkpoint_merge import merge_checkpoint

            merge_checkpoint(merged_source, adapter, merged)
        version = registry.register(
            "bench-task", adapter, record, "b" * 64, {"loss": 1.0}, merged_dir=merged, loader_module="pipelines.pyfunc"
        )
        registry.promote("bench-task", version.version, "adapter")
        client = MlflowClient(url)  # the anchor: a raw MLflow client, as a user without loraops would write it
        resolve = interleaved(
            {
                "ours": lambda: registry.resolve("bench-task", "production"),
                "anchor": lambda: client.get_model_version_by_alias("bench-task", "production"),
            },
            repeats=5 if quick else 30,
        )
        size = folder_bytes(merged)
        files = [p for p in merged.iterdir() if p.is_file()]

        def raw_upload():
            for path in files:
                s3.upload_file(str(path), "promoted", f"raw/{path.name}")

        def clear():  # each promotion starts from an empty prefix
            for key in [o["Key"] for o in s3.list_objects_v2(Bucket="promoted", Prefix="bench/").get("Contents", [])]:
                s3.delete_object(Bucket="promoted", Key=key)

        promote = interleaved(
            {
                "ours": lambda: registry.promote("bench-task", version.version, "merged", progress=False),
                "anchor": raw_upload,
            },
            repeats=1 if quick else 2,
            setup=clear,
        )
        ours, raw = promote["ours"], promote["anchor"]
        registry.promote("bench-task", version.version, "merged", progress=False)
        started = time.perf_counter()
        again = registry.promote("bench-task", version.version, "merged", progress=False)
        repeat = time.perf_counter() - started
        assert again.bytes_uploaded == 0
    return [
        row(
            "resolve task@production (s)",
            resolve["ours"],
            resolve["anchor"],
            "s",
            "<= 1.2x MlflowClient",
            "AdapterRegistry.resolve vs get_model_version_by_alias, same mlflow server",
        ),
        row(
            f"promote a {size / 1e9:.2f} GB merged model, verified (bytes/s)",
            size / ours,
            size / raw,
            "B/s",
            ">= 0.9x boto3 upload_file",
            f"ours {ours:.1f}s (files side by side, SHA-256 per part from the digest cache, one HEAD per file, "
            f"manifest last), boto3 upload_file one file after another without verification {raw:.1f}s",
        ),
        row("promote the same version again (s)", repeat, None, "s", "<= 1 s", "one HEAD per object"),
    ]


def package_pairs(path: Path, per_label: int) -> Path:
    """Prompt/completion pairs from the shipped Debian synopses (real text): synopsis -> section."""
    import json

    rows = [json.loads(line) for line in (ROOT / "examples/data/package-sections.jsonl").read_text().splitlines()]
    seen: dict[str, int] = {}
    with open(path, "w") as f:
        for row in rows:
            if seen.setdefault(row["label"], 0) < per_label:
                seen[row["label"]] += 1
                f.write(
                    json.dumps({"prompt": f"Debian package: {row['text']}\nSection:", "completion": row["label"]})
                    + "\n"
                )
    return path


def llm_flow(quick: bool, home: Path, base: Path) -> list[dict]:
    """`loraops run` on a causal-LM task over the Llama base, promoting the merged model to an S3 server."""
    import boto3
    import yaml

    from bench.harness import run_watched
    from bench.servers import moto_server

    folder = home / "llm"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    data = package_pairs(folder / "pairs.jsonl", per_label=20)
    task = folder / "llm-sections.yaml"
    task.write_text(
        yaml.safe_dump(
            {
                "task": "llm-sections",
                "type": "causal-lm",
                "base": {"model": str(base)},
                "data": {"path": str(data), "test_fraction": 0.2},
                "lora": {
                    "r": 16,
                    "alpha": 32,
                    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                },
                "training": {
                    "max_steps": 2 if quick else 4,
                    "batch_size": 4,
                    "lr": 1e-3,
                    "max_length": 64,
                    "device": "cpu",
                },
                # A random-weight base: the benchmark is about the path and its memory, so the gate lets any adapter through.
                "gate": {"metric": "perplexity", "min_gain_over_base": -1e9, "must_beat_production": False},
                "promotion": {"mode": "merged", "target": "s3://promoted/llm"},
            }
        )
    )
    with moto_server(folder) as endpoint:
        env = {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
            "LORAOPS_HOME": str(folder / "home"),
        }
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
        )
        s3.create_bucket(Bucket="promoted")
        run = run_watched([str(Path(sys.executable).parent / "loraops"), "run", str(task)], env=env)
        if run["returncode"]:
            raise RuntimeError(f"loraops run failed:\n{run['output'][-3000:]}")
        listed = s3.list_objects_v2(Bucket="promoted", Prefix="llm/llm-sections/v1/merged/").get("Contents", [])
        shipped = sum(o["Size"] for o in listed)
        if not any(o["Key"].endswith("manifest.json") for o in listed):
            raise RuntimeError("the merged model's manifest is not on the S3 server")
    size = folder_bytes(base)
    return [
        row(
            "loraops run, causal LM on the Llama base, merged model promoted to S3: peak RSS",
            run["peak"],
            size,
            "bytes",
            "<= 2x the base's bytes on disk",
            f"{describe(base)}; anchor = the base's bytes on disk; {run['seconds']:.0f}s end to end; "
            f"{shipped / 1e9:.2f} GB on S3",
        )
    ]


def flow_overhead(quick: bool, home: Path) -> list[dict]:
    """The quickstart tasks through one `loraops run` vs the same steps as plain functions, each on a fresh home."""
    import yaml

    from bench.harness import run_watched

    folder = home / "overhead"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    tasks = []
    for name in ["package-sections"] if quick else ["package-sections", "server-sections"]:
        spec = yaml.safe_load((ROOT / f"examples/tasks/{name}.yaml").read_text())
        spec["data"]["path"] = str(ROOT / "examples/data" / Path(spec["data"]["path"]).name)
        if quick:
            spec.setdefault("training", {})["max_steps"] = 5
            spec.setdefault("gate", {})["min_gain_over_base"] = -1.0
        tasks.append(folder / f"{name}.yaml")
        tasks[-1].write_text(yaml.safe_dump(spec))
    steps = in_child("bench.worker", "steps", "-", str(folder / "steps-home"), *map(str, tasks))
    loraops = str(Path(sys.executable).parent / "loraops")

    def flow(name: str, tasks: list[Path], prefect_home: Path | None = None) -> float:
        env = {"LORAOPS_HOME": str(folder / name)} | ({"PREFECT_HOME": str(prefect_home)} if prefect_home else {})
        done = run_watched([loraops, "run", *map(str, tasks)], env=env)
        if done["returncode"]:
            raise RuntimeError(f"loraops run failed:\n{done['output'][-3000:]}")
        return done["seconds"]

    title = f"flow overhead: {len(tasks)} quickstart task(s) in one `loraops run` vs their steps as plain functions (s)"
    what = "the flow adds Prefect's local server, task caching and MLflow run logging"
    rows = [
        row(
            title + ", first run on a fresh home",
            flow("fresh", tasks),
            steps["seconds"],
            "s",
            "<= 1.10x (overhead <= 10%)",
            f"both whole processes; {what}; Prefect migrates its new database first",
        )
    ]
    if not quick:  # every later run: Prefect's database exists (a scheduled task's second night)
        prefect_home = folder / "prefect-home"
        quick_task = folder / "warm-up.yaml"
        warm_up = yaml.safe_load(tasks[0].read_text())
        # Two steps cannot pass the task's gate, and a blocked gate fails the run: this one only makes the database.
        gate = {**warm_up.get("gate", {}), "min_gain_over_base": -1.0}
        quick_task.write_text(yaml.safe_dump({**warm_up, "training": {"max_steps": 2}, "gate": gate}))
        flow("warm-up", [quick_task], prefect_home)
        rows.append(
            row(
                title + ", Prefect's database already made",
                flow("warm", tasks, prefect_home),
                steps["seconds"],
                "s",
                "<= 1.10x (overhead <= 10%)",
                f"fresh loraops state otherwise; {what}",
            )
        )
    return rows


def cli_start(quick: bool) -> list[dict]:
    """Wall time of `loraops --help`, `loraops --version` and `loraops run` of a task file with an error (to its
    one-line refusal) as a user's shell starts them, beside `python -c pass`."""
    import subprocess
    import tempfile

    loraops = str(Path(sys.executable).parent / "loraops")
    bad = Path(tempfile.mkdtemp(prefix="loraops-bad-")) / "no-data.yaml"
    bad.write_text("task: no-data\ntype: classification\n")

    def call(*command: str, code: int = 0):
        def started():
            done = subprocess.run(command, capture_output=True)
            if done.returncode != code:
                raise RuntimeError(f"{' '.join(command)} exited {done.returncode}, not {code}: {done.stderr[-2000:]!r}")

        return started

    runs = {
        "help": call(loraops, "--help"),
        "version": call(loraops, "--version"),
        "refused": call(loraops, "run", str(bad), code=2),
        "python": call(sys.executable, "-c", "pass"),
    }
    try:
        times = interleaved(runs, repeats=3 if quick else 10)
    finally:
        shutil.rmtree(bad.parent)
    light = "the CLI imports argparse and its own light modules only; anchor = `python -c pass`"
    return [
        row(f"`loraops {flag}` wall time (s)", times[name], times["python"], "s", "< 0.5 s", light)
        for name, flag in (("help", "--help"), ("version", "--version"))
    ] + [
        row(
            "`loraops run` of a task file without data, to its one-line refusal (s)",
            times["refused"],
            times["python"],
            "s",
            "< 1 s",
            "the task file is read and checked before torch, transformers, MLflow or Prefect load; "
            "anchor = `python -c pass`",
        )
    ]


def synthetic_adapters(folder: Path, tasks: int, groups: int, layers: int, width: int, r: int) -> list[Path]:
    """`tasks` PEFT adapters on q/k/v/o of `layers` layers, A: [r, width]; task t is in group t % groups (interleaved),
    and each group's A spans its own r-dimensional input subspace, plus noise."""
    from lora_core import LoraConfig
    from lora_core.peft_format import PREFIX, write_adapter

    shutil.rmtree(folder, ignore_errors=True)
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(width, width, generator=g, dtype=torch.float64))[0].T.float()
    names = [f"layers.{i}.self_attn.{m}" for i in range(layers) for m in ("q_proj", "k_proj", "v_proj", "o_proj")]
    config = LoraConfig(r=r, alpha=2 * r, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    folders = []
    for t in range(tasks):
        span = basis[(t % groups) * r : (t % groups + 1) * r]
        tensors = {}
        for name in names:
            tensors[f"{PREFIX}{name}.lora_A.weight"] = torch.randn(r, r, generator=g) @ span + 0.1 * torch.randn(
                r, width, generator=g
            )
            tensors[f"{PREFIX}{name}.lora_B.weight"] = torch.randn(width, r, generator=g)
        folders.append(write_adapter(folder / f"task-{t:03d}", tensors, config))
    (folder / "folders.txt").write_text("\n".join(map(str, folders)) + "\n")
    return folders


def task_map(quick: bool, home: Path) -> list[dict]:
    """`adapters map` at 200 tasks: the batched φ of every pair (lora_core.analysis.pairwise) and the clustered order
    vs the pair-by-pair loop it replaced, each in a fresh process, on 200 synthetic adapters in 10 planted groups.
    Full mode adds ours alone on 200 larger adapters, beside their bytes (what the loop holds at the least)."""
    from lora_core.analysis.pairwise import BLOCK_BYTES, BUDGET_BYTES

    tasks, groups, layers, width, r = (200, 10, 2, 64, 4) if quick else (200, 10, 4, 512, 8)
    folder = home / "task-map"
    folders = synthetic_adapters(folder, tasks, groups, layers, width, r)
    listing = str(folder / "folders.txt")
    runs = {impl: in_child("bench.task_map", impl, listing, str(folder / f"{impl}.pt")) for impl in ("ours", "pairs")}
    ours, anchor = (torch.load(folder / f"{impl}.pt") for impl in ("ours", "pairs"))
    error = float((ours["phi"] - anchor["phi"]).abs().max())
    order = [t % groups for t in ours["order"]]
    blocks = 1 + sum(order[k] != order[k - 1] for k in range(1, tasks))
    note = (
        f"{tasks} adapters, {4 * layers} modules of A [{r}, {width}], {folder_bytes(folders[0]) / 1024:.0f} KiB each; "
        f"max |phi difference| {error:.1e}; clustered order: the {groups} planted groups in {blocks} contiguous blocks"
    )
    bound = (
        f"ours is bounded by one chunk of modules' bases (<= {BUDGET_BYTES / 2**20:.0f} MiB) + one Gram block "
        f"(<= {BLOCK_BYTES / 2**20:.0f} MiB) + the N x N result; the loop holds every adapter whole"
    )
    rows = [
        row(
            f"task map, {tasks} tasks: phi of every pair + clustered order vs pair by pair (s)",
            runs["ours"]["seconds"],
            runs["pairs"]["seconds"],
            "s",
            "<= 0.1x pair by pair",
            note,
        ),
        row(
            "  same, peak memory above the process after imports",
            runs["ours"]["peak"],
            runs["pairs"]["peak"],
            "bytes",
            "<= 1.0x pair by pair",
            bound,
        ),
    ]
    if not quick:  # larger adapters: the loop would take hours; its memory is at least the adapters' bytes
        big = synthetic_adapters(folder, tasks, groups, 8, 1024, 8)
        large = in_child("bench.task_map", "ours", listing, str(folder / "ours.pt"))
        data = sum(folder_bytes(f) for f in big)
        rows.append(
            row(
                f"task map, {tasks} tasks of 32 modules of A [8, 1024]: peak memory vs the adapters' bytes",
                large["peak"],
                data,
                "bytes",
                "bounded, not growing with the adapters' bytes",
                f"ours {large['seconds']:.1f}s; anchor = every adapter's bytes, the least the pair-by-pair loop holds",
            )
        )
    shutil.rmtree(folder, ignore_errors=True)
    return rows
