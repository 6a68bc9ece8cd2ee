"""Train-step benchmark: step time, tokens/s and MFU of one model under several shardings on the same devices.

Prints one JSON line. Each run is named by its mesh: `single` (plain jit on one device, the unsharded
baseline), `data=-1` (replicated params, pure data parallel), `fsdp=-1` (params + optimizer state sharded), ...

  python -m auditdm_jax.tools.bench_train --model toy --width 256 --depth 4 --seq 128 --batch 8
  python -m auditdm_jax.tools.bench_train --model vlm:paligemma2_3b --res 448 --seq 64 --batch 8 \
      --dtype bfloat16 --remat nothing_saveable --meshes "fsdp=-1"

MFU uses analytic model FLOPs (`train/flops.py`: 6 N per token + attention, no rematerialisation), null on CPU (no
peak FLOP/s). XLA's own FLOP count of the compiled step is not reported: on GPU it misses most of the work (it
gave 1.7% against the analytic 31.6% for PaliGemma2-3B on an H200). The load average and thread counts are
recorded beside the figures; `--require_idle` refuses to run on a machine busier than its cores.
"""
import argparse
import json
import logging
import time

import jax
import jax.numpy as jnp
import numpy as np

from auditdm_jax import sharding
from auditdm_jax.models import vlm
from auditdm_jax.tools import machine
from auditdm_jax.train import cross_entropy
from auditdm_jax.train import flops as flops_lib
from auditdm_jax.train import optim, step, toy

log = logging.getLogger(__name__)


def parse_mesh(text):
  """"single" -> None; "fsdp=4,tensor=2" -> dict(fsdp=4, tensor=2)."""
  if text == "single":
    return None
  out = {}
  for part in text.split(","):
    key, _, value = part.partition("=")
    if key not in sharding.AXES or not value:
      raise ValueError(f"bad mesh spec {text!r}: expected 'single' or 'data=..,fsdp=..,tensor=..'")
    out[key] = int(value)
  return out


def toy_setup(args):
  """(init_fn(rng) -> params, loss_fn, batch_fn(batch) -> numpy batch, model FLOPs per step, tokens per step)."""
  model = toy.TinyLM(vocab_size=args.vocab, width=args.width, depth=args.depth, num_heads=args.heads,
                     head_dim=args.head_dim, mlp_dim=args.mlp_dim, dtype=args.dtype)
  shapes = jax.eval_shape(lambda: toy.init_params(model, jax.random.key(0), args.seq))
  n_matmul = flops_lib.count_params(shapes, exclude="embedder") + args.vocab * args.width  # tied unembedding
  tokens = args.batch * args.seq
  model_flops = flops_lib.transformer_train_flops(n_matmul, tokens, args.depth, args.seq, args.heads * args.head_dim)
  batch_fn = lambda rng: {"tokens": rng.integers(0, args.vocab, (args.batch, args.seq + 1), dtype=np.int32)}
  init_fn = lambda rng: toy.init_params(model, rng, args.seq)
  return dict(init=init_fn, loss=toy.next_token_loss(model), batch=batch_fn, flops=model_flops, tokens=tokens,
              params=flops_lib.count_params(shapes), name=f"toy(D={args.width},L={args.depth})")


def vlm_setup(args, variant):
  """PaliGemma-family VLM with random weights: images [B, res, res, 3] + text [B, seq] next-token loss."""
  remat = args.remat or "none"
  # Scanned layers compile once per stack instead of once per layer (the ViT's param layout changes with it).
  cfg = vlm.get_config(variant, res=args.res, llm=dict(dtype=args.dtype, remat_policy=remat, scan_layers=args.scan),
                       img=dict(dtype=args.dtype, remat_policy=remat, scan=args.scan))
  if cfg.family != "paligemma":
    raise ValueError(f"bench_train supports PaliGemma-family VLMs, got {variant} ({cfg.family})")
  model = vlm.get_model(cfg)
  shapes = vlm.abstract_params(cfg)
  llm, seq, b = cfg.llm, args.seq, args.batch
  patch = int(str(cfg.img.variant).split("/")[-1])
  n_img_tokens = (args.res // patch) ** 2
  n_img = flops_lib.count_params(shapes["img"], exclude="pos_embedding")
  n_llm = flops_lib.count_params(shapes["llm"], exclude="embedder")
  dec_len = n_img_tokens + seq
  img_flops = flops_lib.transformer_train_flops(n_img, b * n_img_tokens, _vit_depth(shapes["img"]), n_img_tokens,
                                                shapes["img"]["Transformer"]["encoder_norm"]["scale"].shape[-1])
  llm_flops = flops_lib.transformer_train_flops(n_llm, b * dec_len, llm.depth, dec_len, llm.num_heads * llm.head_dim)
  unembed_flops = 6.0 * llm.vocab_size * llm.width * b * seq

  def loss_fn(params, batch, rng):
    del rng
    tokens = batch["tokens"]
    logits = model.apply({"params": params}, batch["images"], tokens, jnp.ones_like(tokens))
    return -jnp.mean(cross_entropy.token_logprobs(logits[:, :-1], tokens[:, 1:])), {}

  def batch_fn(rng):
    return {"images": rng.uniform(-1, 1, (b, args.res, args.res, 3)).astype(np.float32),
            "tokens": rng.integers(0, llm.vocab_size, (b, seq), dtype=np.int32)}

  def init_fn(rng):
    tokens = jnp.zeros((1, 4), jnp.int32)
    return model.init(rng, jnp.zeros((1, args.res, args.res, 3)), tokens, tokens)["params"]
  return dict(init=init_fn, loss=loss_fn, batch=batch_fn, flops=img_flops + llm_flops + unembed_flops,
              tokens=b * dec_len, params=flops_lib.count_params(shapes), name=f"{variant}@{args.res}px")


def _vit_depth(img_shapes):
  blocks = img_shapes["Transformer"]
  if "encoderblock" in blocks:  # scanned: leading layer axis
    return jax.tree.leaves(blocks["encoderblock"])[0].shape[0]
  return len([k for k in blocks if k.startswith("encoderblock_")])


def run(setup, mesh_cfg, args):
  """Compiles and times the train step under one mesh -> dict of results."""
  tx, sched = optim.make_optimizer(dict(lr=1e-4, wd=1e-4, grad_clip_norm=1.0))
  rng = jax.random.key(0)
  data_rng = np.random.default_rng(0)
  if mesh_cfg is None:
    mesh, shardings = None, None
    params = jax.jit(setup["init"])(rng)
  else:
    mesh = sharding.make_mesh(mesh_cfg)
    shardings = sharding.param_shardings(jax.eval_shape(setup["init"], rng), mesh)
    params = jax.jit(setup["init"], out_shardings=shardings)(rng)
  opt_state = step.init_opt_state(tx, params, mesh, shardings)
  train_step = step.make_train_step(setup["loss"], tx, mesh=mesh, param_shardings=shardings, schedule_fn=sched,
                                    grad_accum_steps=args.grad_accum)
  put = (lambda b: b) if mesh is None else (lambda b: sharding.shard_batch(b, mesh))
  batch = put(setup["batch"](data_rng))

  t0 = time.perf_counter()
  compiled = train_step.lower(params, opt_state, batch, rng).compile()
  compile_s = time.perf_counter() - t0
  params, opt_state, metrics = compiled(params, opt_state, batch, rng)  # warm-up
  jax.block_until_ready(metrics)
  times = []
  for _ in range(args.steps):
    batch = put(setup["batch"](data_rng))
    t = time.perf_counter()
    params, opt_state, metrics = compiled(params, opt_state, batch, rng)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t)
  step_time = float(np.median(times))
  n_dev = 1 if mesh is None else mesh.size
  mfu = flops_lib.mfu(setup["flops"], step_time, n_dev)
  return {"name": "single" if mesh_cfg is None else ",".join(f"{k}={v}" for k, v in mesh_cfg.items()),
          "devices": n_dev, "step_time_s": step_time, "tokens_per_s": setup["tokens"] / step_time,
          "mfu": mfu, "compile_s": compile_s, "loss": float(metrics["loss"])}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="toy", help="'toy' or 'vlm:<variant>' (e.g. vlm:paligemma2_3b)")
  parser.add_argument("--meshes", default="single;data=-1;fsdp=-1", help="';'-separated: single | a=n,b=m")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--seq", type=int, default=128, help="text tokens per example")
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--grad_accum", type=int, default=1)
  parser.add_argument("--dtype", default="float32", help="compute dtype (params stay float32)")
  parser.add_argument("--remat", default=None, help="VLM remat policy, e.g. nothing_saveable")
  parser.add_argument("--scan", action="store_true", help="VLM: scan the ViT and decoder layers")
  parser.add_argument("--res", type=int, default=224, help="VLM image resolution")
  parser.add_argument("--vocab", type=int, default=1024)
  parser.add_argument("--width", type=int, default=256)
  parser.add_argument("--depth", type=int, default=4)
  parser.add_argument("--heads", type=int, default=4)
  parser.add_argument("--head_dim", type=int, default=64)
  parser.add_argument("--mlp_dim", type=int, default=1024)
  parser.add_argument("--require_idle", action="store_true", help="refuse to run when load average > cores")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.WARNING)
  machine_before = machine.check_idle(args.require_idle)

  if args.model == "toy":
    setup = toy_setup(args)
  elif args.model.startswith("vlm:"):
    setup = vlm_setup(args, args.model.split(":", 1)[1])
  else:
    raise ValueError(f"unknown --model {args.model!r}: 'toy' or 'vlm:<variant>'")
  runs = [run(setup, parse_mesh(m.strip()), args) for m in args.meshes.split(";") if m.strip()]
  device = jax.devices()[0]
  result = {"bench": "train_step", "model": setup["name"], "params": setup["params"], "batch": args.batch,
            "tokens_per_step": setup["tokens"], "model_flops_per_step": setup["flops"], "dtype": args.dtype,
            "device_kind": device.device_kind, "platform": device.platform, "num_devices": jax.device_count(),
            "peak_flops_per_device": flops_lib.peak_flops(device), "baseline": "single", "runs": runs,
            "machine_before": machine_before, "machine_after": machine.load()}
  print(json.dumps(result))
  return result


if __name__ == "__main__":
  main()
