"""Training infrastructure: optimizer/schedules (optim), jitted train step (step), orbax checkpoints (checkpoint),
LoRA adapters (lora), FLOPs/MFU accounting (flops, meter). Sharding lives in `auditdm_jax.sharding`."""
