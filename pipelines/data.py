"""Task data: read JSONL / CSV / Parquet (local or s3://), validate, split deterministically,
fingerprint, and batch for classification or causal LM (loss on the completion only)."""

import hashlib
import itertools
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

import torch

from .data_files import read_rows
from .errors import DataError

MAX_BAD_ROWS = 3


@dataclass(frozen=True)
class Example:
    """Classification: text and its label. Causal LM: the prompt (text) and its completion (label)."""

    text: str
    label: str


def load_examples(
    path: str, text_field: str = "text", label_field: str = "label", what: str = "data file"
) -> list[Example]:
    """Validated examples; exact duplicates of the text are dropped (first kept). `what`: the setting that named
    `path` (data.path, data.test_path), for errors."""
    rows = read_rows(path, what)
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
            f"{path}: rows {shown} lack a non-empty {text_field!r} or {label_field!r} (a string or number); "
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
    """A text or label: a string, number or boolean, not blank, not NaN (a missing cell in a pandas-written file)."""
    if isinstance(value, float) and math.isnan(value):
        return False
    return isinstance(value, (str, int, float)) and str(value).strip() != ""


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
    """Classification batches {input_ids, attention_mask, ..., labels [batch]} of raw examples."""
    return token_batches(tokenize(examples, tokenizer, max_length, labels), batch_size, shuffle_seed)


@dataclass(frozen=True)
class TokenizedSplit:
    """A split's examples as token ids, unpadded: example i is `input_ids[offsets[i]:offsets[i + 1]]` (the same
    slice of `token_type_ids`, and of `labels` for a causal LM: -100 on the prompt); a classifier's `labels` are
    class indices [n]. Batches pad to their own longest example with `pad_id` on `padding_side`."""

    input_ids: torch.Tensor  # [tokens] int64
    offsets: torch.Tensor  # [n + 1] int64
    labels: torch.Tensor  # [n] class indices, or [tokens] for a causal LM
    token_type_ids: torch.Tensor | None
    causal: bool
    max_length: int
    pad_id: int
    pad_type_id: int = 0
    padding_side: str = "right"

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @cached_property
    def bounds(self) -> list[int]:
        return self.offsets.tolist()

    @cached_property
    def lengths(self) -> list[int]:
        return [end - start for start, end in itertools.pairwise(self.bounds)]

    def pair(self, i: int) -> tuple[list[int], list[int]]:
        """(input ids, labels) of causal LM example i."""
        start, end = self.bounds[i], self.bounds[i + 1]
        return self.input_ids[start:end].tolist(), self.labels[start:end].tolist()

    def batch(self, members: list[int]) -> dict[str, torch.Tensor]:
        """The examples `members` padded to the longest of them: {input_ids, attention_mask, [token_type_ids],
        labels}; a causal LM's labels are -100 on the padding."""
        width = max(self.lengths[i] for i in members)
        shape = (len(members), width)
        out = {"input_ids": torch.full(shape, self.pad_id), "attention_mask": torch.zeros(shape, dtype=torch.long)}
        if self.token_type_ids is not None:
            out["token_type_ids"] = torch.full(shape, self.pad_type_id)
        if self.causal:
            out["labels"] = torch.full(shape, -100)
        for row, i in enumerate(members):
            start, end = self.bounds[i], self.bounds[i + 1]
            cols = slice(width - (end - start), width) if self.padding_side == "left" else slice(0, end - start)
            out["input_ids"][row, cols] = self.input_ids[start:end]
            out["attention_mask"][row, cols] = 1
            if self.token_type_ids is not None:
                out["token_type_ids"][row, cols] = self.token_type_ids[start:end]
            if self.causal:
                out["labels"][row, cols] = self.labels[start:end]
        if not self.causal:
            out["labels"] = self.labels[members]
        return out


def flat(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows concatenated [tokens], offsets [n + 1]) as int64."""
    offsets = torch.tensor([0, *itertools.accumulate(len(r) for r in rows)], dtype=torch.long)
    return torch.tensor([t for r in rows for t in r], dtype=torch.long), offsets


def tokenize(
    examples: list[Example], tokenizer, max_length: int, labels: list[str] | None = None, chat: bool = False
) -> TokenizedSplit:
    """Token ids of `examples`, truncated to max_length: texts of a classifier when `labels` (class names in index
    order) are given, else causal LM prompt + completion pairs (`encode_pair`, right-padded in batches)."""
    if not labels:
        pairs = [encode_pair(tokenizer, e.text, e.label, max_length, chat) for e in examples]
        input_ids, offsets = flat([ids for ids, _ in pairs])
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        return TokenizedSplit(input_ids, offsets, flat([lab for _, lab in pairs])[0], None, True, max_length, pad)
    encoded = tokenizer([e.text for e in examples], truncation=True, max_length=max_length)
    input_ids, offsets = flat(encoded["input_ids"])
    index = {name: i for i, name in enumerate(labels)}
    return TokenizedSplit(
        input_ids,
        offsets,
        torch.tensor([index[e.label] for e in examples], dtype=torch.long),
        flat(encoded["token_type_ids"])[0] if "token_type_ids" in encoded else None,
        False,
        max_length,
        tokenizer.pad_token_id,
        tokenizer.pad_token_type_id,
        tokenizer.padding_side,
    )


def token_batches(
    tokens: TokenizedSplit, batch_size: int, shuffle_seed: int | None = None, packing: bool = False
) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of `batch_size` examples grouped by token length (`batch_order`), each padded to its own longest
    example; `packing` (causal LM) fills rows up to max_length instead (`packed_batches`)."""
    order = batch_order(tokens.lengths, batch_size, shuffle_seed)
    if packing:
        pairs = [tokens.pair(i) for members in order for i in members]
        yield from packed_batches(pairs, batch_size, tokens.max_length, tokens.pad_id)
        return
    for members in order:
        yield tokens.batch(members)


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
    return token_batches(tokenize(examples, tokenizer, max_length, chat=chat), batch_size, shuffle_seed, packing)


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
