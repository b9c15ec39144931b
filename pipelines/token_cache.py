"""Each split tokenized once: its token ids are kept beside the split (safetensors, never pickle) under a name made
from the split's data digest, the tokenizer and the settings that change the ids, so validation passes,
evaluation, a resumed run and tuning trials read them instead of tokenizing again. Other data, another tokenizer,
max_length or chat template: another name, tokenized afresh."""

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

from .data import Example, TokenizedSplit, load_examples, tokenize
from .results import PreparedData

LAYOUT = "1"  # TokenizedSplit's layout on disk and the rules that made it; bump when either changes


def tokenizer_identity(tokenizer) -> str:
    """sha256 of what decides a tokenizer's ids: its class, its rules and vocabulary (a fast tokenizer's JSON without
    the truncation and padding state a call leaves there, else its vocabulary), its special tokens, sides and chat
    template. Two loads of the same files agree; an added token or another vocabulary does not."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        rules = json.loads(backend.to_str())
        rules.pop("truncation", None)
        rules.pop("padding", None)
    else:
        rules = sorted(tokenizer.get_vocab().items())
    parts = [
        type(tokenizer).__name__,
        rules,
        tokenizer.special_tokens_map,
        tokenizer.pad_token_id,
        tokenizer.padding_side,
        tokenizer.truncation_side,
        getattr(tokenizer, "chat_template", None),
    ]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def cache_path(prepared: PreparedData, split: str, tokenizer, max_length: int, chat: bool) -> Path:
    """Where `split`'s token ids for this tokenizer and these settings are kept: <prepared folder>/tokens/."""
    key = hashlib.sha256(
        json.dumps(
            [LAYOUT, prepared.digest, split, prepared.labels, tokenizer_identity(tokenizer), max_length, chat]
        ).encode()
    ).hexdigest()
    return Path(prepared.folder) / "tokens" / f"{split}-{key}.safetensors"


def tokenized_split(
    prepared: PreparedData,
    split: str,
    tokenizer,
    max_length: int,
    chat: bool = False,
    on_tokenize: Callable[[list[Example]], None] | None = None,
) -> TokenizedSplit:
    """The token ids of split `split` (train, validation, test) of `prepared`: read from the cache, or tokenized
    (`data.tokenize`: a classifier's texts when the data has labels, else causal LM pairs) and written there first.
    The file is written under a temporary name and renamed, so a reader never sees half of one. `on_tokenize`:
    called with the split's examples when it is tokenized (not when the cache holds it), e.g. to check them."""
    path = cache_path(prepared, split, tokenizer, max_length, chat)
    if path.exists():
        return read_tokens(path)
    examples = load_examples(str(Path(prepared.folder) / f"{split}.jsonl"))
    if on_tokenize is not None:
        on_tokenize(examples)
    tokens = tokenize(examples, tokenizer, max_length, prepared.labels, chat)
    write_tokens(tokens, path)
    return tokens


def write_tokens(tokens: TokenizedSplit, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"input_ids": tokens.input_ids, "offsets": tokens.offsets, "labels": tokens.labels}
    if tokens.token_type_ids is not None:
        tensors["token_type_ids"] = tokens.token_type_ids
    settings = {
        "causal": tokens.causal,
        "max_length": tokens.max_length,
        "pad_id": tokens.pad_id,
        "pad_type_id": tokens.pad_type_id,
        "padding_side": tokens.padding_side,
    }
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    save_file(tensors, partial, metadata={"settings": json.dumps(settings)})
    os.replace(partial, path)


def read_tokens(path: Path) -> TokenizedSplit:
    with safe_open(path, "pt") as f:
        settings = json.loads(f.metadata()["settings"])
        tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (safe_open is no mapping)
    return TokenizedSplit(
        tensors["input_ids"],
        tensors["offsets"],
        tensors["labels"],
        tensors.get("token_type_ids"),
        **settings,
    )
