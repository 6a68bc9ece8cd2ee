"""Small command-line tools (`python -m auditdm_jax.tools.<name>`): benchmarks and utilities."""
