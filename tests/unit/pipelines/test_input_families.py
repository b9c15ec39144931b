"""Bad input by family (issue 23): each family builds several members, so the next member is caught too.

Families: files that are not regular files (test_input_files.py has the kinds; here, through the task file and
data readers), YAML that keeps a key twice or nests without end, settings that are NaN, infinite or past a library's
bound, a gate fed NaN, spreadsheet CSVs that must read, Parquet files that are not, labels spelled several ways, a
test file that is the training file or mostly its rows, and max_length that leaves no room for text.
"""

import json
import math
import os
import re
from pathlib import Path
from typing import get_origin

import pytest
import yaml
from pydantic import BaseModel
from test_input_files import NOT_REGULAR

from lora_core.model_files import ModelConfig
from pipelines import data as datasets
from pipelines.errors import DataError, InputError, InputFileError, SpecError
from pipelines.evaluation import decide
from pipelines.held_out import check_not_training_file, overlap_warning
from pipelines.label_spellings import merge_spellings
from pipelines.max_length import check_max_length, load_tokenizer, special_tokens, truncation_warning
from pipelines.models import default_base_model
from pipelines.spec import GateSpec, TaskSpec
from pipelines.task_files import load_spec

GOOD = {
    "task": "sections",
    "type": "classification",
    "data": {"path": "data.jsonl"},
    "lora": {"r": 4, "alpha": 8, "target_modules": ["query", "value"]},
    "training": {"max_steps": 5, "device": "cpu"},
}


def task_file(tmp: Path, text: str) -> Path:
    (tmp / "task.yaml").write_text(text)
    return tmp / "task.yaml"


def with_value(dotted: str, value: object) -> dict:
    spec = json.loads(json.dumps(GOOD))
    *sections, name = dotted.split(".")
    where = spec
    for section in sections:
        where = where.setdefault(section, {})
    where[name] = value
    return spec


# --- files that are not regular files, through the task file and data readers ---------------------------------


@pytest.mark.parametrize("member, make, says", NOT_REGULAR, ids=[m[0] for m in NOT_REGULAR])
def test_a_task_path_that_is_not_a_regular_file_is_one_line(member, make, says, tmp_path):
    path = make(tmp_path)
    with pytest.raises(InputFileError, match="^" + re.escape(f"task file {path}: {says}; ")):
        load_spec(path)


@pytest.mark.parametrize("member, make, says", NOT_REGULAR, ids=[m[0] for m in NOT_REGULAR])
def test_a_data_path_that_is_not_a_regular_file_is_one_line(member, make, says, tmp_path):
    path = make(tmp_path)
    if path.suffix != ".jsonl":  # the format comes first: give each member a data file's name
        (tmp_path / "data.jsonl").symlink_to(path)
        path, says = tmp_path / "data.jsonl", {"missing": "a symlink to a missing file"}.get(member, says)
        if member in ("symlink-loop", "dangling-symlink", "missing", "under-a-file"):
            says = "a symlink to a missing file" if member != "symlink-loop" else "a symlink loop"
    with pytest.raises(InputFileError, match=rf"^data.path {path}: "):
        datasets.load_examples(str(path), what="data.path")


# --- YAML: a key given twice, nesting without end ---------------------------------------------------------------

DUPLICATES = [
    (
        "top-level-section",
        "task: a\ndata: {path: x.jsonl}\ntype: classification\ndata: {path: y.jsonl}\n",
        4,
        "data",
        2,
    ),
    ("inside-a-section", "task: a\ntraining:\n  lr: 0.1\n  max_steps: 3\n  lr: 0.2\n", 5, "lr", 3),
    ("flow-mapping-one-line", "task: a\nlora: {r: 4, r: 8}\n", 2, "r", 2),
    ("inside-a-list", "a:\n  - {x: 1, y: 2, x: 3}\n", 2, "x", 2),
    ("quoted-and-plain", "task: a\n'task': b\n", 2, "task", 1),
    ("numeric-keys", "rank_pattern:\n  1: 4\n  1: 8\n", 3, 1, 2),
]


@pytest.mark.parametrize("member, text, line, key, first", DUPLICATES, ids=[d[0] for d in DUPLICATES])
def test_a_key_given_twice_is_refused_naming_it_and_both_lines(member, text, line, key, first, tmp_path):
    path = task_file(tmp_path, text)
    with pytest.raises(SpecError) as refused:
        load_spec(path)
    assert str(refused.value) == f"{path}:{line}: key {key!r} appears twice (first on line {first}); keep one"


def test_a_merge_key_may_be_overridden_as_yaml_means(tmp_path):
    text = "defaults: &d {max_steps: 5, device: cpu}\n" + yaml.safe_dump(
        {k: v for k, v in GOOD.items() if k != "training"}
    )
    text += "training:\n  <<: *d\n  max_steps: 7\n"
    path = task_file(tmp_path, text.replace("defaults:", "x-defaults:", 1))
    with pytest.raises(SpecError, match="x-defaults: unknown field"):  # parsed: the merge was not a duplicate
        load_spec(path)


DEEP = [
    ("flow-lists-50000", "task: " + "[" * 50_000 + "]" * 50_000 + "\n"),
    ("flow-maps-50000", "task: " + "{a: " * 50_000 + "1" + "}" * 50_000 + "\n"),
    ("block-maps-200", "".join(" " * i + f"k{i}:\n" for i in range(200)) + " " * 200 + "v\n"),
    ("block-lists-100", "task:\n" + "".join(" " * (2 * i + 2) + "-\n" for i in range(100)) + " " * 202 + "x\n"),
]


@pytest.mark.parametrize("member, text", DEEP, ids=[d[0] for d in DEEP])
def test_nesting_past_the_limit_is_one_line_not_a_recursion_error(member, text, tmp_path):
    path = task_file(tmp_path, text)
    with pytest.raises(SpecError) as refused:
        load_spec(path)
    assert "nested deeper than 64 levels" in str(refused.value) and "\n" not in str(refused.value)


def test_nesting_within_the_limit_still_parses(tmp_path):
    deep = json.dumps(GOOD)[:-1] + ', "x": ' + "[" * 60 + "]" * 60 + "}"
    with pytest.raises(SpecError, match="x: unknown field"):
        load_spec(task_file(tmp_path, deep))


def test_a_task_file_with_a_byte_order_mark_reads(tmp_path):
    (tmp_path / "task.yaml").write_bytes(b"\xef\xbb\xbf" + yaml.safe_dump(GOOD).encode())
    assert load_spec(tmp_path / "task.yaml").task == "sections"


# --- numbers in settings: NaN, infinity, and integers past a library's bound -------------------------------------


def float_fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every float setting of the task file, found by walking the models: a new float field joins the family."""
    found = []
    for name, field in model.model_fields.items():
        if get_origin(field.annotation) in (dict, tuple):  # maps and ranges: their own test below
            continue
        kinds = getattr(field.annotation, "__args__", (field.annotation,))
        nested = [k for k in kinds if isinstance(k, type) and issubclass(k, BaseModel)]
        if nested:
            found += float_fields(nested[0], f"{prefix}{name}.")
        elif float in kinds:
            found.append(prefix + name)
    return found


FLOATS = float_fields(TaskSpec)


def test_the_walk_finds_the_settings_the_issue_names():
    assert {"gate.min_gain_over_base", "training.lr", "training.epochs", "lora.alpha", "lora.dropout"} <= set(FLOATS)
    assert len(FLOATS) >= 12


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("field", FLOATS)
def test_no_float_setting_takes_nan_or_infinity(field, value, tmp_path):
    path = task_file(tmp_path, yaml.safe_dump(with_value(field, value)))
    with pytest.raises(SpecError) as refused:
        load_spec(path)
    assert f": {field}: " in str(refused.value) and "finite" in str(refused.value), refused.value


@pytest.mark.parametrize(
    "field, value",
    [
        ("lora.alpha_pattern", {"query": math.inf}),
        ("training.search", {"space": {"lr": [math.nan, 0.1]}}),
    ],
    ids=["alpha-pattern", "search-space"],
)
def test_floats_inside_maps_and_ranges_take_no_nan_or_infinity(field, value, tmp_path):
    with pytest.raises(SpecError, match="finite"):
        load_spec(task_file(tmp_path, yaml.safe_dump(with_value(field, value))))


BOUNDS = [
    ("training.seed", 2**70, "less than 2147483648"),
    ("training.seed", 2**32, "less than 2147483648"),
    ("training.seed", -1, "greater than or equal to 0"),
    ("training.max_length", 2**40, "less than or equal to"),
    ("training.batch_size", 10**9, "less than or equal to"),
    ("training.grad_accumulation", 10**9, "less than or equal to"),
    ("training.max_steps", 10**15, "less than or equal to"),
    ("training.checkpoint_every", 10**15, "less than or equal to"),
    ("training.nproc", 10**6, "less than or equal to"),
]


@pytest.mark.parametrize("field, value, says", BOUNDS, ids=[f"{b[0]}={b[1]}" for b in BOUNDS])
def test_integers_past_a_bound_are_refused_before_any_work(field, value, says, tmp_path):
    with pytest.raises(SpecError, match=rf": {field}: .*{says}"):
        load_spec(task_file(tmp_path, yaml.safe_dump(with_value(field, value))))


def test_epochs_past_the_ceiling_are_refused(tmp_path):
    with pytest.raises(SpecError, match=r"training.epochs: .*less than or equal to 10000"):
        load_spec(task_file(tmp_path, yaml.safe_dump(with_value("training.epochs", 1e300))))


# --- the gate fed NaN fails, whichever side the NaN is on ------------------------------------------------------

NAN_GATES = [
    ("adapter", {"accuracy": math.nan}, {"accuracy": 0.5}, None),
    ("base", {"accuracy": 0.9}, {"accuracy": math.nan}, None),
    ("production", {"accuracy": 0.9}, {"accuracy": 0.5}, {"accuracy": math.nan}),
    ("inf-minus-inf", {"loss": math.inf}, {"loss": math.inf}, None),
]


@pytest.mark.parametrize("member, adapter, base, production", NAN_GATES, ids=[g[0] for g in NAN_GATES])
def test_a_nan_metric_fails_the_gate(member, adapter, base, production):
    gate = GateSpec(metric=next(iter(adapter)), min_gain_over_base=-1.0)  # a gate any real number passes
    passed, reasons = decide(gate, adapter, base, production)
    assert not passed and len(reasons) == 1, reasons


def test_a_nan_threshold_cannot_be_built():
    with pytest.raises(ValueError, match="finite"):
        GateSpec(min_gain_over_base=math.nan)


# --- spreadsheet CSVs read like the JSONL they hold -------------------------------------------------------------

ROWS = [("first, with comma", "a"), ("second; with semicolon", "b"), ("third", "a")]


def csv_text(delimiter: str, header: str = "text{d}label") -> str:
    def cell(value: str) -> str:
        return f'"{value}"' if any(c in value for c in ",;\t") else value

    body = [header.format(d=delimiter)] + [f"{cell(t)}{delimiter}{label}" for t, label in ROWS]
    return "\n".join(body) + "\n"


SPREADSHEETS = [
    ("bom", b"\xef\xbb\xbf" + csv_text(",").encode()),
    ("crlf", csv_text(",").replace("\n", "\r\n").encode()),
    ("bom-crlf", b"\xef\xbb\xbf" + csv_text(",").replace("\n", "\r\n").encode()),
    ("excel-semicolon", b"\xef\xbb\xbf" + csv_text(";").replace("\n", "\r\n").encode()),
    ("tab", csv_text("\t").encode()),
    ("header-spaces", csv_text(",", "text {d} label").encode()),
    ("trailing-empty-rows", (csv_text(";") + ";\n;\n").encode()),
]


@pytest.mark.parametrize("member, raw", SPREADSHEETS, ids=[s[0] for s in SPREADSHEETS])
def test_a_csv_saved_by_a_spreadsheet_reads_like_plain_rows(member, raw, tmp_path):
    (tmp_path / "d.csv").write_bytes(raw)
    assert datasets.load_examples(str(tmp_path / "d.csv")) == [datasets.Example(t, label) for t, label in ROWS]


def test_a_csv_cell_longer_than_the_csv_modules_limit_reads(tmp_path):
    """A whole document in one cell: past the csv module's default 131,072 characters, which it refuses."""
    document = "word " * 40_000
    (tmp_path / "d.csv").write_text(f'text,label\n"{document}",a\nshort,b\n')
    assert datasets.load_examples(str(tmp_path / "d.csv")) == [
        datasets.Example(document, "a"),
        datasets.Example("short", "b"),
    ]


def test_a_jsonl_file_with_a_byte_order_mark_reads(tmp_path):
    (tmp_path / "d.jsonl").write_bytes(b"\xef\xbb\xbf" + b'{"text": "a", "label": "x"}\n')
    assert datasets.load_examples(str(tmp_path / "d.jsonl")) == [datasets.Example("a", "x")]


def parquet_bytes() -> bytes:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([{"text": t, "label": label} for t, label in ROWS]), sink)
    return sink.getvalue()


BROKEN_PARQUET = [
    ("truncated", lambda: parquet_bytes()[:-40]),
    ("footer-only", lambda: parquet_bytes()[-8:]),
    ("random-bytes", lambda: os.urandom(512)),
    ("jsonl-named-parquet", lambda: b'{"text": "a", "label": "x"}\n'),
    ("empty", lambda: b""),
]


@pytest.mark.parametrize("member, make", BROKEN_PARQUET, ids=[p[0] for p in BROKEN_PARQUET])
def test_a_corrupted_parquet_file_is_one_line(member, make, tmp_path):
    (tmp_path / "d.parquet").write_bytes(make())
    with pytest.raises(DataError) as refused:
        datasets.load_examples(str(tmp_path / "d.parquet"))
    assert "not a readable Parquet file" in str(refused.value) and "\n" not in str(refused.value)


def test_a_jsonl_line_nested_without_end_is_one_line(tmp_path):
    (tmp_path / "d.jsonl").write_text("[" * 100_000 + "\n")
    with pytest.raises(DataError, match=r"d.jsonl:1: JSON nested too deeply"):
        datasets.load_examples(str(tmp_path / "d.jsonl"))


@pytest.mark.parametrize(
    "value", [{"a": 1}, [1, 2], None, math.nan, "  "], ids=["object", "list", "null", "nan", "blank"]
)
def test_a_label_that_is_not_a_string_or_number_names_its_row(value, tmp_path):
    rows = [{"text": "a", "label": "x"}, {"text": "b", "label": value}]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"rows 2 lack a non-empty"):
        datasets.load_examples(str(tmp_path / "d.jsonl"))


# --- labels spelled several ways: spaces and numbers merged with a word, case refused --------------------------


def examples(*labels: str) -> list[datasets.Example]:
    return [datasets.Example(f"text {i}", label) for i, label in enumerate(labels)]


MERGED = [
    ("int-and-float", ("1", "1", "1.0", "0", "0"), {"1.0": "1"}),
    ("leading-zero", ("1", "01", "1", "2"), {"01": "1"}),
    ("exponent", ("100", "1e2", "100", "5"), {"1e2": "100"}),
    ("leading-space", ("yes", " yes", "yes", "no"), {" yes": "yes"}),
    ("trailing-space-and-tab", ("spam", "spam ", "spam\t", "ham", "spam"), {"spam ": "spam", "spam\t": "spam"}),
    ("float-wins-by-count", ("1.0", "1.0", "1", "0.0"), {"1": "1.0"}),
]


@pytest.mark.parametrize("member, labels, moved", MERGED, ids=[m[0] for m in MERGED])
def test_labels_of_one_meaning_are_merged_with_a_warning_naming_them(member, labels, moved):
    spellings = merge_spellings(examples(*labels), "d.csv")
    merged = spellings.apply(examples(*labels))
    assert {e.label for e in merged} == {spellings.spelling[label] for label in labels}
    assert all(spellings.spelling[old] == new for old, new in moved.items())
    assert spellings.warning is not None and all(repr(old) in spellings.warning for old in moved)


CASE_ONLY = [
    ("true-True", ("True", "true", "False")),
    ("yes-YES", ("yes", "YES", "no")),
    ("spam-Spam", ("spam", "Spam", "ham")),
    ("after-spaces", ("Yes ", "yes", "no")),
]


@pytest.mark.parametrize("member, labels", CASE_ONLY, ids=[c[0] for c in CASE_ONLY])
def test_labels_that_differ_only_in_case_are_refused(member, labels):
    with pytest.raises(DataError, match=r"differ only in case; spell each class one way"):
        merge_spellings(examples(*labels), "d.csv")


def test_labels_spelled_one_way_each_are_left_alone():
    spellings = merge_spellings(examples("1", "2", " a", "b", "nan", "inf"), "d.csv")
    assert spellings.warning is None and all(k == v for k, v in spellings.spelling.items())


# --- a test file that is the training file, or mostly its rows -------------------------------------------------

SAME_FILE = [
    ("same-string", lambda t: str(t / "train.jsonl")),
    ("symlink", lambda t: (t / "link.jsonl").symlink_to(t / "train.jsonl") or str(t / "link.jsonl")),
    ("hard-link", lambda t: os.link(t / "train.jsonl", t / "hard.jsonl") or str(t / "hard.jsonl")),
    ("dot-segments", lambda t: str(t / "." / "sub" / ".." / "train.jsonl")),
    ("s3-same-uri", None),
]


@pytest.mark.parametrize("member, make", SAME_FILE, ids=[s[0] for s in SAME_FILE])
def test_a_test_file_that_is_the_training_file_is_refused(member, make, tmp_path):
    (tmp_path / "train.jsonl").write_text('{"text": "a", "label": "x"}\n')
    (tmp_path / "sub").mkdir()
    train, test = (
        ("s3://b/d.jsonl", "s3://b/d.jsonl") if make is None else (str(tmp_path / "train.jsonl"), make(tmp_path))
    )
    with pytest.raises(DataError, match=r"is data.path: the adapter would be scored on its own training rows"):
        check_not_training_file(train, test)


def test_another_file_with_other_rows_is_accepted(tmp_path):
    (tmp_path / "train.jsonl").write_text("a\n")
    (tmp_path / "test.jsonl").write_text("a\n")  # same bytes, another file: the overlap check measures rows
    check_not_training_file(str(tmp_path / "train.jsonl"), str(tmp_path / "test.jsonl"))


@pytest.mark.parametrize("shared, limit, refused", [(5, 0.1, True), (2, 0.1, False), (2, 0.0, True), (10, 1.0, False)])
def test_test_rows_also_in_training_are_measured_against_the_limit(shared, limit, refused):
    train = examples(*["x"] * 40)
    test = [datasets.Example(f"text  {i}", "x") for i in range(shared)]  # spaces differ: still the same text
    test += [datasets.Example(f"held out {i}", "x") for i in range(20 - shared)]
    if refused:
        with pytest.raises(DataError, match=rf"{shared / 20:.1%} of data.test_path's rows \({shared} of 20\)"):
            overlap_warning(train, test, limit, "d.jsonl")
    else:
        assert f"({shared} of 20)" in str(overlap_warning(train, test, limit, "d.jsonl"))


def test_no_shared_rows_no_warning():
    assert overlap_warning(examples("x", "y"), [datasets.Example("new", "x")], 0.1, "d.jsonl") is None


# --- max_length that leaves no room for text --------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm():
    return load_tokenizer(default_base_model())


def spec_with(tmp: Path, **training) -> TaskSpec:
    spec = with_value("training.max_length", training.pop("max_length"))
    spec["training"].update(training)
    return load_spec(task_file(tmp, yaml.safe_dump(spec)))


@pytest.mark.parametrize("length", [1, 2])
def test_a_max_length_the_special_tokens_fill_is_refused(length, tmp_path, minilm):
    assert special_tokens(spec_with(tmp_path, max_length=8), minilm) == 2  # [CLS] and [SEP]
    with pytest.raises(SpecError, match=rf"training.max_length {length} leaves no token of text: .* at least 3"):
        check_max_length(spec_with(tmp_path, max_length=length), default_base_model(), ModelConfig())


def test_the_smallest_max_length_with_room_for_text_passes(tmp_path):
    check_max_length(spec_with(tmp_path, max_length=3), default_base_model(), ModelConfig(max_position_embeddings=512))


@pytest.mark.parametrize("config", [{"max_position_embeddings": 512}, {"n_positions": 512}])
def test_a_max_length_past_the_base_positions_is_refused(config, tmp_path):
    with pytest.raises(SpecError, match=r"max_length 513 is more than the 512 positions"):
        check_max_length(spec_with(tmp_path, max_length=513), default_base_model(), ModelConfig.model_validate(config))


@pytest.mark.parametrize("length, warned", [(4, True), (8, True), (64, False)])
def test_a_warning_when_most_texts_are_cut_to_less_than_half(length, warned, tmp_path, minilm):
    texts = [datasets.Example("one two three four five six seven eight nine ten " * 2, "x")] * 10
    warning = truncation_warning(spec_with(tmp_path, max_length=length), minilm, texts)
    assert (warning is not None) == warned
    if warned:
        assert f"training.max_length {length} cuts 100% of the training texts" in str(warning)


def test_every_family_error_is_bad_input():
    assert all(issubclass(e, InputError) for e in (DataError, SpecError, InputFileError))
