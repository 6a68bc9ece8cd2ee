"""auditdm-jax: AuditDM (auditing MLLMs for capability gaps) in JAX/Flax."""
__version__ = "0.1.0"
