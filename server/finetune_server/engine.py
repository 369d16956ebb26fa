"""The CPU runtime's model: one base model and its LoRA adapters, with transformers + peft.

Every adapter is injected into the one base model (peft's multi-adapter ``PeftModel``); a
request runs with its adapter set active, the base with the adapter layers disabled. Requests of
the same adapter (or of the base) run at the same time, each its own ``model.generate`` (batch
size 1) in its own thread; switching to another adapter waits until they are done (a
:class:`Gate`, first come first served, so no adapter starves). A generation is exactly what
``model.generate`` of transformers + peft gives for the same adapter and prompt, token for token
with greedy decoding. Adapters are loaded and unloaded at run time with the model to themselves.
"""

from __future__ import annotations

import json
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .args import adapter_problem


class ServingError(Exception):
    """A request the server refuses: ``status`` is the HTTP status, ``kind`` the OpenAI error
    type."""

    def __init__(self, status: int, message: str, kind: str = "BadRequestError") -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


@dataclass(frozen=True)
class Sampling:
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class Finish:
    """The end of a generation: why it stopped and how many tokens it produced."""
    reason: str  # "stop" (end-of-sequence) or "length" (max_tokens)
    prompt_tokens: int
    completion_tokens: int


class Gate:
    """Who uses the model: any number of generations of one mode at once (a mode: an adapter's
    name or the base's), or one exclusive holder (loading or unloading an adapter). Waiters are
    served in arrival order: a request waits behind an earlier one of another mode, so a busy
    adapter cannot starve the others. ``switch(mode)`` is called when the mode changes, with the
    model idle."""

    def __init__(self, switch: Callable[[str], None]) -> None:
        self.switch = switch
        self.cond = threading.Condition()
        self.mode: str | None = None  # None: to be set by the next generation
        self.key = ""  # who the running generations are (they share a key)
        self.running = 0
        self.held = False
        self.queue: deque[object] = deque()

    def _wait(self, ready: Callable[[], bool]) -> None:
        ticket = object()
        self.queue.append(ticket)
        try:
            while not (self.queue[0] is ticket and not self.held and ready()):
                self.cond.wait()
        finally:
            self.queue.remove(ticket)
            self.cond.notify_all()

    @contextmanager
    def shared(self, mode: str, key: str) -> Iterator[None]:
        """Generate in ``mode``; ``key`` is who may run beside whom (the mode, or a unique key
        for a request that must run alone)."""
        with self.cond:
            self._wait(lambda: self.running == 0 or self.key == key)
            if self.running == 0:
                if self.mode != mode:
                    self.switch(mode)
                    self.mode = mode
                self.key = key
            self.running += 1
        try:
            yield
        finally:
            with self.cond:
                self.running -= 1
                self.cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self.cond:
            self._wait(lambda: self.running == 0)
            self.held = True
        try:
            yield
        finally:
            with self.cond:
                self.held, self.mode = False, None
                self.cond.notify_all()

    def idle(self, timeout: float) -> bool:
        """Wait until no generation runs (shutdown); False after ``timeout``."""
        with self.cond:
            return self.cond.wait_for(lambda: self.running == 0, timeout)


def _cause(e: BaseException, limit: int = 600) -> str:
    """An exception's message on one line: its first two lines (torch's state-dict error puts the
    first mismatching weight and its shapes on the second)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()][:2]
    return (" ".join(lines) or type(e).__name__)[:limit]


class Engine:
    def __init__(self, model: str, served_model_name: str, max_loras: int,
                 max_lora_rank: int = 16, max_model_len: int | None = None,
                 dtype: str = "auto", max_concurrent: int = 8) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_path = model
        self.served_model_name = served_model_name
        self.max_loras = max_loras
        self.max_lora_rank = max_lora_rank
        self.tokenizer: Any = AutoTokenizer.from_pretrained(model)
        torch_dtype = (torch.float32 if dtype == "auto" else getattr(torch, dtype))
        self.base: Any = AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype)
        self.base.eval()
        self.peft: Any = None  # the PeftModel once an adapter is loaded
        self.adapters: dict[str, str] = {}  # name -> path, in load order
        limit = int(getattr(self.base.config, "max_position_embeddings", 0) or 0)
        self.max_model_len = max_model_len or limit or 2048
        if limit and self.max_model_len > limit:
            raise ValueError(f"--max-model-len {self.max_model_len} exceeds the model's "
                             f"max_position_embeddings ({limit}): lower it")
        self.eos_ids = self._eos_ids()
        self.gate = Gate(self._switch)
        # generations run on a few long-lived threads: torch's OpenMP runtime keeps a team of
        # threads per calling thread, and a fresh thread per request piles teams up (each new
        # one slower than the last on a loaded machine); a queued request waits for a free one
        self.pool = ThreadPoolExecutor(max_concurrent, thread_name_prefix="generate")

    def _eos_ids(self) -> list[int]:
        eos = self.base.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        return [eos] if isinstance(eos, int) else list(eos or [])

    # adapters --------------------------------------------------------------------------------

    def load_adapter(self, name: str, path: str) -> None:
        """Inject the adapter at ``path`` as ``name``; :class:`ServingError` naming the adapter
        and the cause when it cannot be."""
        if not name:
            raise ServingError(400, "lora_name is empty: give the adapter a name")
        if name == self.served_model_name:
            raise ServingError(400, f"cannot load adapter '{name}': it has the base model's "
                                    "name; pick another lora_name")
        with self.gate.exclusive():
            if name in self.adapters:
                raise ServingError(400, f"The lora adapter '{name}' has already been loaded "
                                        f"(from {self.adapters[name]}); unload it first to "
                                        "load another path under this name.")
            if len(self.adapters) >= self.max_loras:
                raise ServingError(400, f"cannot load adapter '{name}': {len(self.adapters)} "
                                        "adapters are loaded, the most this server holds "
                                        f"(--max-loras {self.max_loras}); unload one first")
            why = adapter_problem(path)
            if why is None:
                why = self._config_problem(Path(path))
            if why is not None:  # a path that is not there is a 404, as in vLLM
                missing = not Path(path).exists()
                raise ServingError(404 if missing else 400, f"cannot load adapter '{name}': {why}",
                                   "NotFoundError" if missing else "BadRequestError")
            try:
                self._inject(name, path)
            except Exception as e:  # peft/safetensors: shapes, missing weights, bad files
                raise ServingError(400, f"cannot load adapter '{name}' from {path}: "
                                        f"{type(e).__name__}: {_cause(e)}") from e
            self.adapters[name] = path

    def _config_problem(self, path: Path) -> str | None:
        try:
            cfg = json.loads((path / "adapter_config.json").read_text())
        except (OSError, ValueError) as e:
            return f"{path}/adapter_config.json does not read as JSON ({e})"
        if cfg.get("peft_type", "LORA") != "LORA":
            return f"{path} is a {cfg.get('peft_type')} adapter, not LoRA"
        rank = int(cfg.get("r") or 0)
        if rank > self.max_lora_rank:
            return (f"its LoRA rank {rank} exceeds --max-lora-rank {self.max_lora_rank}; "
                    "restart the server with a larger --max-lora-rank")
        return None

    def _inject(self, name: str, path: str) -> None:
        from peft import PeftModel

        if self.peft is None:
            self.peft = PeftModel.from_pretrained(self.base, path, adapter_name=name)
            self.peft.eval()
            return
        try:
            self.peft.load_adapter(path, adapter_name=name)
        except Exception:
            # a half-injected adapter must not linger in the model
            if name in getattr(self.peft, "peft_config", {}):
                self.peft.delete_adapter(name)
            raise
        self.peft.eval()

    def unload_adapter(self, name: str) -> None:
        with self.gate.exclusive():
            if name not in self.adapters:
                raise ServingError(404, f"The lora adapter '{name}' cannot be found "
                                        f"(loaded: {', '.join(self.adapters) or 'none'}).",
                                   "NotFoundError")
            del self.adapters[name]
            if self.adapters:
                self.peft.delete_adapter(name)
            else:  # the last one: give the base model back without LoRA layers
                self.base = self.peft.unload()
                self.peft = None

    # generation ------------------------------------------------------------------------------

    def _switch(self, mode: str) -> None:
        """Make ``mode`` (an adapter, or the base) the one the model runs (the model is idle)."""
        if self.peft is None:
            return
        if mode == self.served_model_name:
            self.peft.base_model.disable_adapter_layers()
        else:
            self.peft.base_model.enable_adapter_layers()
            self.peft.set_adapter(mode)

    def model_names(self) -> list[str]:
        return [self.served_model_name, *self.adapters]

    def check_model(self, model: str) -> None:
        if model != self.served_model_name and model not in self.adapters:
            raise ServingError(404, f"The model `{model}` does not exist (served: "
                                    f"{', '.join(self.model_names())}).", "NotFoundError")

    def chat_prompt(self, messages: list[dict[str, Any]]) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                  tokenize=False)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def text_prompt(self, prompt: str) -> list[int]:
        return list(self.tokenizer(prompt)["input_ids"])

    def budget(self, prompt_len: int, max_tokens: int | None) -> int:
        """max_tokens after the context limit (vLLM's rule and message)."""
        room = self.max_model_len - prompt_len
        wanted = room if max_tokens is None else max_tokens
        if room <= 0 or wanted > room:
            raise ServingError(400, f"This model's maximum context length is "
                                    f"{self.max_model_len} tokens. However, you requested "
                                    f"{prompt_len + wanted} tokens ({prompt_len} in the "
                                    f"messages, {wanted} in the completion). Please reduce the "
                                    "length of the messages or completion.")
        if wanted < 1:
            raise ServingError(400, f"max_tokens must be at least 1, got {wanted}")
        return wanted

    def generate(self, model: str, prompt: list[int], sampling: Sampling,
                 ) -> Iterator[int | Finish]:
        """The new token ids one by one as they are generated, then a :class:`Finish`.
        Closing the iterator early stops the generation at the next token."""
        self.check_model(model)
        budget = self.budget(len(prompt), sampling.max_tokens)
        out: queue.Queue[int | Finish | BaseException] = queue.Queue()
        cancel = threading.Event()
        done = self.pool.submit(self._run, model, prompt, sampling, budget, out, cancel)
        try:
            while True:
                item = out.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if isinstance(item, Finish):
                    return
        finally:
            cancel.set()
            done.result()

    def _run(self, model: str, prompt: list[int], sampling: Sampling, budget: int,
             out: queue.Queue[int | Finish | BaseException], cancel: threading.Event) -> None:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        class Streamer(BaseStreamer):
            def __init__(self) -> None:
                self.prompt_seen = False
                self.count = 0
                self.last = -1

            def put(self, value: Any) -> None:
                if not self.prompt_seen:  # generate() first puts the prompt
                    self.prompt_seen = True
                    return
                for token in value.reshape(-1).tolist():
                    self.count += 1
                    self.last = int(token)
                    out.put(int(token))

            def end(self) -> None:
                pass

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool)

        streamer = Streamer()
        # a seeded sampling request runs alone: the global RNG is its own from the seed on
        key = model if sampling.greedy or sampling.seed is None else f"{model}\0{id(out)}"
        try:
            with self.gate.shared(model, key):
                if model != self.served_model_name and model not in self.adapters:
                    raise ServingError(404, f"The model `{model}` was unloaded.",
                                       "NotFoundError")
                net = self.base if self.peft is None else self.peft
                kwargs: dict[str, Any] = {"do_sample": False}
                if not sampling.greedy:
                    kwargs = {"do_sample": True, "temperature": sampling.temperature,
                              "top_p": sampling.top_p, "top_k": 0}
                    if sampling.seed is not None:
                        torch.manual_seed(sampling.seed)
                ids = torch.tensor([prompt], dtype=torch.long)
                with torch.inference_mode():
                    net.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                 max_new_tokens=budget, eos_token_id=self.eos_ids,
                                 pad_token_id=self.tokenizer.pad_token_id,
                                 streamer=streamer,
                                 stopping_criteria=StoppingCriteriaList([Cancelled()]),
                                 **kwargs)
            reason = "stop" if streamer.last in self.eos_ids else "length"
            out.put(Finish(reason, len(prompt), streamer.count))
        except BaseException as e:  # handed to the request's thread
            out.put(e)

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))
