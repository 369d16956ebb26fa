"""finetune-operator's serving runtime: one base model and its LoRA adapters behind an
OpenAI-compatible HTTP API (``python -m finetune_server``; docs/serving.md).

Two runtimes behind one command line and one protocol:

* ``vllm`` (GPUs; the server image): the command line is translated to ``vllm serve`` with runtime
  LoRA updating enabled (:mod:`finetune_server.args`), and vLLM serves;
* ``transformers`` (the CPU): this package's own server, transformers + peft
  (:mod:`finetune_server.engine`) behind a standard-library HTTP server
  (:mod:`finetune_server.http`), speaking the same endpoints as vLLM: ``/v1/models``,
  ``/v1/chat/completions``, ``/v1/completions`` (streaming or not), ``/health``,
  ``/v1/load_lora_adapter`` and ``/v1/unload_lora_adapter``.

A request picks its adapter by the ``model`` field: an adapter's name, or the base model's name
for the base. Nothing here imports the operator, the trainer or the api.
"""
