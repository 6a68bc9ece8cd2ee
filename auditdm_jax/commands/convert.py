"""`auditdm convert`: VLM checkpoints between HF safetensors directories and our big_vision-style .npz.

  auditdm convert --src ~/ckpt/paligemma2-3b-pt-224 --dst pg2_3b_224.npz [--dtype bfloat16]
  auditdm convert --src pg2_3b_224.npz --dst ~/out/pg2-hf            # config from pg2_3b_224.npz.json
  auditdm convert --src params.npz --variant paligemma2_3b --res 448 --dst ~/out/pg2-448-hf

A HF source is a directory with config.json and *.safetensors (PaliGemma2 or Gemma3 multimodal, any of the key
layouts transformers has used). Writing .npz also writes `<dst>.json`: our VLM config, so the file converts back.
"""
import json
import logging
import os

import jax
import ml_collections
import ml_dtypes
import numpy as np

from auditdm_jax import errors
from auditdm_jax import io
from auditdm_jax.models import checkpoints
from auditdm_jax.models import vlm

HELP = "convert PaliGemma2 / Gemma3 checkpoints: HF safetensors dir <-> our .npz (big_vision names)"
DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}  # Weights are floats.
log = logging.getLogger(__name__)


def add_arguments(parser):
  parser.add_argument("--src", required=True, help="HF model directory or .npz file")
  parser.add_argument("--dst", required=True, help="output .npz file or HF directory")
  parser.add_argument("--variant", help="VLM variant of a .npz source (default: read <src>.json)")
  parser.add_argument("--res", type=int, help="image resolution of a .npz source given by --variant")
  parser.add_argument("--dtype", choices=sorted(DTYPES), help="dtype of the written params (default: keep)")


def _kind(path):
  return "npz" if path.endswith(".npz") else "hf"


def _npz_config(args):
  if args.variant:
    return vlm.get_config(args.variant, res=args.res)
  sidecar = args.src + ".json"
  if not os.path.exists(sidecar):
    raise errors.InputError(f"needs --variant (no {sidecar})", args.src)
  with open(sidecar, encoding="utf-8") as f:
    return ml_collections.ConfigDict(json.load(f))


def run(args):
  src, dst = os.path.expanduser(args.src), os.path.expanduser(args.dst)
  args.src = src
  if not os.path.exists(src):
    raise FileNotFoundError(2, "no such checkpoint file or directory", src)
  dtype = DTYPES[args.dtype] if args.dtype else None
  # Conversion is host work: keep the params in host memory, not on an accelerator.
  on_host = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
  with checkpoints.reading(src):
    if _kind(src) == "hf":
      cfg = checkpoints.config_from_hf(src)
      abstract = vlm.abstract_params(cfg)
      _, params = checkpoints.load_vlm_hf(src, cfg, shardings=jax.tree.map(lambda _: on_host, abstract))
    else:
      cfg = _npz_config(args)
      abstract = vlm.abstract_params(cfg)
      params = checkpoints.load_npz(src, abstract, shardings=jax.tree.map(lambda _: on_host, abstract))
  log.info("loaded %s (%s, %d params)", src, cfg.variant, sum(x.size for x in jax.tree.leaves(params)))
  if _kind(dst) == "npz":
    if dtype is not None:
      params = jax.tree.map(lambda x: np.asarray(x).astype(dtype), params)
    checkpoints.save_npz(dst, params)
    io.write_text(dst + ".json", cfg.to_json(indent=2))
  else:
    checkpoints.export_vlm_hf(dst, cfg, params, dtype=dtype)
  log.info("wrote %s", dst)
