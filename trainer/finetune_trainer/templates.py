"""Conversations -> token ids and labels through the tokenizer's chat template.

Fallback when the tokenizer has no template (``fallback_template``): ChatML-style role markers
(``<|im_start|>{role}\\n{content}<|im_end|>\\n``) for system, user and tool turns; an assistant
turn ends with the tokenizer's EOS token (not ordinary text), so a base model learns to stop; the
conversation starts with the BOS token when the tokenizer adds one to plain text.

Labels: by default only assistant turns carry a loss: the turn's content and the end-of-turn
marker the template renders after it (``<|im_end|>``, ``<|eot_id|>``, EOS...). A template that is
not prefix-stable (it renders earlier turns differently once more follow, as reasoning templates
do) falls back to locating each assistant content in the rendering; the end-of-turn marker that
follows it is found from a probe rendering and kept in the labels.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

IGNORE = -100

_TURNS = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' + message['content'] + END }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
#: the fallback for a tokenizer with an EOS token and no BOS
FALLBACK_CHAT_TEMPLATE = _TURNS.replace("END", "eos_token")
#: for a tokenizer without an EOS token (the end of turn is then plain text)
FALLBACK_CHAT_TEMPLATE_NO_EOS = _TURNS.replace("END", "'<|im_end|>\n'")

_PROBE = "\x00probe-assistant\x00"


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    position_ids: list[int] | None = None

    def __len__(self) -> int:
        return len(self.input_ids)


def uses_bos(tokenizer: Any) -> bool:
    """True when the tokenizer puts its BOS token in front of plain text."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = list(tokenizer("a", add_special_tokens=True)["input_ids"])
    return bool(ids) and ids[0] == bos


def fallback_template(tokenizer: Any) -> str:
    """The fallback chat template for this tokenizer (BOS/EOS as the tokenizer has them)."""
    body = FALLBACK_CHAT_TEMPLATE if getattr(tokenizer, "eos_token", None) \
        else FALLBACK_CHAT_TEMPLATE_NO_EOS
    return ("{{ bos_token }}" + body) if uses_bos(tokenizer) else body


def ensure_chat_template(tokenizer: Any) -> str | None:
    """Install the fallback when the tokenizer has no template; returns the note to log."""
    if getattr(tokenizer, "chat_template", None):
        return None
    tokenizer.chat_template = fallback_template(tokenizer)
    eos = getattr(tokenizer, "eos_token", None)
    bos = " after the BOS token" if uses_bos(tokenizer) else ""
    end = (f"assistant turns end with the EOS token {eos}" if eos else
           "the tokenizer has no EOS token, so assistant turns end with the plain text "
           "<|im_end|> and the model may not learn to stop")
    return (f"the tokenizer has no chat template; using the ChatML fallback "
            f"(<|im_start|>role ... <|im_end|>{bos}; {end})")


def _apply(tokenizer: Any, msgs: list[dict[str, str]], gen: bool) -> str:
    out = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
    return out if isinstance(out, str) else str(out)


_COMPILED: dict[tuple[int, str, str], Any] = {}


def _key(tokenizer: Any) -> tuple[int, str, str]:
    return id(tokenizer), str(tokenizer.chat_template), str(tokenizer.special_tokens_map)


def _compiled(tokenizer: Any) -> Any:
    """The tokenizer's compiled template when rendering it directly gives exactly what
    ``apply_chat_template`` gives (checked once on a probe), else None.

    ``apply_chat_template`` spends about two thirds of its time re-validating and copying its
    inputs; our messages are already plain ``{"role", "content"}`` strings, so the compiled
    template (transformers' own, cached) renders them the same way, three times faster."""
    key = _key(tokenizer)
    if key not in _COMPILED:
        fn: Callable[[list[dict[str, str]], bool], str] | None = None
        try:
            from transformers.utils.chat_template_utils import _compile_jinja_template

            compiled = _compile_jinja_template(tokenizer.get_chat_template())
            extra = dict(tokenizer.special_tokens_map)

            def direct(msgs: list[dict[str, str]], gen: bool) -> str:
                return str(compiled.render(messages=msgs, tools=None, documents=None,
                                           add_generation_prompt=gen, **extra))

            fn = direct

            probe = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                     {"role": "assistant", "content": "a"}]
            if any(fn(probe[:k], g) != _apply(tokenizer, probe[:k], g)
                   for k in (2, 3) for g in (False, True)):
                fn = None
        except Exception:  # private API moved, or the probe is not a valid conversation
            fn = None
        _COMPILED[key] = fn
    return _COMPILED[key]


def render(tokenizer: Any, msgs: list[dict[str, str]], gen: bool) -> str:
    fn = _compiled(tokenizer)
    return fn(msgs, gen) if fn is not None else _apply(tokenizer, msgs, gen)


_EOT_CACHE: dict[tuple[int, str, str], str] = {}


def end_of_turn(tokenizer: Any) -> str:
    """The text the template renders right after an assistant message (whitespace trimmed)."""
    key = _key(tokenizer)
    if key not in _EOT_CACHE:
        eot = ""
        try:
            full = render(tokenizer, [{"role": "user", "content": "hi"},
                                      {"role": "assistant", "content": _PROBE}], gen=False)
            i = full.rfind(_PROBE)
            if i >= 0:
                eot = full[i + len(_PROBE):].strip()
        except Exception:  # the probe is best effort; spans then end at the content
            eot = ""
        _EOT_CACHE[key] = eot
    return _EOT_CACHE[key]


def _content_span(tokenizer: Any, full: str, content: str, cursor: int) -> tuple[int, int] | None:
    """Where ``content`` (or its trimmed form) sits after ``cursor``, plus the end-of-turn."""
    for needle in (content, content.strip()):
        start = full.find(needle, cursor) if needle else -1
        if start >= 0:
            break
    else:
        return None
    end = start + len(needle)
    eot = end_of_turn(tokenizer)
    if eot:
        gap = len(full[end:]) - len(full[end:].lstrip())
        for at in (end, end + gap):
            if full.startswith(eot, at):
                end = at + len(eot)
                break
    return start, end


def assistant_spans(tokenizer: Any,
                    msgs: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of the assistant turns.

    A span runs from the end of the generation prompt before the turn to the end of the turn as
    the template renders it (so it includes the end-of-turn marker). Templates that are not
    prefix-stable fall back to the span of the message content plus the end-of-turn marker.
    """
    full = render(tokenizer, msgs, gen=False)
    spans: list[tuple[int, int]] = []
    cursor = 0
    last = len(msgs) - 1
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        try:
            before = render(tokenizer, msgs[:i], gen=True)
        except Exception:  # some templates cannot render an empty conversation
            before = ""
        upto = full if i == last else render(tokenizer, msgs[: i + 1], gen=False)
        span: tuple[int, int] | None
        if full.startswith(upto) and upto.startswith(before) and len(before) >= cursor:
            span = len(before), len(upto)
        else:
            span = _content_span(tokenizer, full, m["content"], cursor)
        if span is None:
            continue
        spans.append(span)
        cursor = span[1]
    return full, spans


def label_by_offsets(ids: Sequence[int], offsets: Sequence[tuple[int, int]],
                     spans: list[tuple[int, int]]) -> list[int]:
    """``ids`` where the token starts inside a span, IGNORE elsewhere (spans sorted)."""
    starts = [s for s, _e in offsets]
    labels = [IGNORE] * len(ids)
    for a, b in spans:
        i, j = bisect.bisect_left(starts, a), bisect.bisect_left(starts, b)
        labels[i:j] = ids[i:j]
    return labels


def _encode_batch(tokenizer: Any, texts: list[str]) -> list[tuple[list[int], Any]]:
    """(ids, offsets) of each text, no special tokens added; straight from the Rust backend
    when no truncation or padding is configured on it (what transformers would call anyway)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and backend.truncation is None and backend.padding is None:
        return [(e.ids, e.offsets) for e in backend.encode_batch(texts, add_special_tokens=False)]
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    return list(zip(enc["input_ids"], enc["offset_mapping"], strict=True))


def tokenize_rendered(tokenizer: Any, rendered: list[tuple[str, list[tuple[int, int]]]],
                      train_on_prompt: bool) -> list[Example]:
    """Rendered conversations with their assistant spans -> examples, one batched call."""
    if not rendered:
        return []
    if getattr(tokenizer, "is_fast", False):
        out = []
        encoded = _encode_batch(tokenizer, [full for full, _ in rendered])
        for (ids, offsets), (_full, spans) in zip(encoded, rendered, strict=True):
            ids = list(ids)
            labels = list(ids) if train_on_prompt else label_by_offsets(ids, offsets, spans)
            out.append(Example(ids, labels))
        return out
    return [_tokenize_segments(tokenizer, full, spans, train_on_prompt)
            for full, spans in rendered]


def _tokenize_segments(tokenizer: Any, full: str, spans: list[tuple[int, int]],
                       train_on_prompt: bool) -> Example:
    """Slow tokenizers have no offsets: tokenize segment by segment."""
    ids: list[int] = []
    labels: list[int] = []
    bounds = sorted({0, len(full), *[x for sp in spans for x in sp]})
    for a, b in itertools.pairwise(bounds):
        seg: list[int] = list(tokenizer(full[a:b], add_special_tokens=False)["input_ids"])
        trained = train_on_prompt or any(s <= a < e for s, e in spans)
        ids += seg
        labels += seg if trained else [IGNORE] * len(seg)
    return Example(ids, labels)


def tokenize_chat(tokenizer: Any, msgs: list[dict[str, str]], train_on_prompt: bool) -> Example:
    return tokenize_rendered(tokenizer, [assistant_spans(tokenizer, msgs)], train_on_prompt)[0]


def tokenize_texts(tokenizer: Any, texts: list[str]) -> list[Example]:
    """Plain texts -> examples that train on every token and end with EOS (one batched call)."""
    if not texts:
        return []
    eos = tokenizer.eos_token_id
    out = []
    for row in tokenizer(texts, add_special_tokens=True)["input_ids"]:
        ids = list(row)
        if eos is not None and (not ids or ids[-1] != eos):
            ids.append(eos)
        out.append(Example(ids, list(ids)))
    return out


def tokenize_text(tokenizer: Any, text: str) -> Example:
    return tokenize_texts(tokenizer, [text])[0]
