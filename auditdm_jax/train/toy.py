"""A small decoder-only LM with Gemma-style (big_vision) parameter names, to test and benchmark the training stack
(sharding rules, LoRA targets, MFU) without the real models.

Params: `embedder/input_embedding [V, D]`, `layers_i/{pre_attention_norm,pre_ffw_norm}/scale [D]`,
`layers_i/attn/{q_einsum [N, D, H], kv_einsum [2, N, D, H], attn_vec_einsum [N, H, D]}/w`,
`layers_i/mlp/{gating_einsum [2, D, F], linear [F, D]}`, `final_norm/scale [D]`. Output projection tied to the
embedding.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp


class RMSNorm(nn.Module):
  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.initializers.zeros_init(), (x.shape[-1],))
    var = jnp.mean(jnp.square(x.astype(jnp.float32)), axis=-1, keepdims=True)
    return (x * jax.lax.rsqrt(var + 1e-6) * (1 + scale)).astype(x.dtype)


class Einsum(nn.Module):
  shape: tuple

  @nn.compact
  def __call__(self, eqn, x):
    w = self.param("w", nn.initializers.normal(0.02), self.shape)
    return jnp.einsum(eqn, x, w.astype(x.dtype))


class Embedder(nn.Module):
  vocab_size: int
  width: int

  def setup(self):
    # std 1/sqrt(D): scaled by sqrt(D) the embeddings enter the residual stream at unit scale (as Gemma).
    self.input_embedding = self.param("input_embedding", nn.initializers.normal(self.width**-0.5),
                                      (self.vocab_size, self.width))

  def encode(self, tokens, dtype):
    return jnp.take(self.input_embedding, tokens, axis=0).astype(dtype) * jnp.sqrt(self.width).astype(dtype)

  def decode(self, x):
    return jnp.einsum("BTD,VD->BTV", x, self.input_embedding.astype(x.dtype))


class Attention(nn.Module):
  num_heads: int
  head_dim: int

  @nn.compact
  def __call__(self, x, mask):
    """x: [B, T, D], mask: [B, T, T] bool -> [B, T, D]."""
    n, h, d = self.num_heads, self.head_dim, x.shape[-1]
    q = Einsum((n, d, h), name="q_einsum")("BTD,NDH->BTNH", x)
    k, v = Einsum((2, n, d, h), name="kv_einsum")("BSD,CNDH->CBSNH", x)
    logits = jnp.einsum("BTNH,BSNH->BNTS", q, k).astype(jnp.float32) * h**-0.5
    logits = jnp.where(mask[:, None], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(x.dtype)
    out = jnp.einsum("BNTS,BSNH->BTNH", probs, v)
    return Einsum((n, h, d), name="attn_vec_einsum")("BTNH,NHD->BTD", out)


class MLP(nn.Module):
  hidden_dim: int

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    gating = self.param("gating_einsum", nn.initializers.normal(0.02), (2, d, self.hidden_dim)).astype(x.dtype)
    linear = self.param("linear", nn.initializers.normal(0.02), (self.hidden_dim, d)).astype(x.dtype)
    h = nn.gelu(x @ gating[0]) * (x @ gating[1])
    return h @ linear


class Block(nn.Module):
  num_heads: int
  head_dim: int
  mlp_dim: int

  @nn.compact
  def __call__(self, x, mask):
    x = x + Attention(self.num_heads, self.head_dim, name="attn")(RMSNorm(name="pre_attention_norm")(x), mask)
    return x + MLP(self.mlp_dim, name="mlp")(RMSNorm(name="pre_ffw_norm")(x))


class TinyLM(nn.Module):
  """Causal LM: tokens [B, T] int -> logits [B, T, V] float32."""
  vocab_size: int = 256
  width: int = 64
  depth: int = 2
  num_heads: int = 4
  head_dim: int = 16
  mlp_dim: int = 128
  dtype: str = "float32"

  @nn.compact
  def __call__(self, tokens):
    embedder = Embedder(self.vocab_size, self.width, name="embedder")
    x = embedder.encode(tokens, self.dtype)
    t = tokens.shape[1]
    mask = jnp.broadcast_to(jnp.tril(jnp.ones((t, t), bool)), (tokens.shape[0], t, t))
    for i in range(self.depth):
      x = Block(self.num_heads, self.head_dim, self.mlp_dim, name=f"layers_{i}")(x, mask)
    x = RMSNorm(name="final_norm")(x)
    return embedder.decode(x).astype(jnp.float32)


def init_params(model, rng, seq_len=8):
  """Params as a plain nested dict."""
  return model.init(rng, jnp.zeros((1, seq_len), jnp.int32))["params"]


def next_token_loss(model):
  """`loss_fn(params, batch, rng)` for `batch = {"tokens": [B, T] int}`: mean next-token cross-entropy."""
  def loss_fn(params, batch, rng):
    del rng
    tokens = batch["tokens"]
    logits = model.apply({"params": params}, tokens[:, :-1])
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
    loss = jnp.mean(nll)
    return loss, {"nll": loss}
  return loss_fn
