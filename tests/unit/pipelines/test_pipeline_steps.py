"""Task spec, data validation, resumable training, metrics and the gate: plain functions, no Prefect."""

import json
import re

import pytest
import torch
from tasks import DATA, data_slice, tiny_base, write_task

from pipelines import data as datasets
from pipelines import steps
from pipelines.errors import MergeCheckError, SpecError
from pipelines.evaluation import classification_metrics, decide
from pipelines.spec import GateSpec
from pipelines.task_files import load_spec


@pytest.fixture(scope="module")
def bert_base(tmp_path_factory):
    return tiny_base(tmp_path_factory.mktemp("bert"))


@pytest.mark.parametrize(
    "text, message",
    [
        ("task: [unclosed", "not valid YAML"),
        ("- a list", "a task file is a YAML mapping"),
        (
            "task: Bad_Name\ntype: classification\ndata: {path: x.jsonl}\nlora: {target_modules: [query]}\ntraining: {max_steps: 1}",
            "task: task name 'Bad_Name' is not a slug",
        ),
        ("task: t\ntype: classification\nlora: {target_modules: [query]}", "data: required field is missing"),
        (
            "task: t\ntype: classification\ndata: {path: x.jsonl}\nlora: {target_modules: [query], rank: 4}\ntraining: {max_steps: 1}",
            "lora.rank: unknown field",
        ),
        (
            "task: t\ntype: classification\ndata: {path: x.jsonl}\nlora: {target_modules: [query]}\ntraining: {max_steps: 1, epochs: 2}",
            "training: give one of training.max_steps or training.epochs, not both",
        ),
        (
            "task: t\ntype: classification\ndata: {path: x.jsonl}\nlora: {target_modules: [query], r: 0}\ntraining: {max_steps: 1}",
            "lora.r: r=0: the rank must be a positive integer",
        ),
        (
            "task: t\ntype: causal-lm\ndata: {path: x.jsonl}\ngate: {metric: accuracy}",
            "gate.metric 'accuracy' does not apply to causal-lm",
        ),
        (
            "task: t\ntype: classification\ndata: {path: x.jsonl}\ntraining: {best_metric: perplexity}",
            "training.best_metric 'perplexity' does not apply to classification; use one of loss, accuracy, macro_f1",
        ),
        (
            "task: t\ntype: classification\ndata: {path: x.jsonl}\ntraining: {packing: true}",
            "training.packing applies to causal-lm tasks only",
        ),
        (
            "task: t\ntype: classification\ndata: {path: x.jsonl, validation_fraction: 0}\ntraining: {patience: 2}",
            "training.patience, and eval_every with selection best or smoothed, need a validation split",
        ),
        (
            "task: t\ntype: classification\ndata: {path: x.jsonl, validation_fraction: 1}",
            "data.validation_fraction: Input should be less than 1",
        ),
        (
            "task: t\ntype: classification\ndata: {path: x.jsonl}\nlora: {lr_ratio: 0}",
            "lora.lr_ratio: Input should be greater than 0",
        ),
        (
            "task: t\ntype: classification\ndata: {path: x.jsonl}\ntraining: {eval_every: 0}",
            "training.eval_every: Input should be greater than 0",
        ),
        (
            "task: t\ntype: classification\ndata: {path: x.jsonl}\ntraining: {patience: -1}",
            "training.patience: Input should be greater than 0",
        ),
    ],
)
def test_bad_task_files_name_the_field_and_the_fix(tmp_path, text, message):
    path = tmp_path / "task.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as error:
        load_spec(path)
    assert re.match(re.escape(str(path)) + r"(:\d+)?: ", str(error.value)) and message in str(
        error.value
    )  # YAML: :LINE
    assert "\n" not in str(error.value)


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize(
    "rows, message",
    [
        ([], "no examples; the file is empty"),
        (
            [{"text": "a", "label": "x"}, {"text": "b"}, {"label": "y"}, {"text": "", "label": "y"}],
            "rows 2, 3, 4 lack a non-empty 'text' or 'label'",
        ),
    ],
)
def test_bad_rows_are_named(tmp_path, rows, message):
    with pytest.raises(datasets.DataError, match=message):
        datasets.load_examples(write_rows(tmp_path / "d.jsonl", rows))


def test_non_utf8_single_class_and_unseen_test_label_are_refused(tmp_path):
    (tmp_path / "latin1.jsonl").write_bytes(
        '{"text": "ok", "label": "a"}\n{"text": "caf\xe9", "label": "b"}\n'.encode("latin-1")
    )
    with pytest.raises(datasets.DataError, match=r"latin1.jsonl:2: not UTF-8"):
        datasets.load_examples(str(tmp_path / "latin1.jsonl"))
    one = [datasets.Example("a", "x"), datasets.Example("b", "x")]
    with pytest.raises(datasets.DataError, match="single class"):
        datasets.check_classes(one, one, "d")
    with pytest.raises(datasets.DataError, match="test row 2 \\('z'\\): label never seen in training"):
        datasets.check_classes(
            one + [datasets.Example("c", "y")], [datasets.Example("d", "x"), datasets.Example("e", "z")], "d"
        )


def test_csv_and_parquet_read_like_jsonl(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {"text": "first, with comma", "label": "a"},
        {"text": "second", "label": "b"},
        {"text": "second", "label": "b"},
    ]
    jsonl = datasets.load_examples(write_rows(tmp_path / "d.jsonl", rows))
    (tmp_path / "d.csv").write_text('text,label\n"first, with comma",a\nsecond,b\nsecond,b\n')
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    assert len(jsonl) == 2  # the duplicate is dropped
    assert (
        datasets.load_examples(str(tmp_path / "d.csv")) == jsonl == datasets.load_examples(str(tmp_path / "d.parquet"))
    )


def test_split_and_fingerprint_are_deterministic():
    examples = [datasets.Example(f"text {i}", str(i % 3)) for i in range(200)]
    train, test = datasets.split(examples)
    assert datasets.split(list(reversed(examples)))[1] == list(reversed(test))
    assert 25 < len(test) < 60
    assert datasets.digest_examples(train, test) == datasets.digest_examples(*datasets.split(examples))
    assert datasets.digest_examples(train, test[1:]) != datasets.digest_examples(train, test)


def test_causal_lm_batches_count_the_completion_only(bert_base):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(bert_base)
    batch = next(
        datasets.lm_batches(
            [datasets.Example("a chess game .", "games"), datasets.Example("x", "sound")], tokenizer, 2, 32
        )
    )
    prompt = tokenizer("a chess game .", add_special_tokens=False)["input_ids"]
    labels = batch["labels"][1]  # evaluation batches run shortest first
    assert (labels[: len(prompt)] == -100).all()
    assert labels[len(prompt) :].tolist()[:2] == tokenizer(" games", add_special_tokens=False)["input_ids"] + [
        tokenizer.sep_token_id
    ]
    assert (batch["labels"][0][batch["attention_mask"][0] == 0] == -100).all() and batch["attention_mask"][0, -1] == 0


def test_long_prompts_lose_their_start_so_the_completion_always_fits(bert_base):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(bert_base)
    long = " ".join(f"word{i}" for i in range(100))
    batch = next(datasets.lm_batches([datasets.Example(long, "games")], tokenizer, 1, 16))
    completion = tokenizer(" games", add_special_tokens=False)["input_ids"] + [tokenizer.sep_token_id]
    assert batch["input_ids"].shape == (1, 16)
    assert (
        batch["labels"][0, -len(completion) :].tolist()
        == completion
        == batch["input_ids"][0, -len(completion) :].tolist()
    )
    prompt = tokenizer(long, add_special_tokens=False)["input_ids"]
    assert batch["input_ids"][0, : 16 - len(completion)].tolist() == prompt[-(16 - len(completion)) :]


def test_batches_grouped_by_length_cover_every_example_once_with_less_padding():
    rows = [json.loads(line) for line in DATA.read_text().splitlines()]
    lengths = [len(r["text"]) for r in rows]
    grouped = datasets.batch_order(lengths, 16, shuffle_seed=3)
    assert sorted(i for b in grouped for i in b) == list(range(len(rows)))
    assert grouped == datasets.batch_order(lengths, 16, shuffle_seed=3) != datasets.batch_order(lengths, 16, 4)
    plain = torch.randperm(len(rows), generator=torch.Generator().manual_seed(3)).tolist()
    padding = lambda batches: sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)  # noqa: E731
    assert padding(grouped) < 0.2 * padding([plain[i : i + 16] for i in range(0, len(plain), 16)])
    assert [len(b) for b in datasets.batch_order(lengths, 16, None)].count(16) == len(rows) // 16


def test_macro_f1_and_gate():
    logits = torch.eye(3)[[0, 0, 1, 2]]  # predicts 0, 0, 1, 2
    metrics = classification_metrics(logits, torch.tensor([0, 1, 1, 2]))
    assert metrics["accuracy"] == 0.75 and metrics["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    gate = GateSpec(metric="accuracy", min_gain_over_base=0.1)
    assert decide(gate, {"accuracy": 0.8}, {"accuracy": 0.5}, {"accuracy": 0.7}) == (True, [])
    passed, reasons = decide(gate, {"accuracy": 0.8}, {"accuracy": 0.75}, {"accuracy": 0.9})
    assert not passed and "below the required" in reasons[0] and "worse than production" in reasons[1]
    lm = GateSpec(metric="perplexity")
    assert decide(lm, {"perplexity": 10.0}, {"perplexity": 50.0}, {"perplexity": 12.0})[0]
    assert not decide(lm, {"perplexity": 10.0}, {"perplexity": 50.0}, {"perplexity": 9.0})[0]


@pytest.mark.parametrize("targets", [["query", "value"], ["query", "value", "word_embeddings"]])
def test_evaluate_reports_base_adapter_merged_and_a_tight_merge_gap(tmp_path, bert_base, targets):
    data = data_slice(tmp_path, 240)
    spec = load_spec(
        write_task(tmp_path, "evaluate", bert_base, data, training__max_steps=40, lora__target_modules=targets)
    )
    prepared = steps.prepare_data(spec, tmp_path / "work")
    trained = steps.fit_adapter(spec, prepared, bert_base, tmp_path / "run")
    result = steps.evaluate_adapter(spec, prepared, bert_base, trained.adapter, None)
    assert result.merged["accuracy"] == pytest.approx(result.adapter["accuracy"])
    assert result.merge_gap < 1e-5
    assert set(result.base) == {"loss", "accuracy", "macro_f1"} and result.production is None


def test_merged_logits_off_by_more_than_the_tolerance_fail_the_evaluation(tmp_path, bert_base):
    spec = load_spec(
        write_task(
            tmp_path,
            "strict",
            bert_base,
            data_slice(tmp_path, 120),
            training__max_steps=5,
            gate={"metric": "accuracy", "merge_tolerance": 1e-12},
        )
    )
    prepared = steps.prepare_data(spec, tmp_path / "work")
    trained = steps.fit_adapter(spec, prepared, bert_base, tmp_path / "run")
    with pytest.raises(MergeCheckError, match="above gate.merge_tolerance 1e-12"):
        steps.evaluate_adapter(spec, prepared, bert_base, trained.adapter, None)
