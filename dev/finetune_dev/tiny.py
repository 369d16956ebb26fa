"""A tiny causal LM and tokenizer built locally, for tests, demos and benchmarks (no network).

``build_tiny_model(out_dir)`` trains a byte-level BPE tokenizer on a small built-in corpus with
the ``tokenizers`` library, attaches a ChatML chat template, creates a randomly initialised
Llama- or Qwen2-style model (hidden size 64, 2 layers by default) with a fixed seed and saves both
with ``save_pretrained``. The result loads back with ``AutoTokenizer``/``AutoModelForCausalLM``.
Deterministic: the same arguments give the same files. Takes about a second.

CLI: ``python -m finetune_dev.tiny OUT_DIR [--arch llama|qwen2] [--hidden-size 64]
[--layers 2]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Literal

Arch = Literal["llama", "qwen2"]

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = """
The quick brown fox jumps over the lazy dog. A checkpoint is a snapshot of the training state.
Fine-tuning adapts a pretrained language model to a task with a small dataset.
LoRA adds low-rank adapters to linear layers; only the adapters are trained.
QLoRA quantizes the base model to four bits and trains adapters on top of it.
Kubernetes schedules pods on nodes; an operator reconciles custom resources.
When a job is preempted the trainer saves a checkpoint and exits; it resumes later.
What is the capital of France? The capital of France is Paris.
Translate to French: good morning. Bonjour.
Write a haiku about autumn. Leaves fall on the stream, the water carries them home.
Summarize: the meeting moved to Tuesday because the room was booked. The meeting is on Tuesday.
user assistant system instruction input output response question answer
def add(a, b):
    return a + b
0 1 2 3 4 5 6 7 8 9 10 100 1000 3.14 2026-11-24
{"role": "user", "content": "hello"} [1, 2, 3]
"""


def train_tokenizer(vocab_size: int = 512) -> object:
    """A byte-level BPE ``PreTrainedTokenizerFast`` with ChatML special tokens and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = [line for line in _CORPUS.splitlines() if line.strip()]
    tok.train_from_iterator(lines * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        model_max_length=4096,
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def _model_config(arch: Arch, vocab_size: int, hidden_size: int, layers: int, eos_id: int,
                  pad_id: int) -> object:
    common: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        bos_token_id=None,
        # Wider than the usual 0.02 so the random model's logits are not flat: LoRA (which
        # leaves lm_head alone) can then visibly lower the loss within a few steps.
        initializer_range=0.1,
    )
    if arch == "llama":
        from transformers import LlamaConfig

        return LlamaConfig(**common)
    if arch == "qwen2":
        from transformers import Qwen2Config

        return Qwen2Config(**common)
    raise ValueError(f"tiny model: unknown arch {arch!r}; use 'llama' or 'qwen2'")


def build_tiny_model(
    out_dir: str | Path,
    arch: Arch = "llama",
    hidden_size: int = 64,
    layers: int = 2,
    vocab_size: int = 512,
    seed: int = 0,
) -> Path:
    """Write a tiny model + tokenizer to ``out_dir`` (created) and return it."""
    import torch
    from transformers import AutoModelForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(vocab_size)
    eos_id = tokenizer.convert_tokens_to_ids("<|im_end|>")  # type: ignore[attr-defined]
    pad_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")  # type: ignore[attr-defined]
    config = _model_config(arch, len(tokenizer), hidden_size, layers, eos_id, pad_id)  # type: ignore[arg-type]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.eos_token_id = eos_id
    model.generation_config.pad_token_id = pad_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)  # type: ignore[attr-defined]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m finetune_dev.tiny",
        description="Build a tiny model + tokenizer (for tests and demos) into OUT_DIR.",
    )
    parser.add_argument("out_dir")
    parser.add_argument("--arch", choices=["llama", "qwen2"], default="llama")
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    out = build_tiny_model(args.out_dir, arch=args.arch, hidden_size=args.hidden_size,
                           layers=args.layers, seed=args.seed)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
