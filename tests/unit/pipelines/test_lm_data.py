"""Causal-LM batches checked by hand: the loss counts completion tokens only, packed rows keep attention within each
example, and prompts go through the tokenizer's chat template when it has one."""

from pathlib import Path

import pytest
import torch
from tasks import tiny_base
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipelines.data import Example, encode_pair, lm_batches, uses_chat_template

CHAT = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} [SEP] {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    folder = tiny_base(tmp_path_factory.mktemp("gpt2"), "gpt2")
    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_the_loss_counts_the_completion_and_its_eos_only(gpt2):
    _, tokenizer = gpt2
    batch = next(lm_batches([Example("a chess engine . section :", "games")], tokenizer, 1, 32))
    prompt, completion = ids(tokenizer, "a chess engine . section :"), ids(tokenizer, " games")
    eos = tokenizer.sep_token_id  # MiniLM's WordPiece tokenizer: [SEP] ends a sequence
    assert batch["input_ids"][0].tolist() == prompt + completion + [eos]
    assert batch["labels"][0].tolist() == [-100] * len(prompt) + completion + [eos]
    assert batch["attention_mask"][0].tolist() == [1] * (len(prompt) + len(completion) + 1)


def test_a_long_prompt_loses_its_start_never_the_completion(gpt2):
    _, tokenizer = gpt2
    long = " ".join(["word"] * 40) + " end :"
    input_ids, labels = encode_pair(tokenizer, long, "games", 12, chat=False)
    assert len(input_ids) == 12 and input_ids[-2:] == ids(tokenizer, " games") + [tokenizer.sep_token_id]
    assert tokenizer.decode(input_ids[:10]).endswith("end :")  # the end of the prompt is kept
    assert labels[:10] == [-100] * 10


def test_packed_rows_keep_attention_within_each_example(gpt2):
    model, tokenizer = gpt2
    examples = [
        Example("a chess engine :", "games"),
        Example("an image viewer for the desktop :", "graphics"),
        Example("a synthesizer :", "sound"),
    ]
    rows = list(lm_batches(examples, tokenizer, 8, 64, packing=True))
    assert len(rows) == 1 and set(rows[0]) == {"input_ids", "position_ids", "labels"}  # no 2-D mask: block-diagonal
    pairs = [encode_pair(tokenizer, e.text, e.label, 64, chat=False) for e in examples]
    # the same order as unpacked batches (by token length, no seed): concatenated, positions restarting at each example
    order = sorted(range(3), key=lambda i: len(pairs[i][0]))
    assert rows[0]["input_ids"][0].tolist() == [t for i in order for t in pairs[i][0]]
    assert rows[0]["labels"][0].tolist() == [t for i in order for t in pairs[i][1]]
    assert rows[0]["position_ids"][0].tolist() == [p for i in order for p in range(len(pairs[i][0]))]
    with torch.no_grad():
        packed = model(input_ids=rows[0]["input_ids"], position_ids=rows[0]["position_ids"], use_cache=False).logits[0]
        start = 0
        for i in order:
            alone = model(input_ids=torch.tensor([pairs[i][0]]), use_cache=False).logits[0]
            torch.testing.assert_close(packed[start : start + len(alone)], alone, atol=1e-5, rtol=1e-5)
            start += len(alone)


def test_packed_rows_never_exceed_max_length(gpt2):
    _, tokenizer = gpt2
    examples = [Example(f"package number {i} does things :", "games") for i in range(20)]
    rows = list(lm_batches(examples, tokenizer, 4, 24, shuffle_seed=0, packing=True))
    assert all(batch["input_ids"].shape[1] <= 24 for batch in rows)
    completions = sum(int((batch["labels"] != -100).sum()) for batch in rows)
    assert completions == 20 * (len(ids(tokenizer, " games")) + 1)  # every example's completion is there, once


def test_prompts_follow_the_chat_template_when_the_tokenizer_has_one(gpt2):
    _, tokenizer = gpt2
    assert not uses_chat_template(tokenizer)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    tokenizer.chat_template = CHAT
    assert uses_chat_template(tokenizer) and not uses_chat_template(tokenizer, wanted=False)
    input_ids, labels = encode_pair(tokenizer, "a chess engine", "games", 64, chat=True)
    assert tokenizer.decode(input_ids) == tokenizer.decode(
        ids(tokenizer, "<|user|> a chess engine [SEP] <|assistant|> games [SEP] ")
    )
    answer = [t for t in labels if t != -100]
    assert answer == ids(tokenizer, "games [SEP]")  # the assistant's turn and its end, nothing of the prompt


def test_an_adapter_trained_on_chat_prompts_is_prompted_the_same_way(tmp_path):
    from tasks import data_slice, write_task

    from pipelines import steps
    from pipelines.serving import complete, trained_with_chat_template
    from pipelines.task_files import load_spec

    base = tiny_base(tmp_path / "gpt2", "gpt2")
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.chat_template = CHAT
    tokenizer.save_pretrained(base)
    spec = load_spec(
        write_task(tmp_path, "chat", base, data_slice(tmp_path, 40, causal=True), causal=True, training__max_steps=2)
    )
    prepared = steps.prepare_data(spec, tmp_path / "work")
    adapter = steps.fit_adapter(spec, prepared, base, tmp_path / "run").adapter
    assert trained_with_chat_template(Path(adapter))
    model = AutoModelForCausalLM.from_pretrained(base).eval()
    seen = []
    generate = model.generate
    model.generate = lambda input_ids, **kw: seen.append(input_ids) or generate(input_ids=input_ids, **kw)
    complete(model, tokenizer, "a chess engine", max_new_tokens=2, chat=True)
    assert tokenizer.decode(seen[0][0]) == tokenizer.decode(
        ids(tokenizer, "<|user|> a chess engine [SEP] <|assistant|> ")
    )
