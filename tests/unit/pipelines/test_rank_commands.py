"""`loraops analyze | compress | extract` from the command line."""

import json

import torch
from conftest import build, randomize_b

from lora_core import LoraConfig, inject, save_adapter
from lora_core.analysis import read_adapter
from pipelines.cli import main


def adapter(path, r=6, seed=0):
    model = build("llama", seed=seed)
    inject(model, LoraConfig(r=r, alpha=2 * r, target_modules=["q_proj", "v_proj"]))
    randomize_b(model, std=0.3, seed=seed + 2)
    save_adapter(model, path)
    return model


def test_analyze_prints_the_table_and_writes_report_and_plots(tmp_path, capsys):
    adapter(tmp_path / "a")
    adapter(tmp_path / "b", r=4, seed=1)
    build("llama").save_pretrained(tmp_path / "base")
    assert (
        main(
            [
                "analyze",
                str(tmp_path / "a"),
                "--base",
                str(tmp_path / "base"),
                "--compare",
                str(tmp_path / "b"),
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "model.layers.0.self_attn.q_proj" in printed and "all modules (uniform rank)" in printed
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert len(report["modules"]) == 4 and all(m["amplification"] > 0 for m in report["modules"])
    assert len(report["similarity"]["mean_phi"]) == 6 and len(report["similarity"]["mean_phi"][0]) == 4
    for name in ("scree.png", "ranks.png", "similarity.png"):
        assert (tmp_path / "out" / name).stat().st_size > 5000


def test_compress_writes_a_lower_rank_adapter(tmp_path, capsys):
    adapter(tmp_path / "a")
    assert main(["compress", str(tmp_path / "a"), "--rank", "2", "--out", str(tmp_path / "small")]) == 0
    assert {m.rank for m in read_adapter(tmp_path / "small").modules.values()} == {2}
    assert "relative error" in capsys.readouterr().out


def test_extract_from_model_folders(tmp_path, capsys):
    base, tuned = build("llama"), build("llama")
    with torch.no_grad():
        tuned.model.layers[1].self_attn.o_proj.weight.add_(torch.outer(torch.ones(32), torch.ones(32)) * 0.01)
    base.save_pretrained(tmp_path / "base")
    tuned.save_pretrained(tmp_path / "tuned")
    assert (
        main(
            [
                "extract",
                "--base",
                str(tmp_path / "base"),
                "--finetuned",
                str(tmp_path / "tuned"),
                "--pve",
                "0.99",
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 0
    )
    extracted = read_adapter(tmp_path / "x")
    assert list(extracted.modules) == ["model.layers.1.self_attn.o_proj"] and extracted.config.r == 1


def test_bad_input_exits_2_with_one_line(tmp_path, capsys):
    adapter(tmp_path / "a")
    assert main(["compress", str(tmp_path / "a"), "--rank", "9", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "rank=9 is above the rank 6" in err
    assert not (tmp_path / "x").exists()
    assert main(["analyze", str(tmp_path / "missing")]) == 2
    assert "no adapter_config.json" in capsys.readouterr().err


def test_the_flows_analyze_step_sums_up_the_report_it_writes(tmp_path):
    from pipelines.analysis import analyze_adapter, spectrum_tags

    adapter(tmp_path / "a")
    build("llama").save_pretrained(tmp_path / "base")
    analysis = analyze_adapter(str(tmp_path / "a"), str(tmp_path / "base"), tmp_path / "out")
    written = json.loads((tmp_path / "out" / "report.json").read_text())["summary"]
    assert analysis.r == written["r"] == 6 and analysis.modules == written["modules"] == 4
    assert analysis.recommended_rank.p95 == written["recommended_rank"]["95"] <= 6
    assert analysis.mean_amplification == written["mean_amplification"] > 0
    assert spectrum_tags(analysis)["rank_at_99"] == written["recommended_rank"]["99"]
    assert analyze_adapter(str(tmp_path / "a"), None, tmp_path / "alone").mean_amplification is None
