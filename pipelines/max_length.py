"""training.max_length against the base's tokenizer: room for the special tokens and at least one token of text,
no more than the base's positions, and a word when it cuts most training texts hard.

`max_length: 1` on BERT trains on [CLS] alone (every text cut to nothing): the adapter learns the label prior. That
is refused before any work; a length that keeps less than half of most texts trains, with a warning.
"""

import statistics
from pathlib import Path

from lora_core.model_files import ModelConfig

from . import data as datasets
from .errors import BaseModelError, SpecError
from .spec import TaskSpec

SAMPLE = 2000  # training texts measured for the warning: the first ones, enough for a share to the percent
HARD_CUT = 0.5  # a text cut to less than this share of its tokens is cut hard
MOST = 0.5  # warn when more than this share of texts is cut hard


def check_max_length(spec: TaskSpec, base_path: Path, config: ModelConfig) -> None:
    """SpecError when training.max_length leaves no token of text after the special tokens (classification: [CLS]
    and [SEP]; causal LM: the chat template's turn markers and the end of the completion), or exceeds the base's
    position embeddings."""
    tokenizer = load_tokenizer(base_path)
    length = spec.training.max_length
    need = special_tokens(spec, tokenizer) + 1
    if length < need:
        raise SpecError(
            f"{spec.source}: training.max_length {length} leaves no token of text: the tokenizer's special tokens "
            f"take {need - 1}; use at least {need} (texts longer than max_length are cut)"
        )
    positions = config.positions
    if positions is not None and length > positions:
        raise SpecError(
            f"{spec.source}: training.max_length {length} is more than the {positions} positions of base "
            f"{base_path.name}; use at most {positions}"
        )


def load_tokenizer(base_path: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(base_path)
    except (OSError, ValueError) as e:
        reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise BaseModelError(f"base {base_path}: no usable tokenizer ({reason}); save the base's tokenizer beside it")


def special_tokens(spec: TaskSpec, tokenizer) -> int:
    """Tokens an example carries besides its text: classification, the tokenizer's special tokens; causal LM, what
    encode_pair adds around an empty prompt and completion (template turns, end of sequence)."""
    if spec.type == "classification":
        return tokenizer.num_special_tokens_to_add(pair=False)
    chat = datasets.uses_chat_template(tokenizer, spec.training.chat_template)
    return len(datasets.encode_pair(tokenizer, "", "", 1 << 20, chat)[0])


def truncation_warning(spec: TaskSpec, tokenizer, examples: list[datasets.Example]) -> str | None:
    """One line when more than half of the training texts (the first SAMPLE) lose more than half of their tokens
    to training.max_length, else None."""
    sample = examples[:SAMPLE]
    if not sample:
        return None
    length = spec.training.max_length
    if spec.type == "classification":
        sizes = [len(ids) for ids in tokenizer([e.text for e in sample])["input_ids"]]
    else:
        chat = datasets.uses_chat_template(tokenizer, spec.training.chat_template)
        sizes = [len(datasets.encode_pair(tokenizer, e.text, e.label, 1 << 20, chat)[0]) for e in sample]
    hard = sum(length < HARD_CUT * size for size in sizes)
    if hard <= MOST * len(sizes):
        return None
    return (
        f"training.max_length {length} cuts {hard / len(sizes):.0%} of the training texts to less than half their "
        f"tokens (median {statistics.median(sizes):.0f} tokens); raise it, or keep it if the start of a text is enough"
    )
