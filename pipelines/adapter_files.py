"""The side files beside an adapter's weights: training writes them, serving and the MLflow Model read them.

PEFT ignores extra files in an adapter folder, so they travel with the adapter everywhere it is copied.
"""

import json
import shutil
from pathlib import Path

LABELS_FILE = "labels.json"  # a classifier's class names, in index order
PROMPT_FILE = "prompt.json"  # beside a causal-LM adapter trained on chat-template prompts
SIDE_FILES = (LABELS_FILE, PROMPT_FILE)


def write_side_files(folder: Path, labels: list[str], chat_template: bool) -> None:
    if labels:
        (folder / LABELS_FILE).write_text(json.dumps(labels))
    if chat_template:
        (folder / PROMPT_FILE).write_text(json.dumps({"chat_template": True}))


def read_labels(folder: Path) -> list[str]:
    """A classifier's class names ([] for a causal LM)."""
    path = Path(folder) / LABELS_FILE
    return json.loads(path.read_text()) if path.exists() else []


def trained_with_chat_template(folder: Path) -> bool:
    """Predictions must build prompts the way training did."""
    path = Path(folder) / PROMPT_FILE
    return path.exists() and bool(json.loads(path.read_text()).get("chat_template"))


def copy_side_files(source: Path, target: Path) -> None:
    for name in SIDE_FILES:
        if (Path(source) / name).exists():
            shutil.copy2(Path(source) / name, Path(target) / name)
