"""Data formats -> tokens, labels and masks; malformed records name file, line and field."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from finetune_trainer.data import (
    IGNORE,
    Collator,
    DataError,
    DatasetUnavailable,
    Example,
    build_examples,
    pack,
    pick_split_file,
    read_records,
    record_to_messages,
    split_indices,
    tokenize_chat,
    tokenize_text,
)
from tests.builders.trainer import DATA

pytestmark = pytest.mark.trainer


def ids(tok: Any, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"])


def labeled_text(tok: Any, ex: Example) -> str:
    return tok.decode([t for t, lab in zip(ex.input_ids, ex.labels, strict=True) if lab != IGNORE])


def test_messages_assistant_only_token_by_token(tiny_tokenizer: Any) -> None:
    msgs = [{"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "Paris."}]
    ex = tokenize_chat(tiny_tokenizer, msgs, train_on_prompt=False)
    prompt = ids(tiny_tokenizer,
                 "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
                 "<|im_start|>assistant\n")
    answer = ids(tiny_tokenizer, "Paris.<|im_end|>\n")
    assert ex.input_ids == prompt + answer
    assert ex.labels == [IGNORE] * len(prompt) + answer
    assert labeled_text(tiny_tokenizer, ex) == "Paris.<|im_end|>\n"


def test_multi_turn_masks_every_user_turn(tiny_tokenizer: Any) -> None:
    rec = {"system": "Be brief.", "conversations": [
        {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."},
        {"from": "human", "value": "Again"}, {"from": "gpt", "value": "Hello again."}]}
    msgs = record_to_messages(rec, "sharegpt", "f:1")
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant"]
    ex = tokenize_chat(tiny_tokenizer, msgs, train_on_prompt=False)
    expect: list[int] = []
    for text, trained in [("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi"
                           "<|im_end|>\n<|im_start|>assistant\n", False),
                          ("Hello.<|im_end|>\n", True),
                          ("<|im_start|>user\nAgain<|im_end|>\n<|im_start|>assistant\n", False),
                          ("Hello again.<|im_end|>\n", True)]:
        part = ids(tiny_tokenizer, text)
        expect += part if trained else [IGNORE] * len(part)
    assert ex.labels == expect


def test_train_on_prompt_trains_every_token(tiny_tokenizer: Any) -> None:
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo."}]
    ex = tokenize_chat(tiny_tokenizer, msgs, train_on_prompt=True)
    assert ex.labels == ex.input_ids


def test_alpaca_record_becomes_user_and_assistant(tiny_tokenizer: Any) -> None:
    rec = {"instruction": "Translate to French.", "input": "thank you", "output": "Merci.",
           "system": "Be brief."}
    msgs = record_to_messages(rec, "alpaca", "f:1")
    assert msgs == [{"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Translate to French.\n\nthank you"},
                    {"role": "assistant", "content": "Merci."}]
    ex = tokenize_chat(tiny_tokenizer, msgs, train_on_prompt=False)
    assert labeled_text(tiny_tokenizer, ex) == "Merci.<|im_end|>\n"


def test_openai_content_parts_are_joined() -> None:
    rec = {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                                                     {"type": "text", "text": "b"}]},
                        {"role": "assistant", "content": "c"}]}
    assert record_to_messages(rec, "messages", "f:1")[0]["content"] == "ab"


def test_text_trains_every_token_and_ends_with_eos(tiny_tokenizer: Any) -> None:
    ex = tokenize_text(tiny_tokenizer, "Question: hi\nAnswer: yo")
    assert ex.labels == ex.input_ids
    assert ex.input_ids[-1] == tiny_tokenizer.eos_token_id
    assert ex.input_ids[:-1] == ids(tiny_tokenizer, "Question: hi\nAnswer: yo")


@pytest.mark.parametrize("fmt", ["alpaca", "sharegpt", "messages", "text"])
def test_committed_datasets_build(tiny_tokenizer: Any, fmt: str) -> None:
    train, evals, stats = build_examples(str(DATA / f"{fmt}.jsonl"), fmt, tiny_tokenizer, 256,
                                         False, 0.1, False, 7)
    assert stats.records >= 20 and len(train) + len(evals) == stats.records
    assert len(evals) == 2
    for ex in train:
        trained = [lab for lab in ex.labels if lab != IGNORE]
        assert trained, "every example has trainable tokens"
        if fmt != "text":
            assert len(trained) < len(ex.labels), "chat prompts are masked"
            assert trained[-1] == tiny_tokenizer.eos_token_id or trained[-1] == ids(
                tiny_tokenizer, "\n")[0]


def test_fallback_chat_template_is_chatml(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    tok.chat_template = None
    train, _, stats = build_examples(str(DATA / "messages.jsonl"), "messages", tok, 256, False,
                                     0.0, False, 7)
    assert any("ChatML fallback" in n for n in stats.notes)
    assert str(tok.decode(train[1].input_ids)).startswith("<|im_start|>user\n")


def test_cutoff_truncates_and_drops_examples_without_labels(tiny_tokenizer: Any,
                                                            tmp_path: Path) -> None:
    f = tmp_path / "d.jsonl"
    rows = [{"messages": [{"role": "user", "content": "word " * 200},
                          {"role": "assistant", "content": "ok"}]},
            {"messages": [{"role": "user", "content": "hi"},
                          {"role": "assistant", "content": "long answer " * 50}]}]
    f.write_text("\n".join(json.dumps(r) for r in rows))
    train, _, stats = build_examples(str(f), "messages", tiny_tokenizer, 32, False, 0.0, False, 1)
    assert len(train) == 1 and len(train[0].input_ids) == 32
    assert stats.dropped_no_labels == 1 and stats.truncated == 2
    with pytest.raises(DataError, match=r"dataset.cutoffLen=8"):
        build_examples(str(f), "messages", tiny_tokenizer, 8, False, 0.0, False, 1)


def test_split_is_deterministic_and_disjoint() -> None:
    a = split_indices(24, 0.1, 7)
    assert a == split_indices(24, 0.1, 7)
    assert len(a[1]) == 2 and not set(a[0]) & set(a[1]) and len(a[0]) + len(a[1]) == 24
    assert split_indices(24, 0.0, 7) == (list(range(24)), [])


def test_packing_positions_and_labels() -> None:
    exs = [Example([1, 2, 3], [1, 2, 3]), Example([4, 5], [IGNORE, 5]),
           Example([6, 7, 8], [6, 7, 8])]
    rows = pack(exs, cutoff_len=5)
    assert [r.input_ids for r in rows] == [[1, 2, 3, 4, 5], [6, 7, 8]]
    assert rows[0].position_ids == [0, 1, 2, 0, 1]
    assert rows[0].labels == [IGNORE, 2, 3, IGNORE, 5]
    batch = Collator(pad_id=0)([{"input_ids": r.input_ids, "labels": r.labels,
                                 "position_ids": r.position_ids or []} for r in rows])
    assert "attention_mask" not in batch
    assert batch["position_ids"][1].tolist() == [0, 1, 2, 0, 1]
    assert batch["labels"][1].tolist() == [IGNORE, 7, 8, IGNORE, IGNORE]


def test_packed_examples_do_not_attend_to_each_other(tiny_model: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    a, b = [5, 6, 7, 8], [9, 10, 11]
    with torch.no_grad():
        alone = model(input_ids=torch.tensor([b]), use_cache=False).logits[0]
        packed = model(input_ids=torch.tensor([a + b]), use_cache=False,
                       position_ids=torch.tensor([[0, 1, 2, 3, 0, 1, 2]])).logits[0, 4:]
        unpacked = model(input_ids=torch.tensor([a + b]), use_cache=False).logits[0, 4:]
    assert torch.allclose(alone, packed, atol=1e-5)
    assert not torch.allclose(alone, unpacked, atol=1e-3)  # the check above can fail


def test_collator_pads_with_mask() -> None:
    batch = Collator(pad_id=0)([{"input_ids": [1, 2, 3], "labels": [IGNORE, 2, 3]},
                                {"input_ids": [4], "labels": [4]}])
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 2, 3], [4, IGNORE, IGNORE]]


GOOD = {
    "messages": {"messages": [{"role": "user", "content": "q"},
                              {"role": "assistant", "content": "a"}]},
    "sharegpt": {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
    "alpaca": {"instruction": "q", "output": "a"},
    "text": {"text": "hello"},
}


@pytest.mark.parametrize(("fmt", "bad", "needle"), [
    ("messages", {"messages": [{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}]},
     "field 'messages[1].role' must be one of"),
    ("messages", {"messages": [{"role": "user", "content": "q"}, {"role": "assistant"}]},
     "field 'messages[1].content' is missing"),
    ("messages", {"messages": [{"role": "user", "content": "q"}]},
     "field 'messages' has no assistant message"),
    ("messages", {"messages": [{"role": "user", "content": 3}, {"role": "assistant",
                                                                "content": "a"}]},
     "field 'messages[0].content' must be a string"),
    ("sharegpt", {"conversations": [{"from": "human", "value": "q"}, {"from": "robot",
                                                                      "value": "a"}]},
     "field 'conversations[1].from' must be one of"),
    ("sharegpt", {"conversation": []}, "field 'conversations' must be a non-empty list"),
    ("alpaca", {"instruction": "q"}, "field 'output' is missing"),
    ("alpaca", {"instruction": "q", "output": 5}, "field 'output' must be a string, got int"),
    ("text", {"txt": "x"}, "field 'text' is missing"),
    ("text", ["x"], "a record must be a JSON object"),
])
def test_malformed_record_names_file_line_and_field(tiny_tokenizer: Any, tmp_path: Path,
                                                    fmt: str, bad: Any, needle: str) -> None:
    f = tmp_path / f"{fmt}.jsonl"
    good = json.dumps(GOOD[fmt])
    f.write_text(f"{good}\n\n{good}\n{json.dumps(bad)}\n{good}\n")  # bad record on line 4
    with pytest.raises(DataError) as e:
        build_examples(str(f), fmt, tiny_tokenizer, 64, False, 0.0, False, 1)
    assert str(e.value).startswith(f"{f}:4: ")
    assert needle in str(e.value)


def test_invalid_json_line_is_named(tmp_path: Path) -> None:
    f = tmp_path / "d.jsonl"
    f.write_text('{"text": "a"}\n{"text": "b"\n')
    with pytest.raises(DataError, match=r"d.jsonl:2: not valid JSON"):
        read_records(f)


def test_json_array_records_carry_line_numbers(tiny_tokenizer: Any, tmp_path: Path) -> None:
    f = tmp_path / "d.json"
    rec = copy.deepcopy(GOOD["alpaca"])
    f.write_text("[\n" + json.dumps(rec) + ",\n" + json.dumps(rec) + ",\n"
                 + json.dumps({"instruction": "q", "output": None}, indent=1) + "\n]\n")
    assert [n for n, _ in read_records(f)] == [2, 3, 4]
    with pytest.raises(DataError, match=r"d.json:4: field 'output' is missing"):
        build_examples(str(f), "alpaca", tiny_tokenizer, 64, False, 0.0, False, 1)


def test_hub_dataset_split_file_is_picked_by_name() -> None:
    files = [Path("r/README.md"), Path("r/data/train.jsonl"), Path("r/data/test.jsonl")]
    assert pick_split_file(files, "train", "org/ds") == Path("r/data/train.jsonl")
    assert pick_split_file([Path("r/all.json")], "train", "org/ds") == Path("r/all.json")
    with pytest.raises(DataError, match=r"spec.dataset.source.hub.split: .* 'validation'"):
        pick_split_file(files, "validation", "org/ds")


def test_missing_dataset_file_is_retryable_not_a_data_error(tiny_tokenizer: Any,
                                                            tmp_path: Path) -> None:
    """exit 1 (retried up to backoffLimit: the volume may be filled later), not exit 2."""
    with pytest.raises(DatasetUnavailable, match="cannot read the dataset") as e:
        build_examples(str(tmp_path / "nope.jsonl"), "text", tiny_tokenizer, 64, False, 0.0,
                       False, 1)
    assert not isinstance(e.value, DataError)
