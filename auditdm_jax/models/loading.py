"""A VLM from a model spec dict(variant, res, llm, img, init): a HF safetensors directory, a big_vision .npz, or
(tiny variants only, for tests and smoke runs) random weights. Shared by the audit systems and the answer server."""
import os

import jax
import numpy as np

from auditdm_jax.models import checkpoints
from auditdm_jax.models import vlm


def load_vlm(spec, seed=0):
  """(cfg, host params) for a model spec dict(variant, res, llm, img, init)."""
  cfg = vlm.get_config(spec["variant"], res=spec.get("res"), llm=dict(spec.get("llm") or {}),
                       img=dict(spec.get("img") or {}))
  init = spec.get("init")
  if init and not os.path.exists(init):
    raise FileNotFoundError(f"{spec['variant']} checkpoint `init` {init!r} does not exist (a HF directory or a "
                            f"big_vision .npz)")
  if not init:
    if not cfg.variant.endswith("tiny"):
      raise ValueError(f"{cfg.variant}: set its checkpoint `init` (a HF directory or a big_vision .npz); only tiny "
                       f"variants may be randomly initialised (smoke tests)")
    model = vlm.get_model(cfg)
    tokens = np.zeros((1, 4), np.int32)
    images = np.zeros((1, cfg.res, cfg.res, 3), np.float32)
    # Traced tokens: Gemma3's placeholder-count check runs on concrete tokens only.
    params = jax.jit(lambda r, t: model.init(r, images, t, t)["params"])(jax.random.PRNGKey(seed), tokens)
  elif os.path.isdir(init):
    cfg, params = checkpoints.load_vlm_hf(init, cfg)
  else:
    params = checkpoints.load_npz(init, vlm.abstract_params(cfg))
  return cfg, jax.device_get(params)


def model_spec(cfg):
  """The spec dict(variant, res, llm, img) that rebuilds `cfg` through `vlm.get_config` (every decoder and ViT field
  given as an override): what a fine-tuning config (`train/sft.py` `config.model`) needs for a loaded model."""
  llm = {k: v for k, v in cfg.llm.to_dict().items() if k != "variant"}
  return dict(variant=cfg.variant, res=cfg.res, llm=llm, img=cfg.img.to_dict())
