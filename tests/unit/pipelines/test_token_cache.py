"""Splits tokenized once and cached beside the data, and batches padded to their own longest example."""

import dataclasses

import pytest
import torch
from tasks import DATA, data_slice, tiny_base, write_task
from transformers import AutoTokenizer

from pipelines import data as datasets
from pipelines import steps
from pipelines.task_files import load_spec
from pipelines.token_cache import cache_path, tokenized_split, tokenizer_identity, write_tokens


@pytest.fixture(scope="module")
def bert_base(tmp_path_factory):
    return tiny_base(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="module")
def examples():
    return datasets.load_examples(str(DATA))


@pytest.mark.parametrize("side", ["right", "left"])
def test_batches_are_padded_to_their_own_longest_example_as_the_tokenizer_pads(bert_base, examples, side):
    tokenizer = AutoTokenizer.from_pretrained(bert_base)
    tokenizer.padding_side = side
    labels = datasets.label_names(examples)
    tokens = datasets.tokenize(examples, tokenizer, 64, labels)
    order = datasets.batch_order(tokens.lengths, 16, shuffle_seed=3)
    batches = list(datasets.token_batches(tokens, 16, shuffle_seed=3))
    assert len(batches) == len(order) == -(-len(examples) // 16)
    for members, batch in zip(order, batches, strict=True):
        texts = [examples[i].text for i in members]
        expected = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
        assert set(batch) == {*expected, "labels"}
        for key, value in expected.items():
            assert torch.equal(batch[key], value), key
        assert batch["labels"].tolist() == [labels.index(examples[i].label) for i in members]
        assert batch["input_ids"].shape[1] == max(tokens.lengths[i] for i in members)
    # grouped by token length: little padding, where a random order of the same batches pads far more
    padded = sum(b["attention_mask"].numel() - int(b["attention_mask"].sum()) for b in batches)
    shuffled = torch.randperm(len(examples), generator=torch.Generator().manual_seed(3)).tolist()
    at_random = sum(
        max(tokens.lengths[i] for i in chunk) * len(chunk) - sum(tokens.lengths[i] for i in chunk)
        for chunk in (shuffled[s : s + 16] for s in range(0, len(shuffled), 16))
    )
    assert padded < 0.1 * at_random
    assert max(b["input_ids"].shape[1] for b in batches) < 64  # no batch is padded out to max_length


def test_a_split_is_read_from_its_cache_on_second_use(bert_base, tmp_path):
    spec = load_spec(write_task(tmp_path, "cache", bert_base, data_slice(tmp_path, 120)))
    prepared = steps.prepare_data(spec, tmp_path / "work")
    tokenizer = AutoTokenizer.from_pretrained(bert_base)
    first = steps.split_tokens(spec, prepared, "train", tokenizer)
    path = cache_path(prepared, "train", tokenizer, spec.training.max_length, chat=False)
    assert path.exists() and path.parent == tmp_path / "work" / "data" / prepared.digest / "tokens"
    assert len(first) == prepared.train and max(first.lengths) <= spec.training.max_length
    # what the second use returns is what the file holds: altered on disk, the alteration comes back
    write_tokens(dataclasses.replace(first, input_ids=first.input_ids + 1), path)
    second = steps.split_tokens(spec, prepared, "train", tokenizer)
    assert torch.equal(second.input_ids, first.input_ids + 1) and torch.equal(second.offsets, first.offsets)
    assert torch.equal(second.labels, first.labels) and torch.equal(second.token_type_ids, first.token_type_ids)
    assert (second.pad_id, second.padding_side, second.causal) == (first.pad_id, first.padding_side, False)


def test_other_data_tokenizer_max_length_or_template_is_tokenized_afresh(bert_base, tmp_path):
    spec = load_spec(write_task(tmp_path, "cache", bert_base, data_slice(tmp_path, 120)))
    prepared = steps.prepare_data(spec, tmp_path / "work")
    tokenizer = AutoTokenizer.from_pretrained(bert_base)
    tokens = tokenized_split(prepared, "train", tokenizer, 32)
    again = AutoTokenizer.from_pretrained(bert_base)
    assert tokenizer_identity(again) == tokenizer_identity(tokenizer)  # a call's truncation state is no identity
    assert cache_path(prepared, "train", again, 32, False) == cache_path(prepared, "train", tokenizer, 32, False)
    short = tokenized_split(prepared, "train", tokenizer, 8)
    assert max(short.lengths) == 8 < max(tokens.lengths)
    (tmp_path / "fewer").mkdir()
    fewer = data_slice(tmp_path / "fewer", 60)
    other_data = steps.prepare_data(load_spec(write_task(tmp_path, "cache", bert_base, fewer)), tmp_path / "work")
    assert other_data.digest != prepared.digest and len(tokenized_split(other_data, "train", tokenizer, 32)) < len(
        tokens
    )
    again.add_tokens(["chessengine"])
    assert tokenizer_identity(again) != tokenizer_identity(tokenizer)
    paths = {
        cache_path(prepared, "train", tokenizer, 32, False),
        cache_path(prepared, "train", tokenizer, 8, False),
        cache_path(prepared, "train", tokenizer, 32, True),
        cache_path(prepared, "test", tokenizer, 32, False),
        cache_path(prepared, "train", again, 32, False),
        cache_path(other_data, "train", tokenizer, 32, False),
    }
    assert len(paths) == 6


def test_training_from_the_cache_matches_training_that_tokenized(bert_base, tmp_path):
    path = write_task(
        tmp_path,
        "same",
        bert_base,
        data_slice(tmp_path, 160),
        data__validation_fraction=0.2,
        training__max_steps=12,
        training__eval_every=4,
    )
    spec = load_spec(path)
    prepared = steps.prepare_data(spec, tmp_path / "work")
    runs = []
    for name in ("tokenized", "cached"):
        losses, passes = [], []
        result = steps.fit_adapter(
            spec,
            prepared,
            bert_base,
            tmp_path / name,
            on_step=lambda s, loss, lr: losses.append(loss),  # noqa: B023 (called within this iteration)
            on_validation=lambda s, m: passes.append(m["loss"]),  # noqa: B023
        )
        runs.append((losses, passes, result.best_step))
        tokens = sorted(
            p.name.split("-")[0] for p in (tmp_path / "work" / "data" / prepared.digest / "tokens").iterdir()
        )
        assert tokens == ["train", "validation"]
    (losses, passes, best), (cached_losses, cached_passes, cached_best) = runs
    assert len(losses) == 12 and len(passes) == 3
    assert cached_losses == pytest.approx(losses, abs=1e-6) and cached_passes == pytest.approx(passes, abs=1e-6)
    assert cached_best == best


def test_causal_lm_tokens_batch_like_the_pairs_they_were_made_of(tmp_path):
    base = tiny_base(tmp_path / "gpt2", "gpt2")
    spec = load_spec(write_task(tmp_path, "lm", base, data_slice(tmp_path, 60, causal=True), causal=True))
    prepared = steps.prepare_data(spec, tmp_path / "work")
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokens = steps.split_tokens(spec, prepared, "train", tokenizer)
    again = steps.split_tokens(spec, prepared, "train", tokenizer)
    examples = steps.read_split(prepared, "train")
    pairs = [datasets.encode_pair(tokenizer, e.text, e.label, 32, chat=False) for e in examples]
    assert [again.pair(i) for i in range(len(again))] == pairs
    batch = next(iter(datasets.token_batches(tokens, 8)))  # evaluation order: shortest first
    shortest = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]))[:8]
    width = max(len(pairs[i][0]) for i in shortest)
    assert batch["input_ids"].shape == (8, width)
    for row, i in enumerate(shortest):
        ids, labels = pairs[i]
        assert batch["input_ids"][row, : len(ids)].tolist() == ids
        assert batch["labels"][row].tolist() == labels + [-100] * (width - len(ids))
        assert batch["attention_mask"][row].tolist() == [1] * len(ids) + [0] * (width - len(ids))
