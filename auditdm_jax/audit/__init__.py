"""The AuditDM loop: prompts, answerers, divergence reward, GRPO, rollouts, trainer, generation, rectification,
report."""
