"""One-command GPU check: decode and train speed at real sizes, and the audit loop's stages at the paper's sizes.

  python -m auditdm_jax.tools.gpu_check                      # everything; sized for ~8 min on one H200 (not yet run)
  python -m auditdm_jax.tools.gpu_check --sections decode --budget_s 200
  python -m auditdm_jax.tools.gpu_check --small              # the same code on tiny models (CPU, tests)

Random weights of the real shapes, built on the device (no checkpoints, no hub). Prints one JSON line per figure as
it is measured (so a run cut short still reports what it finished), and a last line with all of them:
- env: device, versions, load average, thread counts, the measured device-to-device copy bandwidth;
- decode: Gemma3-4B bf16, greedy, ragged left-padded prompts of <= 256 tokens, batch 64 (128 new tokens) and 256
  (64 new tokens): ms per decode step (from a 1-token and an N-token call in the same compiled buckets), the bytes a
  step must read (weights + KV cache buffers) over the HBM bandwidth (datasheet and measured), compile seconds of
  the prefill and decode functions;
- train: the PaliGemma2-3B@224 train step of `bench_train` (seq 128, batch 16, bf16, layers scanned as the transfer
  configs train them): step time, MFU;
- audit: the audit loop's stages (issue 14 item 5) at the paper's sizes: Gemma3-4B auditor (896px) sampling
  256 rollouts (32 images x G=8, 64 new tokens), image editing, a PaliGemma2-3B@448 target and a reference of the
  same shapes answering the 256 pairs (16 tokens), the reward, and the auditor's GRPO update (8 micro-batches,
  remat); seconds per stage for each step. Image editing is the `identity` backend (no FLUX on the device) and the
  texts are token ids of random models (no tokenizer), so the reward is computed on meaningless strings: this
  measures the loop's cost, not its behaviour.
A section that would start after `--budget_s` is skipped and says so; a section that fails reports its error and
the next one runs. The audit section holds ~100 GB at once: run with XLA_PYTHON_CLIENT_MEM_FRACTION=0.95.
"""
import argparse
import json
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax

from auditdm_jax import sampling
from auditdm_jax.audit import divergence
from auditdm_jax.audit import grpo
from auditdm_jax.imagegen import get_generator
from auditdm_jax.models import gemma
from auditdm_jax.models import vlm
from auditdm_jax.tools import bench_train
from auditdm_jax.tools import machine
from auditdm_jax.train import cross_entropy
from auditdm_jax.train import step as step_lib

HBM_BYTES_PER_S = {"H200": 4.8e12, "H100": 3.35e12}  # Datasheet; the measured copy bandwidth is reported beside.


def emit(record, results):
  results.append(record)
  print(json.dumps(record), flush=True)


def copy_bandwidth(n_bytes):
  """Device-to-device copy rate (bytes read + written per second), median of 5 after a warm-up."""
  x = jnp.ones(n_bytes // 4, jnp.float32)
  copy = jax.jit(lambda a: a + 1.0)  # One elementwise pass: a read and a write per element, nothing to simplify.
  copy(x).block_until_ready()
  times = []
  for _ in range(5):
    t = time.perf_counter()
    copy(x).block_until_ready()
    times.append(time.perf_counter() - t)
  return 2 * x.nbytes / float(np.median(times))


def hbm_peak(device):
  return next((v for k, v in HBM_BYTES_PER_S.items() if k in device.device_kind), None)


def init_on_device(model, *args):
  """Random params built on the device by `model.init` (no host round trip for billions of weights)."""
  return jax.jit(lambda rng: model.init(rng, *args)["params"])(jax.random.key(0))


def tree_bytes(tree):
  return int(sum(np.prod(a.shape) * jnp.dtype(a.dtype).itemsize for a in jax.tree.leaves(tree)))


def ragged_prompts(rng, batch, length, vocab):
  lengths = rng.integers(length // 2, length + 1, batch)
  mask = np.arange(length)[None] >= (length - lengths)[:, None]
  return np.where(mask, rng.integers(3, vocab, (batch, length)), 0).astype(np.int32), mask


def check_decode(cfg, params, batch, prompt_len, new_tokens, bandwidth):
  """Decode speed of one batch size (see the module docstring)."""
  tokens, mask = ragged_prompts(np.random.default_rng(batch), batch, prompt_len, cfg.vocab_size)
  # Gen bucket = new_tokens for the 1-token call too: both calls share one compiled prefill and decode.
  sampler = sampling.Sampler(gemma.Model(cfg), params, min_gen_bucket=new_tokens)
  run = lambda n: jax.block_until_ready(
      sampler.sample_tokens(tokens, mask, max_new_tokens=n, stop_tokens=()).tokens)
  t = time.perf_counter()
  run(new_tokens)
  first_s = time.perf_counter() - t

  def best(n, reps=2):
    times = []
    for _ in range(reps):
      t = time.perf_counter()
      run(n)
      times.append(time.perf_counter() - t)
    return min(times)
  one, full = best(1), best(new_tokens)
  step_s = (full - one) / (new_tokens - 1)
  cache_len = sampling.bucket(prompt_len) + sampling.bucket(new_tokens, new_tokens)
  cache = jax.eval_shape(lambda: gemma.init_cache(cfg, batch, cache_len))
  need = tree_bytes(params) + tree_bytes(cache)
  peak = hbm_peak(jax.devices()[0])
  return dict(
      section="decode", model=cfg.variant, dtype=cfg.dtype, batch=batch, prompt_len=prompt_len,
      new_tokens=new_tokens, step_ms=round(step_s * 1e3, 3), decode_tokens_per_s=round(batch / step_s, 1),
      prefill_plus_one_s=round(one, 4), total_s=round(full, 4), first_call_s=round(first_s, 2),
      compile_s={name: round(s, 2) for name, s in sampler.compile_seconds},
      param_bytes=tree_bytes(params), cache_bytes=tree_bytes(cache),
      roofline_frac=round(need / peak / step_s, 3) if peak else None,
      roofline_frac_measured_bw=round(need / bandwidth / step_s, 3))


def decode_section(args, bandwidth, emit_fn):
  variant = "gemma3_tiny" if args.small else "gemma3_4b"
  cfg = gemma.get_config(variant, dtype="bfloat16", param_dtype="bfloat16")
  params = init_on_device(gemma.Model(cfg), jnp.zeros((1, 1, cfg.width)), jnp.zeros((1, 1), jnp.int32),
                          jnp.ones((1, 1, 1), bool))
  prompt = 16 if args.small else 256
  for batch, new in ((4, 8), (8, 4)) if args.small else ((64, 128), (256, 64)):
    emit_fn(check_decode(cfg, params, batch, prompt, new, bandwidth))


def train_section(args, emit_fn):
  ns = types.SimpleNamespace(res=32 if args.small else 224, seq=16 if args.small else 128,
                             batch=2 if args.small else 16, dtype="bfloat16", remat=None, steps=3 if args.small else 5,
                             grad_accum=1, scan=True)  # As the transfer configs train.
  setup = bench_train.vlm_setup(ns, "paligemma2_tiny" if args.small else "paligemma2_3b")
  result = bench_train.run(setup, None, ns)
  emit_fn(dict(section="train", model=setup["name"], batch=ns.batch, seq=ns.seq, dtype=ns.dtype, scan=ns.scan,
               step_time_s=round(result["step_time_s"], 4), mfu=result["mfu"] and round(result["mfu"], 4),
               compile_s=round(result["compile_s"], 2), tokens_per_s=round(result["tokens_per_s"], 1)))


class AuditSmoke:
  """The audit loop's stages with random weights (see the module docstring); `step()` -> seconds per stage."""

  def __init__(self, small):
    self.small = small
    self.images_per_step, self.group = (2, 4) if small else (32, 8)
    self.new_tokens, self.answer_tokens = (6, 4) if small else (64, 16)
    self.accum = 2 if small else 8
    remat = dict(remat_policy="nothing_saveable")
    self.aud_cfg = vlm.get_config("gemma3_tiny" if small else "gemma3_4b",
                                  llm=dict(dtype="bfloat16", **remat), img=dict(dtype="bfloat16", **remat))
    self.tgt_cfg = vlm.get_config("paligemma2_tiny" if small else "paligemma2_3b", res=32 if small else 448,
                                  llm=dict(dtype="bfloat16", param_dtype="bfloat16"),
                                  img=dict(dtype="bfloat16", param_dtype="bfloat16"))
    self.aud, self.tgt = vlm.get_model(self.aud_cfg), vlm.get_model(self.tgt_cfg)
    res = self.aud_cfg.res
    self.aud_params = jax.jit(lambda r, t: self.aud.init(r, jnp.zeros((1, res, res, 3)), t)["params"])(
        jax.random.key(0), jnp.full((1, self.aud_cfg.mm_tokens_per_image), self.aud_cfg.image_token_id))
    tgt_init = lambda seed: jax.jit(lambda r, t: self.tgt.init(
        r, jnp.zeros((1, self.tgt_cfg.res, self.tgt_cfg.res, 3)), t, t)["params"])(
            jax.random.key(seed), jnp.zeros((1, 4), jnp.int32))
    # Target and reference share shapes, so they share one compiled sampler (params passed per call).
    self.answer_params = [tgt_init(1), tgt_init(2)]
    self.aud_sampler = sampling.Sampler(gemma.Model(self.aud_cfg.llm), None)
    self.tgt_sampler = sampling.Sampler(gemma.Model(self.tgt_cfg.llm), None)
    self.aud_embed = jax.jit(lambda p, im, t, m: self.aud.apply({"params": p}, im, t, m, method=self.aud.embed_prompt))
    self.tgt_embed = jax.jit(lambda p, im, t, m: self.tgt.apply({"params": p}, im, t, m, method=self.tgt.embed_prompt))
    self.resize = jax.jit(lambda im: jax.image.resize(im, (im.shape[0], self.tgt_cfg.res, self.tgt_cfg.res, 3),
                                                      "bilinear"))
    self.generator = get_generator("identity")
    self.tx = optax.adamw(3e-6)
    self.opt_state = jax.jit(self.tx.init)(self.aud_params)
    self.train_step = step_lib.make_train_step(self._loss, self.tx, grad_accum_steps=self.accum)
    self.rng = np.random.default_rng(0)

  def _auditor_prompt(self, n):
    """Left-padded chat-like prompts: text ids around one image block of placeholders, [n, P] and mask."""
    cfg = self.aud_cfg
    text = 8 if self.small else 64
    ids = self.rng.integers(3, 1000, (n, text + cfg.mm_tokens_per_image)).astype(np.int32)
    ids[:, 4:4 + cfg.mm_tokens_per_image] = cfg.image_token_id
    return ids, np.ones_like(ids, bool)

  def _loss(self, params, batch, rng):
    del rng
    p = batch["prompt"].shape[1]
    tokens = jnp.concatenate([batch["prompt"], batch["tokens"]], axis=1)
    input_mask = jnp.concatenate([batch["prompt_mask"], batch["mask"] > 0], axis=1)
    logits = self.aud.apply({"params": params}, batch["images"], tokens, None, input_mask)
    logp = cross_entropy.token_logprobs(logits[:, p - 1:-1], batch["tokens"])
    loss, metrics = grpo.policy_loss(logp, batch["old_logp"], batch["advantages"], batch["mask"],
                                     ref_logp=batch["old_logp"])
    return loss, {k: v for k, v in metrics.items() if k != "loss"}

  def step(self, k):
    cfg, b, g = self.aud_cfg, self.images_per_step, self.group
    n = b * g
    times = {}
    images = self.rng.integers(0, 256, (b, cfg.res, cfg.res, 3)).astype(np.uint8)
    to_model = lambda im: jnp.asarray(im, jnp.float32) / 127.5 - 1.0

    t = time.perf_counter()
    prompt, prompt_mask = self._auditor_prompt(b)
    x, attn, pos = self.aud_embed(self.aud_params, to_model(images), prompt, prompt_mask)
    out = self.aud_sampler.sample(x, attn, pos, params=self.aud_params["llm"], max_new_tokens=self.new_tokens,
                                  rng=jax.random.key(k), temperature=1.0, num_samples=g, stop_tokens=(1,))
    times["auditor_rollout"] = time.perf_counter() - t

    t = time.perf_counter()
    instructions = [" ".join(map(str, r[:l])) for r, l in zip(out.tokens.reshape(n, -1), out.lengths.reshape(n))]
    edited = self.generator.edit(list(np.repeat(images, g, axis=0)), instructions, list(range(n)))
    cf_images = np.stack([np.asarray(e, np.uint8) for e in edited])
    times["image_generation_identity"] = time.perf_counter() - t

    answers = []
    for i, params in enumerate(self.answer_params):
      t = time.perf_counter()
      q = self.rng.integers(3, 1000, (n, 24 if not self.small else 6)).astype(np.int32)
      x, attn, pos = self.tgt_embed(params, self.resize(to_model(cf_images)), q, np.ones_like(q, bool))
      ans = self.tgt_sampler.sample(x, attn, pos, params=params["llm"], max_new_tokens=self.answer_tokens,
                                    stop_tokens=(1,))
      answers.append([" ".join(map(str, r[:l])) for r, l in zip(ans.tokens[:, 0], ans.lengths[:, 0])])
      times["target_answer" if i == 0 else "reference_answer"] = time.perf_counter() - t

    t = time.perf_counter()
    parts = divergence.batch_rewards(answers[0], answers[1:])
    rewards = np.asarray(parts["reward"], np.float32)
    advantages = np.asarray(grpo.advantages(jnp.asarray(rewards), g))
    times["reward"] = time.perf_counter() - t

    t = time.perf_counter()
    length = out.tokens.shape[-1]
    batch = dict(images=to_model(np.repeat(images, g, axis=0)), prompt=np.repeat(prompt, g, axis=0),
                 prompt_mask=np.repeat(prompt_mask, g, axis=0), tokens=out.tokens.reshape(n, length),
                 mask=(np.arange(length)[None] < out.lengths.reshape(n, 1)).astype(np.float32),
                 old_logp=out.logprobs.reshape(n, length), advantages=advantages)
    self.aud_params, self.opt_state, metrics = self.train_step(self.aud_params, self.opt_state, batch,
                                                               jax.random.key(k))
    loss = float(metrics["loss"])
    times["grpo_update"] = time.perf_counter() - t
    return dict(section="audit", step=k, rollouts=n, seconds={s: round(v, 3) for s, v in times.items()},
                total_s=round(sum(times.values()), 3), loss=round(loss, 5),
                auditor_compile_s={s: round(v, 2) for s, v in self.aud_sampler.compile_seconds},
                answer_compile_s={s: round(v, 2) for s, v in self.tgt_sampler.compile_seconds})


def audit_section(args, start, emit_fn):
  t = time.perf_counter()
  smoke = AuditSmoke(args.small)
  emit_fn(dict(section="audit", setup_s=round(time.perf_counter() - t, 1),
               params=dict(auditor=vlm.count_params(smoke.aud_cfg)["total"],
                           target=vlm.count_params(smoke.tgt_cfg)["total"])))
  for k in range(args.audit_steps):
    if k and time.perf_counter() - start > args.budget_s + 60:
      emit_fn(dict(section="audit", skipped=f"steps after {k}: budget"))
      break
    emit_fn(smoke.step(k))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sections", default="decode,train,audit")
  parser.add_argument("--budget_s", type=float, default=450.0, help="no section starts after this many seconds")
  parser.add_argument("--audit_steps", type=int, default=3)
  parser.add_argument("--small", action="store_true", help="tiny models (a CPU run of the same code)")
  args = parser.parse_args(argv)
  start = time.perf_counter()
  results = []
  emit_fn = lambda r: emit(r, results)
  sections = dict(decode=lambda: decode_section(args, bandwidth, emit_fn), train=lambda: train_section(args, emit_fn),
                  audit=lambda: audit_section(args, start, emit_fn))
  names = args.sections.split(",")
  if set(names) - set(sections):
    raise ValueError(f"unknown sections {sorted(set(names) - set(sections))}; known: {sorted(sections)}")
  device = jax.devices()[0]
  bandwidth = copy_bandwidth(1 << (22 if args.small else 32))
  emit_fn(dict(section="env", device=device.device_kind, platform=device.platform, jax=jax.__version__,
               copy_bytes_per_s=round(bandwidth), hbm_datasheet_bytes_per_s=hbm_peak(device),
               date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), **machine.load()))
  for name in names:
    elapsed = time.perf_counter() - start
    if elapsed > args.budget_s:
      emit_fn(dict(section=name, skipped=f"budget: {elapsed:.0f} s used of {args.budget_s:.0f}"))
      continue
    t = time.perf_counter()
    try:
      sections[name]()
    except Exception as e:  # pylint: disable=broad-except
      # One section failing (e.g. out of memory) must not hide the others' figures.
      emit_fn(dict(section=name, error=f"{type(e).__name__}: {str(e)[:500]}"))
    emit_fn(dict(section=name, wall_s=round(time.perf_counter() - t, 1)))
  print(json.dumps(dict(gpu_check=results)), flush=True)
  return results


if __name__ == "__main__":
  main()
