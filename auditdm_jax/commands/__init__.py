"""One module per `auditdm` subcommand; see auditdm_jax/main.py for the protocol."""
