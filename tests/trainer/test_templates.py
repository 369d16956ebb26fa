"""Chat correctness: BOS/EOS of the fallback template, the end-of-turn token in the labels with
prefix-stable and non-prefix-stable templates, and direct rendering equal to
``apply_chat_template``. Tokenizers are built locally (no network)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from finetune_trainer.data import IGNORE, build_examples
from finetune_trainer.templates import (
    _apply,
    assistant_spans,
    end_of_turn,
    ensure_chat_template,
    render,
    tokenize_chat,
)
from tests.builders.trainer import DATA

pytestmark = pytest.mark.trainer

CONV = [{"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?"},
        {"role": "assistant", "content": "Rome."}]

# Qwen3-style: the final assistant turn gets an (empty) reasoning block, earlier ones do not,
# so rendering a prefix of the conversation is not a prefix of the full rendering.
NOT_PREFIX_STABLE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' and loop.last %}{{ '<think>\n\n</think>\n\n' }}"
    "{% endif %}"
    "{{ message['content'] | trim + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def bos_eos_tokenizer() -> Any:
    """A Llama-like fast tokenizer: <s> put in front of plain text, </s> as EOS, no template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        ["What is the capital of France? Paris. And of Italy? Rome. Be brief. user assistant"] * 4,
        trainer=trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<s>", "</s>"],
                                    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                    show_progress=False))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")


def labeled_runs(ex: Any) -> list[list[int]]:
    """The maximal runs of labeled tokens (one per assistant turn)."""
    runs: list[list[int]] = []
    prev = IGNORE
    for lab in ex.labels:
        if lab != IGNORE:
            if prev == IGNORE:
                runs.append([])
            runs[-1].append(lab)
        prev = lab
    return runs


def text_ids(tok: Any, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"])


def test_fallback_starts_with_bos_and_ends_each_assistant_turn_with_eos() -> None:
    tok = bos_eos_tokenizer()
    note = ensure_chat_template(tok)
    assert note and "EOS token </s>" in note and "BOS" in note
    ex = tokenize_chat(tok, CONV, train_on_prompt=False)
    assert ex.input_ids[0] == tok.bos_token_id
    assert ex.input_ids.count(tok.bos_token_id) == 1, "BOS once, not doubled"
    runs = labeled_runs(ex)
    assert runs == [[*text_ids(tok, "Paris."), tok.eos_token_id],
                    [*text_ids(tok, "Rome."), tok.eos_token_id]]
    assert ex.input_ids[-1] == tok.eos_token_id
    # user and system turns carry no loss; EOS appears only where an assistant turn ends
    assert ex.input_ids.count(tok.eos_token_id) == 2


def test_fallback_without_bos_uses_eos_only(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    tok.chat_template = None
    assert tok.bos_token_id is None
    ensure_chat_template(tok)
    ex = tokenize_chat(tok, CONV, train_on_prompt=False)
    assert tok.decode(ex.input_ids[:1]) == "<|im_start|>"
    assert [run[-1] for run in labeled_runs(ex)] == [tok.eos_token_id] * 2
    full, _ = assistant_spans(tok, CONV)
    assert full.endswith("Rome.<|im_end|>") and "Paris.<|im_end|><|im_start|>user" in full


def test_fallback_end_of_turn_is_eos_for_committed_chat_data(tiny_model: Path) -> None:
    """Every training example built with the fallback ends its labels with EOS."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    tok.chat_template = None
    train, _, stats = build_examples(str(DATA / "sharegpt.jsonl"), "sharegpt", tok, 512, False,
                                     0.0, False, 7)
    assert any("fallback" in n for n in stats.notes)
    for ex in train:
        assert all(run[-1] == tok.eos_token_id for run in labeled_runs(ex))


def test_tokenizer_template_keeps_its_own_end_of_turn(tiny_tokenizer: Any) -> None:
    ex = tokenize_chat(tiny_tokenizer, CONV, train_on_prompt=False)
    assert labeled_runs(ex) == [text_ids(tiny_tokenizer, "Paris.<|im_end|>\n"),
                                text_ids(tiny_tokenizer, "Rome.<|im_end|>\n")]


def test_end_of_turn_stays_in_labels_when_the_template_is_not_prefix_stable(
        tiny_tokenizer: Any) -> None:
    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = NOT_PREFIX_STABLE
    assert end_of_turn(tok) == "<|im_end|>"
    conv = copy.deepcopy(CONV)
    conv[2]["content"] = "  Paris.  "  # the template trims it: found by its trimmed form
    full, spans = assistant_spans(tok, conv)
    assert [full[a:b] for a, b in spans] == ["Paris.<|im_end|>",
                                            "<think>\n\n</think>\n\nRome.<|im_end|>\n"]
    ex = tokenize_chat(tok, conv, train_on_prompt=False)
    end = tok.convert_tokens_to_ids("<|im_end|>")
    runs = labeled_runs(ex)
    assert len(runs) == 2 and all(end in run for run in runs)
    assert runs[0] == text_ids(tok, "Paris.<|im_end|>")


def test_direct_rendering_equals_apply_chat_template(tiny_tokenizer: Any) -> None:
    tok = bos_eos_tokenizer()
    ensure_chat_template(tok)
    nps = copy.deepcopy(tiny_tokenizer)
    nps.chat_template = NOT_PREFIX_STABLE
    for t in (tiny_tokenizer, tok, nps):
        for k in range(1, len(CONV) + 1):
            for gen in (False, True):
                assert render(t, CONV[:k], gen) == _apply(t, CONV[:k], gen)


def test_fallback_without_eos_says_so_and_keeps_the_text_marker(tiny_tokenizer: Any) -> None:
    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = None
    tok.eos_token = None
    note = ensure_chat_template(tok)
    assert note and "may not learn to stop" in note
    full, spans = assistant_spans(tok, CONV[1:3])
    assert [full[a:b] for a, b in spans] == ["Paris.<|im_end|>\n"]
