"""Labelled text examples: load, validate, split deterministically, batch."""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch


class DataError(ValueError):
    """The data file is unusable; the message names the first bad row and the fix."""


@dataclass(frozen=True)
class Example:
    text: str
    label: str


def load_jsonl(path: str | Path, text_field: str = "text", label_field: str = "label") -> list[Example]:
    """Examples from a JSON-lines file; duplicates (same text) are dropped, first one kept."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file; check the data path") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 (byte {e.start}); re-encode the file as UTF-8") from None
    examples, seen = [], set()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            example = Example(str(row[text_field]), str(row[label_field]))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise DataError(f"{path}:{number}: needs a JSON object with fields {text_field!r} and {label_field!r} ({e})") from None
        if example.text not in seen:
            seen.add(example.text)
            examples.append(example)
    if not examples:
        raise DataError(f"{path}: no examples; the file is empty")
    return examples


def split(examples: list[Example], test_fraction: float = 0.2) -> tuple[list[Example], list[Example]]:
    """Train/test split by a hash of the text: the same example always lands on the same side."""
    def is_test(e: Example) -> bool:
        digest = hashlib.sha256(e.text.encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < test_fraction
    return [e for e in examples if not is_test(e)], [e for e in examples if is_test(e)]


def label_names(examples: list[Example]) -> list[str]:
    return sorted({e.label for e in examples})


def batches(examples: list[Example], labels: list[str], tokenizer, batch_size: int, max_length: int,
            shuffle_seed: int | None = None):
    """Yield tokenized batches {input_ids, attention_mask, ..., labels}."""
    order = list(range(len(examples)))
    if shuffle_seed is not None:
        order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(shuffle_seed)).tolist()
    index = {name: i for i, name in enumerate(labels)}
    for start in range(0, len(order), batch_size):
        chunk = [examples[i] for i in order[start:start + batch_size]]
        batch = tokenizer([e.text for e in chunk], padding=True, truncation=True, max_length=max_length,
                          return_tensors="pt")
        batch["labels"] = torch.tensor([index[e.label] for e in chunk])
        yield batch
