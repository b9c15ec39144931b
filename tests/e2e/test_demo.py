"""The README's main command on the real MiniLM base (shortened to a few steps)."""

import pytest

from lora_core import load_adapter
from lora_core.injection import lora_layers
from pipelines.cli import main
from pipelines.demo import run_demo


def test_demo_trains_merges_exactly_and_saves_a_loadable_adapter(tmp_path):
    lines: list[str] = []
    result = run_demo(steps=40, out_dir=tmp_path / "adapter", print_=lines.append)
    assert result["merge_rel_diff"] <= 1e-5 and result["unload_rel_diff"] <= 1e-5
    assert result["accuracy_after"] > result["accuracy_before"] + 0.15
    # r=8 on 12 query/value matrices of 384x384, plus the 384x4 head and its bias.
    assert result["trainable"] == 12 * 8 * (384 + 384) + 384 * 4 + 4
    assert any(line.startswith("eval   accuracy before") for line in lines)
    from transformers import AutoModelForSequenceClassification

    from pipelines.models import default_base_model

    model = AutoModelForSequenceClassification.from_pretrained(default_base_model(), num_labels=4)
    assert len(lora_layers(load_adapter(model, tmp_path / "adapter"))) == 12


def test_cli_rejects_a_bad_step_count(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--steps", "0"])
    assert exit_.value.code == 2
    assert "must be a positive integer" in capsys.readouterr().err


def test_version_names_the_package_and_the_code(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"loraops {version('loraops')} (") and ("git:" in out or "loraops==" in out)
