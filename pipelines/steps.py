"""The flow's steps as plain functions, typed in and typed out (results.py), callable without Prefect.

Each step writes under a content-addressed work folder, $LORAOPS_HOME/work/<task>/<key>, where
the key is a cache key over everything the step's output depends on.
"""

import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from lora_core import (
    LoraConfig,
    count_parameters,
    inject,
    load_adapter,
    merge,
    save_adapter,
    set_active_adapter,
    unmerge,
)
from lora_core.checkpoint_merge import merge_checkpoint
from registry.free_space import SpaceNeed, check_space, disk_writes

from . import data as datasets
from .adapter_files import write_side_files
from .base_names import base_name
from .errors import DataError, MergeCheckError
from .evaluation import classification_metrics, decide, lm_outputs, predict_logits, relative_gap
from .held_out import check_not_training_file, overlap_warning
from .label_spellings import merge_spellings
from .max_length import truncation_warning
from .models import head_modules, load_model
from .results import Evaluation, Metrics, PreparedData, ProductionVersion, TrainedAdapter, ValidationPass
from .run_space import base_bytes
from .spec import TaskSpec
from .token_cache import tokenized_split
from .train import Validation, train, world

TASK_TYPES = {"classification": "SEQ_CLS", "causal-lm": "CAUSAL_LM"}
# Merging rounds W0 + s·B·A to the base dtype once: bfloat16 keeps 8 mantissa bits, so logits move by
# parts in 1e3 per layer; float32 only by accumulation order.
MERGE_TOLERANCE = {torch.float32: 1e-3, torch.float16: 1e-2, torch.bfloat16: 3e-2}
OnStep = Callable[[int, float, float], None]
OnValidation = Callable[[int, Metrics], None]


def cache_key(*parts: object) -> str:
    """sha256 over JSON of `parts`: the key of a step's cached result (not a fingerprint of weights or data)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def prepare_data(spec: TaskSpec, work: Path) -> PreparedData:
    """Load, validate, dedupe and split the task's data; write the splits; return them with their digest."""
    d = spec.data
    text, label = (
        (d.text_field, d.label_field) if spec.type == "classification" else (d.prompt_field, d.completion_field)
    )
    source = spec.resolve(d.path)
    assert source is not None  # data.path is required
    examples = datasets.load_examples(source, text, label, "data.path")
    test_path = spec.resolve(d.test_path)
    warnings = []
    if test_path:
        train_set, test_set = examples, datasets.load_examples(test_path, text, label, "data.test_path")
        check_not_training_file(source, test_path)
        warnings.append(overlap_warning(train_set, test_set, d.max_test_overlap, source))
    else:
        train_set, test_set = datasets.split(examples, d.test_fraction)
    if spec.type == "classification":
        spellings = merge_spellings(train_set + test_set, source)
        train_set, test_set = spellings.apply(train_set), spellings.apply(test_set)
        warnings.append(spellings.warning)
    if not train_set or not test_set:
        raise DataError(
            f"{source}: the split left {len(train_set)} train / {len(test_set)} test examples; "
            f"add data or change data.test_fraction"
        )
    validation_set: list[datasets.Example] = []
    if d.validation_fraction:
        train_set, validation_set = datasets.split(train_set, d.validation_fraction, salt="validation")
        if not train_set or not validation_set:
            raise DataError(
                f"{source}: the validation split left {len(train_set)} train / {len(validation_set)} "
                f"validation examples; add data, or set data.validation_fraction to 0 for none"
            )
    if spec.type == "classification":
        datasets.check_classes(train_set, test_set, source)
        if validation_set:
            datasets.check_classes(train_set, validation_set, source, "validation")
    digest = datasets.digest_examples(train_set, test_set, validation_set)
    folder = work / "data" / digest
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train_set), ("test", test_set), ("validation", validation_set)):
        if rows:
            (folder / f"{name}.jsonl").write_text(
                "".join(json.dumps({"text": e.text, "label": e.label}) + "\n" for e in rows)
            )
    return PreparedData(
        digest=digest,
        folder=str(folder),
        source=source,
        train=len(train_set),
        test=len(test_set),
        validation=len(validation_set),
        labels=datasets.label_names(train_set) if spec.type == "classification" else [],
        warnings=[w for w in warnings if w],
    )


def read_split(prepared: PreparedData, name: str) -> list[datasets.Example]:
    return datasets.load_examples(str(Path(prepared.folder) / f"{name}.jsonl"))


def split_tokens(
    spec: TaskSpec,
    prepared: PreparedData,
    name: str,
    tokenizer: PreTrainedTokenizerBase,
    on_tokenize: Callable[[list[datasets.Example]], None] | None = None,
) -> datasets.TokenizedSplit:
    """Split `name`'s token ids: tokenized on first use, then read from the cache beside the split (token_cache)."""
    t = spec.training
    chat = spec.type == "causal-lm" and datasets.uses_chat_template(tokenizer, t.chat_template)
    return tokenized_split(prepared, name, tokenizer, t.max_length, chat, on_tokenize)


def make_batches(
    spec: TaskSpec,
    tokens: datasets.TokenizedSplit,
    shuffle_seed: int | None = None,
    batch_size: int | None = None,
    packing: bool = False,
) -> Iterable[dict]:
    """Batches of a split, each padded to its own longest example; `packing` (training only: evaluation scores one
    example per row) as training.packing."""
    return datasets.token_batches(tokens, batch_size or spec.training.batch_size, shuffle_seed, packing)


def total_steps(spec: TaskSpec, n_train: int) -> int:
    t = spec.training
    kind, value = t.length
    if kind == "max_steps":
        return int(value)
    return max(1, math.ceil(value * math.ceil(n_train / t.batch_size) / t.grad_accumulation))


def task_lora(spec: TaskSpec, model: torch.nn.Module) -> LoraConfig:
    """The adapter a task trains: its lora section, the task type, and for classification the task's head among the
    saved modules, always (a new head left at its random init would cap the adapter at chance)."""
    lora = spec.lora.adapter()
    update: dict[str, object] = {"task_type": TASK_TYPES[spec.type]}
    if spec.type == "classification":
        update["modules_to_save"] = sorted(set(lora.modules_to_save) | set(head_modules(model)))
    return lora.model_copy(update=update)


def measure(
    spec: TaskSpec,
    prepared: PreparedData,
    examples: list[datasets.Example],
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
) -> tuple[torch.Tensor, Metrics]:
    """`measure_tokens` of examples that are no split of `prepared` (tokenized here, not cached)."""
    chat = spec.type == "causal-lm" and datasets.uses_chat_template(tokenizer, spec.training.chat_template)
    return measure_tokens(
        spec, datasets.tokenize(examples, tokenizer, spec.training.max_length, prepared.labels, chat), model
    )


def measure_tokens(
    spec: TaskSpec, tokens: datasets.TokenizedSplit, model: torch.nn.Module
) -> tuple[torch.Tensor, Metrics]:
    """(logits, metrics) of `model` on a tokenized split: loss (mean cross-entropy) with accuracy and macro-F1 for a
    classifier, or perplexity for a causal LM (completion tokens only)."""
    batches = make_batches(spec, tokens, batch_size=64)
    if spec.type == "classification":
        logits, gold = predict_logits(model, batches, spec.training.device)
        loss = torch.nn.functional.cross_entropy(logits, gold).item()
        return logits, {"loss": loss, **classification_metrics(logits, gold)}
    return lm_outputs(model, batches, spec.training.device)


def fit_adapter(
    spec: TaskSpec,
    prepared: PreparedData,
    base_path: Path,
    work: Path,
    on_step: OnStep | None = None,
    on_validation: OnValidation | None = None,
) -> TrainedAdapter:
    """Inject LoRA into the base, train (resuming from a checkpoint in `work` if one is there), save the adapter:
    the weights training.selection keeps (without a validation split: average's mean, else the last step's)."""
    t = spec.training
    torch.manual_seed(t.seed)
    model, tokenizer = load_model(base_path, spec.type, prepared.labels, spec.base.load_in_4bit)
    inject(model, task_lora(spec, model))
    if spec.type == "causal-lm":
        model.config.use_cache = False  # no KV cache in training: packed rows need it off, and it only costs memory
    if t.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    trainable, total = count_parameters(model)
    steps = total_steps(spec, prepared.train)

    def warn_if_cut(examples: list[datasets.Example]) -> None:  # once per data, tokenizer and max_length
        if world()[0] == 0 and (cut := truncation_warning(spec, tokenizer, examples)):
            print(f"{spec.task}: warning: {cut}")

    train_tokens = split_tokens(spec, prepared, "train", tokenizer, warn_if_cut)
    validation = None
    if prepared.validation:
        held_out = split_tokens(spec, prepared, "validation", tokenizer)
        validation = Validation(
            lambda: measure_tokens(spec, held_out, model)[1],
            every=t.eval_every or max(1, steps // 10),
            metric=t.best_metric or spec.gate.metric,
            patience=t.patience,
            on_result=on_validation,
            selection=t.selection,
        )
    elif t.selection == "average":  # the mean of the late weights needs no split: all the data trains
        validation = Validation(None, every=t.eval_every or max(1, steps // 10), selection="average")
    started = time.perf_counter()
    done = train(
        model,
        lambda epoch: make_batches(spec, train_tokens, t.seed + epoch, packing=t.packing),
        steps=steps,
        lr=t.lr,
        weight_decay=t.weight_decay,
        warmup_fraction=t.warmup_fraction,
        device=t.device,
        bf16=t.bf16,
        grad_accumulation=t.grad_accumulation,
        checkpoint_dir=work / "checkpoint",
        checkpoint_every=t.checkpoint_every,
        on_step=on_step,
        lr_ratio=spec.lora.lr_ratio,
        validation=validation,
    )
    last = done.losses[-10:]
    best = next((e for e in done.evaluations if e.step == done.best_step), None)
    if done.averaged is not None:  # selection average: the mean of late passes, measured once at the end
        best = ValidationPass(step=len(done.losses), metrics=done.averaged)
    result = TrainedAdapter(
        adapter=str(work / "adapter"),
        steps=len(done.losses),
        planned_steps=steps,
        best_step=done.best_step or len(done.losses),
        stopped_early=done.stopped_early,
        averaged_steps=done.averaged_steps,
        best_validation=best,
        final_loss=sum(last) / len(last),
        seconds=round(time.perf_counter() - started, 1),
        trainable=trainable,
        total=total,
        world_size=world()[1],
    )
    if world()[0] == 0:  # under DDP only rank 0 writes
        if t.gradient_checkpointing:
            model.gradient_checkpointing_disable()
        save_adapter(model, work / "adapter", base_model_name_or_path=base_name(spec.base))
        write_side_files(
            work / "adapter",
            prepared.labels,
            spec.type == "causal-lm" and datasets.uses_chat_template(tokenizer, t.chat_template),
        )
        (work / "train.json").write_text(result.model_dump_json())
        shutil.rmtree(work / "checkpoint", ignore_errors=True)
    return result


def evaluate_adapter(
    spec: TaskSpec, prepared: PreparedData, base_path: Path, adapter: str, production: ProductionVersion | None
) -> Evaluation:
    """Base (no adapter), adapter unmerged and merged, and production (if any) on the held-out split; the gate."""
    torch.manual_seed(spec.training.seed)  # the same fresh head as in training, for the base row
    model, tokenizer = load_model(base_path, spec.type, prepared.labels)
    test_set = split_tokens(spec, prepared, "test", tokenizer)
    base = measure_tokens(spec, test_set, model)[1]
    load_adapter(model, adapter)
    unmerged_logits, unmerged = measure_tokens(spec, test_set, model)
    merge(model)
    merged_logits, merged = measure_tokens(spec, test_set, model)
    gap = relative_gap(merged_logits, unmerged_logits)
    dtype = next(model.parameters()).dtype
    tolerance = spec.gate.merge_tolerance or MERGE_TOLERANCE.get(dtype, MERGE_TOLERANCE[torch.float32])
    if gap > tolerance:
        raise MergeCheckError(
            f"merged and unmerged logits differ by {gap:.2e} (relative), above gate.merge_tolerance "
            f"{tolerance:.0e} for a {str(dtype).removeprefix('torch.')} base; the merge is not exact"
        )
    unmerge(model)
    production_metrics = None
    if production and production.adapter:
        load_adapter(model, production.adapter, adapter_name="production")
        set_active_adapter(model, "production")
        production_metrics = measure_tokens(spec, test_set, model)[1]
    elif production:
        production_metrics = production.metrics
    passed, reasons = decide(spec.gate, unmerged, base, production_metrics)
    return Evaluation(
        base=base,
        adapter=unmerged,
        merged=merged,
        production=production_metrics,
        merge_gap=gap,
        passed=passed,
        reasons=reasons,
    )


def merge_model(spec: TaskSpec, prepared: PreparedData, base_path: Path, adapter: str, out: Path) -> str:
    """W = W0 + s·B·A streamed shard by shard from the base's files into a plain model (no adapter at inference).

    A classifier's head (a saved module of the adapter) and its labels go into the merged model's config.
    """
    shutil.rmtree(out, ignore_errors=True)  # our own work folder: a leftover from a killed run is redone
    check_space([SpaceNeed(out.parent, base_bytes(base_path), "the merged model")])
    with disk_writes(out.parent, "the merged model"):  # merge_checkpoint removes its temporary folder on failure
        merge_checkpoint(base_path, adapter, out, config_updates=head_config(base_path, spec.type, prepared.labels))
    return str(out)


def head_config(base_path: Path, task_type: str, labels: list[str]) -> dict[str, object]:
    """config.json entries that make AutoModelFor<task> load the merged model with the task's head and labels."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
    )

    model_type = AutoConfig.from_pretrained(base_path).model_type
    if task_type == "classification":
        return {
            "architectures": [MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES[model_type]],
            "id2label": dict(enumerate(labels)),
            "label2id": {label: i for i, label in enumerate(labels)},
        }
    return {"architectures": [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type]]}
