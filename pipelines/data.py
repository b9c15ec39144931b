"""Task data: read JSONL / CSV / Parquet (local or s3://), validate, split deterministically,
fingerprint, and batch for classification or causal LM (loss on the completion only)."""

import csv
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from registry.errors import RegistryError
from registry.s3 import is_s3_uri, read_object

from .errors import DataError

MAX_BAD_ROWS = 3


@dataclass(frozen=True)
class Example:
    """Classification: text and its label. Causal LM: the prompt (text) and its completion (label)."""

    text: str
    label: str


def read_rows(path: str) -> list[dict]:
    """Rows of a .jsonl / .csv / .parquet file, local or s3:// (standard AWS settings)."""
    data = _read_bytes(path)
    suffix = Path(path.split("?")[0]).suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(io.BytesIO(data)).to_pylist()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 (byte {e.start}); re-encode the file as UTF-8") from None
    if suffix == ".csv":
        return list(csv.DictReader(io.StringIO(text)))
    if suffix not in (".jsonl", ".json"):
        raise DataError(f"{path}: unknown format {suffix!r}; use .jsonl, .csv or .parquet")
    rows = []
    for number, row in enumerate(text.splitlines(), 1):
        if row.strip():
            try:
                rows.append(json.loads(row))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{number}: not a JSON object ({e.msg}); one JSON object per line") from None
    return rows


def _read_bytes(path: str) -> bytes:
    if is_s3_uri(path):
        try:
            return read_object(path)
        except RegistryError as e:
            raise DataError(f"cannot read data.path: {e}") from None
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file; check data.path in the task file") from None


def load_examples(path: str, text_field: str = "text", label_field: str = "label") -> list[Example]:
    """Validated examples; exact duplicates of the text are dropped (first kept)."""
    rows = read_rows(path)
    if not rows:
        raise DataError(f"{path}: no examples; the file is empty")
    bad = [
        i
        for i, row in enumerate(rows, 1)
        if not isinstance(row, dict) or not _filled(row.get(text_field)) or not _filled(row.get(label_field))
    ]
    if bad:
        shown = ", ".join(map(str, bad[:MAX_BAD_ROWS])) + (
            f" and {len(bad) - MAX_BAD_ROWS} more" if len(bad) > MAX_BAD_ROWS else ""
        )
        raise DataError(
            f"{path}: rows {shown} lack a non-empty {text_field!r} or {label_field!r}; "
            f"fix those rows or set data.text_field / data.label_field"
        )
    examples, seen = [], set()
    for row in rows:
        example = Example(str(row[text_field]), str(row[label_field]))
        if example.text not in seen:
            seen.add(example.text)
            examples.append(example)
    return examples


def _filled(value) -> bool:
    return value is not None and str(value).strip() != ""


def split(examples: list[Example], test_fraction: float = 0.2, salt: str = "") -> tuple[list[Example], list[Example]]:
    """(kept, held out) by a hash of the text: the same example always lands on the same side. Another salt draws
    an independent split (the validation split is carved from what the test split left)."""

    def is_test(e: Example) -> bool:
        digest = hashlib.sha256((salt + e.text).encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < test_fraction

    return [e for e in examples if not is_test(e)], [e for e in examples if is_test(e)]


def check_classes(train: list[Example], test: list[Example], where: str, split_name: str = "test") -> None:
    """At least two classes, and no held-out label the model never saw in training."""
    seen = {e.label for e in train}
    if len(seen) < 2:
        raise DataError(
            f"{where}: the training split has a single class {sorted(seen)}; a classifier needs at least two"
        )
    unseen = [(i, e.label) for i, e in enumerate(test, 1) if e.label not in seen]
    if unseen:
        rows = ", ".join(f"{split_name} row {i} ({label!r})" for i, label in unseen[:MAX_BAD_ROWS])
        raise DataError(f"{where}: {rows}: label never seen in training; add training examples or drop those rows")


def digest_examples(train: list[Example], test: list[Example], validation: list[Example] | None = None) -> str:
    """sha256 of the splits, in order: same data and split, same digest."""
    digest = hashlib.sha256()
    for name, examples in (("train", train), ("test", test), ("validation", validation or [])):
        for e in examples:
            digest.update(json.dumps([name, e.text, e.label]).encode() + b"\n")
    return digest.hexdigest()


def label_names(examples: list[Example]) -> list[str]:
    return sorted({e.label for e in examples})


GROUP_WINDOW = 50  # batches per window whose examples are sorted by length


def batch_order(lengths: list[int], batch_size: int, shuffle_seed: int | None) -> list[list[int]]:
    """Batches of example indices grouped by length, so a batch carries little padding.

    Training (a seed): shuffle, sort each window of GROUP_WINDOW batches by length, cut it into
    batches and shuffle the batches, so lengths are mixed across steps but alike within one.
    Evaluation (no seed): all examples sorted by length.
    """
    n = len(lengths)
    if shuffle_seed is None:
        ordered = sorted(range(n), key=lambda i: lengths[i])
        return [ordered[i : i + batch_size] for i in range(0, n, batch_size)]
    g = torch.Generator().manual_seed(shuffle_seed)
    order = torch.randperm(n, generator=g).tolist()
    window = batch_size * GROUP_WINDOW
    grouped = []
    for start in range(0, n, window):
        ordered = sorted(order[start : start + window], key=lambda i: lengths[i])
        grouped += [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]
    return [grouped[i] for i in torch.randperm(len(grouped), generator=g).tolist()]


def batches(
    examples: list[Example],
    labels: list[str],
    tokenizer,
    batch_size: int,
    max_length: int,
    shuffle_seed: int | None = None,
):
    """Classification batches {input_ids, attention_mask, ..., labels [batch]}."""
    index = {name: i for i, name in enumerate(labels)}
    for members in batch_order([len(e.text) for e in examples], batch_size, shuffle_seed):
        chunk = [examples[i] for i in members]
        batch = tokenizer(
            [e.text for e in chunk], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        batch["labels"] = torch.tensor([index[e.label] for e in chunk])
        yield batch


def uses_chat_template(tokenizer, wanted: bool = True) -> bool:
    return wanted and getattr(tokenizer, "chat_template", None) is not None


def encode_prompt(tokenizer, prompt: str, chat: bool) -> list[int]:
    """Token ids a completion follows: the prompt as a user turn of the chat template plus the assistant's opening,
    or the plain prompt (no special tokens) when the tokenizer has no template or the task turned it off."""
    if chat:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(prompt, add_special_tokens=False)["input_ids"]


def encode_pair(tokenizer, prompt: str, completion: str, max_length: int, chat: bool) -> tuple[list[int], list[int]]:
    """(input ids, labels) of one prompt + completion: labels are -100 on the prompt, so the loss counts the
    completion only. The completion ends with EOS, or with the template's end of turn. Over max_length, the prompt
    loses its start, so the completion (what is learned and measured) always fits."""
    prompt_ids = encode_prompt(tokenizer, prompt, chat)
    if chat:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}], tokenize=False
        )
        full = tokenizer(text, add_special_tokens=False)["input_ids"]
        answer = (
            full[len(prompt_ids) :]
            if full[: len(prompt_ids)] == prompt_ids
            else tokenizer(text[len(tokenizer.decode(prompt_ids)) :], add_special_tokens=False)["input_ids"]
        )
    else:
        eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
        answer = tokenizer(" " + completion, add_special_tokens=False)["input_ids"] + [eos]
    answer = answer[: max_length - 1]
    prompt_ids = prompt_ids[max(0, len(prompt_ids) - (max_length - len(answer))) :]
    return prompt_ids + answer, [-100] * len(prompt_ids) + answer


def lm_batches(
    examples: list[Example],
    tokenizer,
    batch_size: int,
    max_length: int,
    shuffle_seed: int | None = None,
    chat: bool = False,
    packing: bool = False,
):
    """Causal LM batches of prompt + completion pairs (`encode_pair`), right-padded, labels -100 on prompt and padding.

    packing: each row holds several examples, up to max_length tokens, in the order of `batch_order`; position ids
    restart at 0 for each example and there is no 2-D attention mask, which makes transformers build a
    block-diagonal causal mask: no token attends across examples. Rows are `batch_size` to a batch."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    order = batch_order([len(e.text) + len(e.label) for e in examples], batch_size, shuffle_seed)
    if packing:
        yield from packed_batches(
            [
                encode_pair(tokenizer, examples[i].text, examples[i].label, max_length, chat)
                for members in order
                for i in members
            ],
            batch_size,
            max_length,
            pad,
        )
        return
    for members in order:
        rows = [encode_pair(tokenizer, examples[i].text, examples[i].label, max_length, chat) for i in members]
        width = max(len(ids) for ids, _ in rows)
        yield {
            "input_ids": torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in rows]),
            "attention_mask": torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows]),
            "labels": torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in rows]),
        }


def packed_batches(pairs: list[tuple[list[int], list[int]]], batch_size: int, max_length: int, pad: int):
    """Pairs packed first-fit in order into rows of at most max_length tokens; {input_ids, position_ids, labels}."""
    rows: list[tuple[list[int], list[int], list[int]]] = []
    for ids, labels in pairs:
        if not rows or len(rows[-1][0]) + len(ids) > max_length:
            rows.append(([], [], []))
        rows[-1][0].extend(ids)
        rows[-1][1].extend(labels)
        rows[-1][2].extend(range(len(ids)))
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        width = max(len(ids) for ids, _, _ in chunk)
        # padding is a sequence of its own (positions from 0), its labels ignored
        yield {
            "input_ids": torch.tensor([ids + [pad] * (width - len(ids)) for ids, _, _ in chunk]),
            "position_ids": torch.tensor([pos + list(range(width - len(pos))) for _, _, pos in chunk]),
            "labels": torch.tensor([lab + [-100] * (width - len(lab)) for _, lab, _ in chunk]),
        }
