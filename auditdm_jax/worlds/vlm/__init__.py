"""The real-model world: PaliGemma2 / Gemma3 targets, JAX and HTTP references, a FLUX image service."""
