"""Cross-entropy over large vocabularies without a float32 copy of the logits.

`log_softmax(logits.astype(f32))` stores a float32 [B, T, V] array (for Gemma's 257k vocabulary, 1 GB per 1024
tokens) and reads it back for the pick; here the float32 conversion lives inside the logsumexp reduction and the
pick reads one logit per token, so XLA fuses the whole forward into one pass over the (bf16) logits, and the
backward's softmax is likewise formed inside one fusion.
"""
import jax
import jax.numpy as jnp


def token_logprobs(logits, targets):
  """log p(targets) [...] under logits [..., V] (any float dtype), in float32."""
  picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0].astype(jnp.float32)
  return picked - jax.nn.logsumexp(logits.astype(jnp.float32), axis=-1)


def mean_logprob(logits):
  """Mean over the vocabulary of log p(v) [...] (the label-smoothing term), in float32."""
  return jnp.mean(logits.astype(jnp.float32), axis=-1) - jax.nn.logsumexp(logits.astype(jnp.float32), axis=-1)
