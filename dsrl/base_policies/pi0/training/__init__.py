"""Fine-tuning Pi0 / Pi0.5 in JAX: openpi's flow-matching loss, LoRA, AdamW + EMA train state,
norm stats and checkpoints in openpi's layout. See `scripts/finetune_pi0.py`."""
