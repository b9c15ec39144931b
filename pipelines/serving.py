"""Task switching: one base model in memory, task adapters loaded beside it and switched in place.

    switcher = AdapterSwitcher()                       # nothing loaded yet
    switcher.predict("package-sections", ["a chess engine"])   # loads the base once, then the adapter
    switcher.predict("server-sections@production", ["an IMAP server"])  # same base, another adapter

An adapter made for another base (by weight fingerprint) is refused.
"""

from typing import Any, NamedTuple

import torch

from lora_core import load_adapter, set_active_adapter
from lora_core.peft_format import read_peft_config
from registry import AdapterRegistry, BaseMismatchError, VersionRecord
from registry.names import split_ref

from .adapter_files import read_labels, trained_with_chat_template
from .data import encode_prompt
from .models import load_model, locate_base
from .results import Prediction


class AdapterSwitcher:
    def __init__(self, registry: AdapterRegistry | None = None):
        self.registry = registry or AdapterRegistry()
        self.model: Any = None  # the shared base with every loaded adapter beside it
        self.tokenizer: Any = None
        self.base_fingerprint: str | None = None
        self.kind: str | None = None  # SEQ_CLS or CAUSAL_LM
        self.labels: dict[str, list[str]] = {}  # adapter name -> class names
        self.chat: dict[str, bool] = {}  # adapter name -> trained on chat-template prompts
        self.base_loads = 0

    def activate(self, ref: str) -> tuple[str, VersionRecord]:
        """Make TASK[@alias|:version] the active adapter (loading the base and the adapter on first use)."""
        record = self.registry.resolve(*split_ref(ref))
        name = f"{record.task}-v{record.version}"
        if name in self.labels:  # loaded before: a pointer switch, no fetch
            set_active_adapter(self.model, name)
            return name, record
        folder = self.registry.fetch(record.task, record.version)
        kind = str(read_peft_config(folder).task_type)
        labels = read_labels(folder)
        if self.model is None:
            self._load_base(record, kind, labels)
        elif record.base_fingerprint != self.base_fingerprint:
            raise BaseMismatchError(
                f"{record.task} v{record.version} was trained on base {record.base_name} "
                f"({record.base_fingerprint[:12]}); the loaded base is {str(self.base_fingerprint)[:12]}; "
                f"serve it with its own base"
            )
        elif kind != self.kind:
            raise BaseMismatchError(f"{record.task} is a {kind} adapter; this switcher serves {self.kind} tasks")
        load_adapter(self.model, folder, adapter_name=name)
        self.labels[name] = labels
        self.chat[name] = trained_with_chat_template(folder)
        set_active_adapter(self.model, name)
        return name, record

    def _load_base(self, record: VersionRecord, kind: str, labels: list[str]) -> None:
        found = self.registry.find_base(record.base_fingerprint)
        path = locate_base(record.base_name, found.source if found else "")
        self.registry.check_base(record, path)
        self.model, self.tokenizer = load_model(path, "classification" if kind == "SEQ_CLS" else "causal-lm", labels)
        self.base_fingerprint, self.kind = record.base_fingerprint, kind
        self.base_loads += 1

    @torch.no_grad()
    def predict(self, ref: str, texts: list[str], max_new_tokens: int = 20) -> list[Prediction]:
        name, record = self.activate(ref)
        if self.kind == "CAUSAL_LM":
            chat = self.chat[name]
            return [
                Prediction(
                    text=text,
                    task=record.task,
                    version=record.version,
                    completion=complete(self.model, self.tokenizer, text, max_new_tokens, chat),
                )
                for text in texts
            ]
        return [
            Prediction(text=text, task=record.task, version=record.version, label=label, probability=probability)
            for text, (label, probability) in zip(texts, classify(self.model, self.tokenizer, texts, self.labels[name]))
        ]


class Classified(NamedTuple):
    label: str
    probability: float


@torch.no_grad()
def classify(model, tokenizer, texts: list[str], labels: list[str]) -> list[Classified]:
    """The most probable class of each text, with its probability."""
    batch = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    probs = model(**batch).logits.float().softmax(-1)
    return [Classified(labels[int(p.argmax())] if labels else str(int(p.argmax())), float(p.max())) for p in probs]


@torch.no_grad()
def complete(model, tokenizer, prompt: str, max_new_tokens: int = 20, chat: bool = False) -> str:
    """The greedy continuation of `prompt`, encoded as in training (the chat template when the adapter was trained
    with it, else the plain prompt with no special tokens)."""
    ids = torch.tensor([encode_prompt(tokenizer, prompt, chat)])
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
    )
    # As a continuation of the prompt, as vLLM decodes it: WordPiece's '##' pieces join the prompt's last word and
    # a first word keeps the space before it (decoded alone, '##ing' and 'word' would lose both)
    prompt_text = tokenizer.decode(ids[0], skip_special_tokens=True)
    whole = tokenizer.decode(out[0], skip_special_tokens=True)
    if whole.startswith(prompt_text):
        return whole[len(prompt_text) :]
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
