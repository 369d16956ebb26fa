"""The trainer image's entrypoint: LoRA, QLoRA and full fine-tuning with atomic checkpoints,
save on SIGTERM and exact resume. Run ``python -m finetune_trainer --config FILE``."""

__version__ = "0.1.0"
