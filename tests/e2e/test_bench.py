"""The benchmark harness keeps working: quick mode runs every case beside its anchor (no timing asserted)."""

import json
import re
import subprocess
import sys

from llama_serving import needs_vllm

from pipelines.device import cpu_bf16


def test_quick_bench_runs_every_case_with_its_anchor(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path), "--work", str(tmp_path / "w")],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "bench-results.json").read_text())
    cases = [r["case"] for r in results["rows"]]
    bf16 = cpu_bf16()  # PEFT and the Trainer under bf16 autocast run where the CPU has native bf16 only
    assert results["failures"] == [] and len(cases) == 40 + 2 * bf16  # full mode adds flow overhead on a made home
    for needle in (
        "`loraops --help` wall time",
        "to its one-line refusal",
        "train step",
        "torch.compile",
        "full fine-tune",
        "in memory",
        "load one adapter",
        "switch",
        "disk to disk",
        "fingerprint",
        "resolve",
        "promote a",
        "promote the same",
        "causal LM",
        "flow overhead",
        "classifier forward, batch 1x64: merged",
        "greedy decode, batch 32: unmerged",
        "concurrent runs: 2 training processes at once",
        "task map, 200 tasks",
        "adapters list, 8 tasks",
        "resolve task@candidate at 8 tasks",
        "loraops on PEFT's targets",
    ):
        assert any(needle in c for c in cases), needle
    assert all(any(needle in c for c in cases) == bf16 for needle in ("PEFT under bf16", "Trainer with bf16=True"))
    assert all(r["ours"] > 0 for r in results["rows"])
    assert "| case | loraops | anchor | ratio |" in (tmp_path / "BENCHMARKS.md").read_text()


@needs_vllm
def test_quick_serving_bench_serves_an_adapter_beside_the_merged_model_and_promotes_to_it(tmp_path):
    """`--quick --only serving` (not in the plain quick run: vLLM starts twice, minutes on two cores)."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--only",
            "serving",
            "--out",
            str(tmp_path),
            "--work",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((tmp_path / "bench-results.json").read_text())["rows"]
    assert [r["unit"] for r in rows] == ["tok/s", "s", "s"] and all(r["ours"] > 0 and r["anchor"] > 0 for r in rows)
    assert "1 adapter(s) on one base" in rows[0]["case"] and "`loraops promote`" in rows[2]["case"]


def test_quick_quality_runs_loraops_beside_peft_and_full_fine_tuning(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.quality",
            "--quick",
            "--seeds",
            "2",
            "--tasks",
            "server-sections",
            "--out",
            str(tmp_path),
            "--work",
            str(tmp_path / "w"),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "quality-results.json").read_text())
    assert sorted((r["method"], r["seed"]) for r in results["runs"]) == [
        (m, s) for m in ("full", "loraops", "loraops-qv", "peft") for s in (0, 1)
    ]
    assert all(0 <= r["accuracy"] <= 1 and r["peak"] > 0 and r["seconds"] > 0 for r in results["runs"])
    trainable = {r["method"]: r["trainable"] for r in results["runs"]}
    assert trainable["peft"] < trainable["loraops"] < trainable["full"] / 10  # q,v < every projection << everything
    assert trainable["loraops-qv"] == trainable["peft"]  # equal targets: the same weights train
    report = (tmp_path / "QUALITY.md").read_text()
    assert "| server-sections | loraops |" in report and "| server-sections | loraops-qv |" in report

    # loraops again, the anchors reused: each reused run keeps the file and the commit it ran at
    again = tmp_path / "again"
    args = ["--quick", "--seeds", "2", "--tasks", "server-sections", "--methods", "loraops", "--out", str(again)]
    reuse = ["--reuse", str(tmp_path / "quality-results.json"), "--work", str(tmp_path / "w")]
    done = subprocess.run([sys.executable, "-m", "bench.quality", *args, *reuse], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = json.loads((again / "quality-results.json").read_text())["runs"]
    first = {(r["method"], r["seed"]): r for r in results["runs"]}
    assert sorted((r["method"], r["seed"]) for r in runs) == sorted(first)
    for r in runs:
        assert r.get("reused") == (None if r["method"] == "loraops" else str(tmp_path / "quality-results.json"))
        assert r["method"] == "loraops" or r == {**first[(r["method"], r["seed"])], "reused": r["reused"]}
    assert (
        f"The full runs are reused from {tmp_path / 'quality-results.json'} at {first['full', 0]['commit']}"
        in (again / "QUALITY.md").read_text()
    )

    # nothing run: the report from the runs of earlier files alone, each where it first ran
    only = tmp_path / "only"
    reuse = ["--reuse", str(again / "quality-results.json"), "--out", str(only)]
    done = subprocess.run([sys.executable, "-m", "bench.quality", *args[:5], "--methods", *reuse], capture_output=True)
    assert done.returncode == 0, done.stderr[-3000:]
    report = (only / "QUALITY.md").read_text()
    assert "--methods` at" in report and f"The loraops runs are reused from {again / 'quality-results.json'}" in report
    assert f"The peft runs are reused from {tmp_path / 'quality-results.json'}" in report
    assert "| server-sections | loraops (reused) |" in report and re.search(r"\| server-sections \| [+-]\d", report)


def test_quick_tuning_ships_a_searched_version_beside_a_default_run(tmp_path):
    """bench.tuning: a default `loraops run` and a two-trial `loraops tune` of a real task, each in its own home, with
    the quality run's results as anchors (here the quick run's own)."""
    quality = tmp_path / "quality"
    quality.mkdir()
    (quality / "quality-results.json").write_text(
        json.dumps({"summary": {"server-sections": {"full": {"accuracy": [0.5, 0.0]}}}})
    )
    done = subprocess.run(
        [sys.executable, "-m", "bench.tuning", "--quick", "--trials", "2", "--tasks", "server-sections"]
        + ["--anchors", str(quality / "quality-results.json"), "--out", str(tmp_path), "--work", str(tmp_path / "w")],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (row,) = json.loads((tmp_path / "tuning-results.json").read_text())["rows"]
    assert (row["run"]["trials"], row["tune"]["trials"]) == (0, 2)
    assert row["tune"]["complete"] + row["tune"]["pruned"] == 2 and set(row["tune"]["best_params"]) == {"lr"}
    assert all(0 <= row[kind]["accuracy"] <= 1 and row[kind]["seconds"] > 0 for kind in ("run", "tune"))
    assert row["run"]["validation"] is None and 0 <= row["tune"]["validation"] <= 1  # a search holds a split out
    assert row["tune"]["refit"]  # and ships its best settings trained again on all the data
    table = (tmp_path / "TUNING.md").read_text()
    assert "| server-sections |" in table and f"{100 * row['tune']['accuracy'] - 50:+.1f} |" in table
