"""KV-cache sampler: one jitted prefill over prompt embeddings, then a jitted while_loop decode.

  sampler = Sampler(gemma.Model(cfg), params, tokenizer=tok)
  out = sampler.sample(x, attn_mask, positions, max_new_tokens=64, temperature=1.0, top_p=0.95,
                       num_samples=8, rng=jax.random.key(0), stop_tokens=(1, 106))
  out.tokens [B, N, L], out.logprobs [B, N, L], out.lengths [B, N], out.finish_reasons, out.text

Prompts are given as embeddings (from `embed_tokens` or a VLM's `embed_prompt`) with any
[B, T, T] attention mask (causal, prefix-LM, image-bidirectional) and positions; padding is
any token whose mask diagonal is False, so left and right padding both work. Prompt length,
batch and max_new_tokens are padded to buckets so that few shapes are ever compiled
(`Sampler.compile_count`). Logprobs are those of the sampled tokens under the unmodified model
(log_softmax of the raw logits, before temperature / top-k / top-p), as GRPO needs. A
sequence's generated tokens include its stop token; `lengths` counts it, `text` omits it.

Speed (docs/gpu.md): the prefill is one cache-free forward over the prompt that then writes its k/v
(`gemma.Model.prefill`); both read the layer weights laid out for plain matmuls (`gemma.decode_layers`: on one
device made once per call and passed to both, and kept for the params given at construction; with a mesh made in
each function so that tensor-sharded weights keep their sharding; a `scan_layers` model's prefill scans the
checkpoint layout instead), and the decode loop updates the donated cache in place. Each function is compiled
ahead of time per input signature and its compile time logged and kept in `Sampler.compile_seconds`.
"""
import dataclasses
import logging
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from auditdm_jax import compile_log
from auditdm_jax.models import gemma

log = logging.getLogger(__name__)
compile_log.install()  # Every compilation over a second is logged with its function's name.

MAX_STOP_TOKENS = 8  # Stop tokens are a padded array so changing them never recompiles.


def bucket(n, minimum=16, step=256):
  """Smallest power of two >= max(n, minimum) up to `step`, then the next multiple of `step`.

  Past `step` the padding stays under one `step`: a 448px PaliGemma prompt (1024 image tokens + text) pads to
  1280, not 2048, which would double its prefill.
  """
  n = max(int(n), minimum)
  if n > step:
    return -(-n // step) * step
  return 1 << max(0, n - 1).bit_length()


@dataclasses.dataclass
class SampleOutput:
  tokens: np.ndarray  # [B, N, L] int32, pad_id after each sequence's length.
  logprobs: np.ndarray  # [B, N, L] float32, 0 after each sequence's length.
  lengths: np.ndarray  # [B, N] int32, generated tokens including the stop token.
  finish_reasons: list  # [B][N] "stop" or "length".
  text: list | None = None  # [B][N] decoded text (stop token excluded) when a tokenizer is given.


def causal_prompt(input_mask):
  """(attn_mask [B, T, T], positions [B, T]) of a left- or right-padded text prompt [B, T]."""
  input_mask = jnp.asarray(input_mask, bool)
  t = input_mask.shape[1]
  causal = jnp.tril(jnp.ones((t, t), bool))
  attn_mask = causal[None] & input_mask[:, None, :] & input_mask[:, :, None]
  positions = jnp.maximum(jnp.cumsum(input_mask, axis=1) - 1, 0).astype(jnp.int32)
  return attn_mask, positions


def filter_logits(logits, temperature, top_k=0, top_p=1.0):
  """Temperature / top-k / top-p on logits [B, V] -> (candidate logits [B, C], token ids [B, C]).

  top_k and `top_p < 1` are static (they choose the computation); temperature may be traced.
  """
  logits = logits / temperature
  v = logits.shape[-1]
  if top_k or top_p < 1.0:
    logits, ids = jax.lax.top_k(logits, top_k or v)
  else:
    ids = jnp.broadcast_to(jnp.arange(v), logits.shape)
  if top_p < 1.0:
    probs = jax.nn.softmax(logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # Mass of the strictly more likely tokens.
    logits = jnp.where(before < top_p, logits, -jnp.inf)
  return logits, ids


def first_argmax(logits, max_logit=None):
  """argmax over the last axis (the first of tied maxima) as a max and a min reduction, which XLA's CPU backend
  runs several times faster than argmax's paired reduction; `max_logit` [..., 1] if already computed."""
  m = jnp.max(logits, axis=-1, keepdims=True) if max_logit is None else max_logit
  v = logits.shape[-1]
  return jnp.min(jnp.where(logits == m, jnp.arange(v, dtype=jnp.int32), v), axis=-1)


def pick_tokens(logits, keys, temperature, top_k=0, top_p=1.0):
  """Samples one token per row of logits [B, V] with per-row PRNG keys [B] (greedy: `first_argmax`)."""
  cand, ids = filter_logits(logits, temperature, top_k, top_p)
  choice = jax.vmap(jax.random.categorical)(keys, cand)
  return jnp.take_along_axis(ids, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)


class Sampler:
  """Samples continuations of prompt embeddings with a Gemma decoder (`models.gemma.Model`).

  Args:
    model: the decoder module; `params` its params (e.g. a VLM's decoder subtree).
    tokenizer: optional object with `decode(list[int]) -> str` (and `eos_id`, the default stop).
    mesh: optional jax Mesh; the batch is sharded over `data_axes`, params are used as placed.
    cache_dtype: KV cache dtype (default: the model's compute dtype).
    pad_id: token written after a sequence ends.
  """

  def __init__(self, model, params, *, tokenizer=None, mesh=None, data_axes=("data",),
               cache_dtype=None, pad_id=0, min_prompt_bucket=16, min_gen_bucket=16):
    self.model, self.params, self.tokenizer = model, params, tokenizer
    self.mesh, self.data_axes = mesh, tuple(data_axes)
    self.cache_dtype, self.pad_id = cache_dtype, pad_id
    self.min_prompt_bucket, self.min_gen_bucket = min_prompt_bucket, min_gen_bucket
    self.compile_count = 0  # Number of compilations of the prefill and decode functions.
    self.compile_seconds = []  # (function name, seconds) of each compilation, in order.
    self._compiled = {}
    self._own_layers = None  # (self.params, their decode layout), made at their first use.
    self._layout = jax.jit(self._layout_fn)
    self._prefill = jax.jit(self._prefill_fn, static_argnames=("cache_len", "num_samples"))
    self._decode = jax.jit(self._decode_fn, static_argnames=("gen_len", "top_k", "top_p", "greedy"),
                           donate_argnames=("cache",))

  def _run(self, name, fn, *args, **static):
    """Calls jitted `fn`, compiling it ahead of time (timed and logged) on the first call per signature."""
    leaves, treedef = jax.tree.flatten(args)
    key = (name, treedef, tuple(sorted(static.items())),
           tuple((a.shape, a.dtype, getattr(a, "sharding", None)) for a in leaves))
    if key not in self._compiled:
      start = time.perf_counter()
      self._compiled[key] = fn.lower(*args, **static).compile()
      seconds = time.perf_counter() - start
      self.compile_count += 1
      self.compile_seconds.append((name, seconds))
      # At info level, `compile_log` already names every compilation over a second.
      log.debug("Compiled %s in %.1f s: %s", name, seconds, static)
    return self._compiled[key](*args)

  # --------------------------------------------------------------------------- jitted parts

  def _shard_batch(self, tree):
    if self.mesh is None:
      return tree
    spec = lambda a: NamedSharding(self.mesh, P(self.data_axes, *([None] * (a.ndim - 1))))
    return jax.tree.map(lambda a: jax.lax.with_sharding_constraint(a, spec(a)), tree)

  def _layout_fn(self, params):
    """The layer weights laid out for the decode (`gemma.decode_layers`) in the compute dtype."""
    return gemma.decode_layers(gemma.compute_params(params, self.model.config), self.model.config)

  def _layers(self, params):
    """The decode layout of `params` for both functions, or None (each makes its own) with a mesh.

    Made outside the two functions, the layout's copy of the weights is made once per call instead of twice (the
    prefill's copies took a quarter of it on a 2-core CPU), and not at all for the construction's params.
    """
    if self.mesh is not None:
      return None
    if params is not self.params:
      return self._layout(params)
    if self._own_layers is None or self._own_layers[0] is not params:  # Made again if `self.params` is replaced.
      self._own_layers = (params, self._layout(params))
    return self._own_layers[1]

  def _prefill_fn(self, params, layers, x, attn_mask, positions, *, cache_len, num_samples):
    """Prompt [B, T, D] -> (last logits [B*N, V], cache, next position [B*N])."""
    cfg = self.model.config  # A scanned model keeps its scan (and compile time) for the prefill.
    if cfg.scan_layers:
      layers = None
    elif layers is None:
      layers = self._layout_fn(params)
    hidden, cache = self.model.apply({"params": params}, x, positions, attn_mask, cache_len,
                                     self.cache_dtype or cfg.dtype, return_hidden=True, layers=layers,
                                     method=self.model.prefill)
    cache = self._shard_batch(cache)
    valid = jnp.diagonal(attn_mask, axis1=1, axis2=2)
    last_pos = jnp.where(valid, positions, -1)
    last = jnp.argmax(last_pos, axis=1)
    h = jnp.take_along_axis(hidden, last[:, None, None], axis=1)
    logits = self.model.apply({"params": params}, h, out_major=True, method=self.model.unembed)[:, 0]
    next_pos = jnp.max(last_pos, axis=1) + 1
    # GRPO groups: repeat the prefilled cache instead of re-running the prefill.
    rep = lambda a: jnp.repeat(a, num_samples, axis=0)
    return self._shard_batch((rep(logits), jax.tree.map(rep, cache), rep(next_pos)))

  def _decode_fn(self, params, layers, cache, logits, next_pos, keys, temperature, stop_tokens,
                 max_new_tokens, *, gen_len, top_k, top_p, greedy):
    """while_loop decode -> tokens/logprobs [B, gen_len], lengths [B], stopped [B], cache."""
    b = logits.shape[0]
    if layers is None:
      layers = self._layout_fn(params)
    params = gemma.compute_params(params, self.model.config)  # Once, outside the loop.

    def choose(logits, step):
      m = jnp.max(logits, axis=-1, keepdims=True)
      if greedy:
        tok = first_argmax(logits, m)
      else:
        step_keys = jax.vmap(jax.random.fold_in, (0, None))(keys, step)
        tok = pick_tokens(logits, step_keys, temperature, top_k, top_p)
      # log_softmax at the chosen token only: no [B, V] array of log-probs written and read back each step.
      shifted = logits - m
      logp = jnp.take_along_axis(shifted, tok[:, None], axis=-1)[:, 0] - jnp.log(jnp.sum(jnp.exp(shifted), -1))
      return tok, logp

    def record(state, tok, logp):
      step, tokens, logprobs, done, stopped, lengths = state
      tok = jnp.where(done, self.pad_id, tok)
      tokens = tokens.at[:, step].set(tok)
      logprobs = logprobs.at[:, step].set(jnp.where(done, 0.0, logp))
      lengths = lengths + (~done)
      is_stop = (~done) & jnp.any(tok[:, None] == stop_tokens[None, :], axis=1)
      stopped = stopped | is_stop
      done = done | is_stop | (step + 1 >= max_new_tokens)
      return step + 1, tokens, logprobs, done, stopped, lengths

    init = (jnp.int32(0), jnp.full((b, gen_len), self.pad_id, jnp.int32),
            jnp.zeros((b, gen_len), jnp.float32), jnp.zeros(b, bool), jnp.zeros(b, bool),
            jnp.zeros(b, jnp.int32))
    state = record(init, *choose(logits, 0))

    def cond(carry):
      state, _, _ = carry
      return (state[0] < max_new_tokens) & ~jnp.all(state[3])

    def body(carry):
      state, cache, pos = carry
      step, tokens = state[0], state[1]
      x = self.model.apply({"params": params}, tokens[:, step - 1][:, None],
                           method=self.model.embed_tokens)
      logits, cache = self.model.apply({"params": params}, x, pos[:, None],
                                       jnp.ones((b, 1, 1), bool), cache, layers=layers)
      state = record(state, *choose(logits[:, 0], step))
      return state, cache, pos + 1

    state, cache, _ = jax.lax.while_loop(cond, body, (state, cache, next_pos))
    _, tokens, logprobs, _, stopped, lengths = state
    # Returning the cache lets it alias the donated input: the loop updates it in place.
    return tokens, logprobs, lengths, stopped, cache

  # --------------------------------------------------------------------------- public API

  def sample(self, x, attn_mask, positions, *, max_new_tokens, rng=None, temperature=0.0,
             top_k=0, top_p=1.0, num_samples=1, stop_tokens=None, params=None):
    """Samples `num_samples` continuations of each prompt.

    Args:
      x: [B, T, D] prompt embeddings. attn_mask: [B, T, T] bool. positions: [B, T] int.
      max_new_tokens: tokens to generate at most per sequence.
      rng: PRNG key (needed unless greedy); sequence (b, n) uses fold_in(rng, b * N + n), so
        its sample does not depend on the rest of the batch.
      temperature: 0 is greedy. top_k: 0 is off. top_p: 1 is off.
      stop_tokens: ids ending a sequence (default: the tokenizer's eos_id, if any).
      params: the decoder's params for this call (default: those given at construction); the compiled code is
        reused as long as their shapes, dtypes and placement stay the same.
    Returns:
      SampleOutput with arrays [B, N, max_new_tokens].
    """
    params = self._params(params)
    x, attn_mask = jnp.asarray(x), jnp.asarray(attn_mask, bool)
    positions = jnp.asarray(positions, jnp.int32)
    b, t, _ = x.shape
    if attn_mask.shape != (b, t, t) or positions.shape != (b, t):
      raise ValueError(f"Expected attn_mask [B, T, T] and positions [B, T] for x {x.shape}, "
                       f"got {attn_mask.shape} and {positions.shape}")
    if max_new_tokens < 1 or num_samples < 1:
      raise ValueError("max_new_tokens and num_samples must be >= 1")
    greedy = temperature <= 0
    if not greedy and rng is None:
      raise ValueError("Sampling with temperature > 0 needs an rng key")
    if stop_tokens is None:
      eos = getattr(self.tokenizer, "eos_id", None)
      stop_tokens = () if eos is None else (eos,)
    stop_tokens = tuple(int(s) for s in stop_tokens)
    if len(stop_tokens) > MAX_STOP_TOKENS:
      raise ValueError(f"At most {MAX_STOP_TOKENS} stop tokens, got {len(stop_tokens)}")

    # Buckets: prompt length, generation length and batch (a multiple of the data shards).
    tp, gen_len = bucket(t, self.min_prompt_bucket), bucket(max_new_tokens, self.min_gen_bucket)
    shards = 1 if self.mesh is None else int(np.prod([self.mesh.shape[a] for a in self.data_axes]))
    bp = max(bucket(b, 1), shards)
    bp = -(-bp // shards) * shards
    # Padding rows/columns have a False mask diagonal: never attended to, never cached.
    xp = jnp.pad(x, ((0, bp - b), (0, tp - t), (0, 0)))
    mp = jnp.pad(attn_mask, ((0, bp - b), (0, tp - t), (0, tp - t)))
    pp = jnp.pad(positions, ((0, bp - b), (0, tp - t)))
    if int(jnp.max(jnp.where(jnp.diagonal(attn_mask, axis1=1, axis2=2), positions, 0))) >= tp:
      raise ValueError("Positions must be < the padded prompt length")
    xp, mp, pp = self._put((xp, mp, pp))

    rows = np.arange(bp * num_samples, dtype=np.uint32)
    key = jax.random.key(0) if rng is None else rng
    keys = self._put(jax.vmap(jax.random.fold_in, (None, 0))(key, jnp.asarray(rows)))
    stops = np.full(MAX_STOP_TOKENS, -1, np.int32)
    stops[:len(stop_tokens)] = stop_tokens

    layers = self._layers(params)
    logits, cache, next_pos = self._run("prefill", self._prefill, params, layers, xp, mp, pp,
                                        cache_len=tp + gen_len, num_samples=num_samples)
    tokens, logprobs, lengths, stopped, _ = self._run(
        "decode", self._decode, params, layers, cache, logits, next_pos, keys, jnp.float32(max(temperature, 1e-6)),
        jnp.asarray(stops), jnp.int32(max_new_tokens), gen_len=gen_len, top_k=int(top_k),
        top_p=float(top_p), greedy=bool(greedy))

    shape = (bp, num_samples)
    tokens = np.asarray(tokens).reshape(*shape, gen_len)[:b, :, :max_new_tokens]
    logprobs = np.asarray(logprobs).reshape(*shape, gen_len)[:b, :, :max_new_tokens]
    lengths = np.asarray(lengths).reshape(shape)[:b]
    stopped = np.asarray(stopped).reshape(shape)[:b]
    reasons = [["stop" if s else "length" for s in row] for row in stopped]
    text = None
    if self.tokenizer is not None:
      text = [[self.tokenizer.decode(tokens[i, n, :lengths[i, n] - stopped[i, n]].tolist())
               for n in range(num_samples)] for i in range(b)]
    return SampleOutput(tokens, logprobs, lengths, reasons, text)

  def sample_tokens(self, tokens, input_mask=None, params=None, **kwargs):
    """Text prompts: tokens [B, T] (left or right padded, `input_mask` [B, T] marks real tokens).

    `params` and `kwargs` as `sample`."""
    params = self._params(params)
    tokens = np.asarray(tokens, np.int32)
    input_mask = np.ones(tokens.shape, bool) if input_mask is None else np.asarray(input_mask, bool)
    attn_mask, positions = causal_prompt(input_mask)
    x = self.model.apply({"params": params}, jnp.asarray(tokens), method=self.model.embed_tokens)
    return self.sample(x, attn_mask, positions, params=params, **kwargs)

  def lower(self, params, batch, prompt_len, max_new_tokens, *, num_samples=1, top_k=0, top_p=1.0,
            greedy=False):
    """Ahead-of-time lowering of the prefill and decode functions for the buckets of these sizes.

    `params` may be abstract (`jax.ShapeDtypeStruct` leaves): no weights are needed to compile or inspect the
    code. Returns {"prefill": Lowered, "decode": Lowered}; `.compile()` each.
    """
    tp, gen_len = bucket(prompt_len, self.min_prompt_bucket), bucket(max_new_tokens, self.min_gen_bucket)
    bp = bucket(batch, 1)
    dt = self.model.config.dtype
    spec = jax.ShapeDtypeStruct
    prompt = (spec((bp, tp, self.model.config.width), dt), spec((bp, tp, tp), bool), spec((bp, tp), jnp.int32))
    static = dict(cache_len=tp + gen_len, num_samples=num_samples)
    layers = None if self.mesh is not None else jax.eval_shape(self._layout_fn, params)
    logits, cache, next_pos = jax.eval_shape(lambda *a: self._prefill_fn(*a, **static), params, layers, *prompt)
    rows = bp * num_samples
    keys = jax.eval_shape(lambda: jax.random.split(jax.random.key(0), rows))
    scalar = lambda d: spec((), d)
    return dict(
        prefill=self._prefill.lower(params, layers, *prompt, **static),
        decode=self._decode.lower(params, layers, cache, logits, next_pos, keys, scalar(jnp.float32),
                                  spec((MAX_STOP_TOKENS,), jnp.int32), scalar(jnp.int32), gen_len=gen_len,
                                  top_k=top_k, top_p=top_p, greedy=greedy))

  def _params(self, params):
    params = self.params if params is None else params
    if params is None:
      raise ValueError("No params: pass `params=` or give them to the Sampler at construction")
    return params

  def _put(self, tree):
    if self.mesh is None:
      return tree
    spec = lambda a: NamedSharding(self.mesh, P(self.data_axes, *([None] * (a.ndim - 1))))
    return jax.tree.map(lambda a: jax.device_put(a, spec(a)), tree)
