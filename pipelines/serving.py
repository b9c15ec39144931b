"""Task switching: one base model in memory, task adapters loaded beside it and switched in place.

    switcher = AdapterSwitcher()                       # nothing loaded yet
    switcher.predict("package-sections", ["a chess engine"])   # loads the base once, then the adapter
    switcher.predict("server-sections@production", ["an IMAP server"])  # same base, another adapter

An adapter made for another base (by weight fingerprint) is refused.
"""

import json
from pathlib import Path

import torch

from lora_core import load_adapter, set_active_adapter
from lora_core.peft_format import read_peft_config
from registry import AdapterRegistry, BaseMismatchError, VersionRecord
from registry.names import split_ref

from .models import DEFAULT_BASE_NAME, default_base_model, load_model, resolve_base
from .spec import BaseSpec
from .steps import LABELS_FILE


class AdapterSwitcher:
    def __init__(self, registry: AdapterRegistry | None = None):
        self.registry = registry or AdapterRegistry()
        self.model = self.tokenizer = self.base_fingerprint = self.kind = None
        self.labels: dict[str, list[str]] = {}  # adapter name -> class names
        self.base_loads = 0

    def activate(self, ref: str) -> tuple[str, VersionRecord]:
        """Make TASK[@alias|:version] the active adapter (loading the base and the adapter on first use)."""
        record = self.registry.resolve(*split_ref(ref))
        name = f"{record.task}-v{record.version}"
        if name in self.labels:  # loaded before: a pointer switch, no fetch
            set_active_adapter(self.model, name)
            return name, record
        folder = self.registry.fetch(record.task, record.version)
        kind = read_peft_config(folder).get("task_type")
        labels_file = folder / LABELS_FILE
        labels = json.loads(labels_file.read_text()) if labels_file.exists() else []
        if self.model is None:
            self._load_base(record, kind, labels)
        elif record.base_fingerprint != self.base_fingerprint:
            raise BaseMismatchError(f"{record.task} v{record.version} was trained on base {record.base_name} "
                                    f"({record.base_fingerprint[:12]}); the loaded base is {self.base_fingerprint[:12]}; "
                                    f"serve it with its own base")
        elif kind != self.kind:
            raise BaseMismatchError(f"{record.task} is a {kind} adapter; this switcher serves {self.kind} tasks")
        load_adapter(self.model, folder, adapter_name=name)
        self.labels[name] = labels
        set_active_adapter(self.model, name)
        return name, record

    def _load_base(self, record: VersionRecord, kind: str, labels: list[str]) -> None:
        found = self.registry.find_base(record.base_fingerprint)
        path = Path(found.source) if found and Path(found.source).is_dir() else None
        if path is None:
            path = default_base_model() if record.base_name == DEFAULT_BASE_NAME else resolve_base(BaseSpec(model=record.base_name))[0]
        self.registry.check_base(record, path)
        self.model, self.tokenizer = load_model(path, "classification" if kind == "SEQ_CLS" else "causal-lm", labels)
        self.base_fingerprint, self.kind = record.base_fingerprint, kind
        self.base_loads += 1

    @torch.no_grad()
    def predict(self, ref: str, texts: list[str], max_new_tokens: int = 20) -> list[dict]:
        name, record = self.activate(ref)
        if self.kind == "CAUSAL_LM":
            return [self._generate(text, max_new_tokens) for text in texts]
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
        probs = self.model(**batch).logits.float().softmax(-1)
        labels = self.labels[name]
        return [{"text": text, "label": labels[int(p.argmax())] if labels else int(p.argmax()),
                 "probability": float(p.max()), "task": record.task, "version": record.version}
                for text, p in zip(texts, probs)]

    def _generate(self, prompt: str, max_new_tokens: int) -> dict:
        ids = self.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")  # as in training (lm_batches)
        out = self.model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                                  pad_token_id=self.tokenizer.pad_token_id)
        return {"text": prompt, "completion": self.tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)}
