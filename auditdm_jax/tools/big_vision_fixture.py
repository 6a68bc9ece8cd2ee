"""Builds the big_vision parity fixture: a tiny PaliGemma2 made, run and named by big_vision's own code.

  git clone https://github.com/google-research/big_vision /tmp/big_vision
  python -m auditdm_jax.tools.big_vision_fixture --big_vision /tmp/big_vision [--out tests/fixtures]

Not run in CI (it needs a big_vision checkout, which is never vendored). It imports big_vision's
`models/proj/paligemma/paligemma.py` (with `gemma_bv` over `models/ppp/gemma.py` and `models/vit.py`), builds a
tiny PaliGemma2 with both towers unscanned (decoder blocks `llm/layers/{i}/...`, ViT blocks `encoderblock_{i}`),
perturbs every parameter (the zero-initialised norms and head included), and writes:
  big_vision_paligemma2.npz         the params, "params/"-prefixed names from big_vision's
                                    `utils.tree_flatten_with_names`, as its .npz checkpoints;
  big_vision_paligemma2_logits.npz  image [B, H, W, 3], text [B, T], mask_ar [B, T] and big_vision's fp32 text
                                    logits [B, T, V] twice: `logits` from `Model.__call__` (the training forward)
                                    and `decode_logits`, the decoder's own output (`out["llm/logits"]`, the path
                                    of big_vision's prefill / decoding).
The two differ by the final logit softcap: big_vision's training forward computes the text logits from the
pre-logits (`compute_logits`), which skips `final_logits_softcap`; decoding applies it. So big_vision trains
PaliGemma2 without the final softcap whatever its config says (and its transfers set 0.0 anyway).
tests/test_big_vision_parity.py loads the params with `checkpoints.load_npz` and compares our logits.

big_vision's public Gemma has no variant table entry small enough, so the script adds one (TINY_GEMMA2) to
`big_vision.models.ppp.gemma.get_config` at run time; everything else is big_vision's code unchanged.
"""
import argparse
import os
import sys

import numpy as np

from auditdm_jax.models import vlm

# The tiny model, in big_vision's terms. Width 96 (sqrt(96) is not exact in bf16), Gemma2-2B's head counts (8 q /
# 4 kv), both softcaps, 2 layers; the ViT is our "paligemma2_tiny" one. Both files stay under 1 MB.
TINY_GEMMA2 = dict(variant="gemma2_fixture", width=96, depth=2, mlp_dim=128, num_heads=8, num_kv_heads=4,
                   head_dim=16, norm_eps=1e-6, vocab_size=128, final_logits_softcap=30.0,
                   attn_logits_softcap=50.0, post_norms=True, scan=False, remat_policy="none")
TINY_VIT = dict(variant="mu/8", width=32, depth=2, mlp_dim=64, num_heads=4, pool_type="none", scan=False)
RES, BATCH, TEXT_LEN, PREFIX_LENS, SEED = 32, 2, 12, (5, 3), 0
PARAMS_FILE, LOGITS_FILE = "big_vision_paligemma2.npz", "big_vision_paligemma2_logits.npz"


def our_config():
  """Our `vlm` config of the fixture model (PaliGemma2's default global attention, as big_vision's Gemma)."""
  g = TINY_GEMMA2
  llm = dict(width=g["width"], depth=g["depth"], mlp_dim=g["mlp_dim"], num_heads=g["num_heads"],
             num_kv_heads=g["num_kv_heads"], head_dim=g["head_dim"], vocab_size=g["vocab_size"],
             query_pre_attn_scalar=g["head_dim"], final_softcap=g["final_logits_softcap"],
             attn_softcap=g["attn_logits_softcap"])
  img = {k: TINY_VIT[k] for k in ("width", "depth", "mlp_dim", "num_heads", "scan")}
  return vlm.get_config("paligemma2_tiny", res=RES, llm=llm, img=img)


def inputs():
  """The fixture's image [B, RES, RES, 3] in [-1, 1], text tokens [B, T] and mask_ar [B, T] (prefix, then causal)."""
  rng = np.random.default_rng(SEED)
  image = rng.uniform(-1, 1, (BATCH, RES, RES, 3)).astype(np.float32)
  text = rng.integers(1, TINY_GEMMA2["vocab_size"], (BATCH, TEXT_LEN)).astype(np.int32)
  mask_ar = (np.arange(TEXT_LEN)[None] >= np.array(PREFIX_LENS)[:, None]).astype(np.int32)
  return image, text, mask_ar


def build(big_vision_dir):
  """Runs big_vision: -> (flat {"params/name": array}, training-forward and decoder text logits [B, T, V])."""
  sys.path.insert(0, os.path.abspath(big_vision_dir))
  import jax  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from big_vision import utils  # pylint: disable=g-import-not-at-top
  from big_vision.models.ppp import gemma as bv_gemma  # pylint: disable=g-import-not-at-top
  from big_vision.models.proj.paligemma import paligemma  # pylint: disable=g-import-not-at-top

  get_config = bv_gemma.get_config
  bv_gemma.get_config = lambda v: (ml_collections.ConfigDict(TINY_GEMMA2) if v == TINY_GEMMA2["variant"]
                                   else get_config(v))
  llm = dict(variant=TINY_GEMMA2["variant"], scan=False, remat_policy="none",
             vocab_size=TINY_GEMMA2["vocab_size"])
  model = paligemma.Model(img=TINY_VIT, llm=llm)
  image, text, mask_ar = inputs()
  params = jax.jit(model.init)(jax.random.PRNGKey(SEED), image, text, mask_ar)["params"]
  rng = np.random.default_rng(SEED + 1)
  params = jax.tree.map(lambda p: np.asarray(p, np.float32) + rng.normal(0, 0.05, p.shape).astype(np.float32),
                        params)
  logits, out = jax.jit(model.apply)({"params": params}, image, text, mask_ar)
  flat = {f"params/{name}": np.asarray(v) for name, v in utils.tree_flatten_with_names(params)[0]}
  return flat, np.asarray(logits, np.float32), np.asarray(out["llm/logits"][:, -TEXT_LEN:], np.float32)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--big_vision", required=True, help="a big_vision checkout (the directory holding big_vision/)")
  parser.add_argument("--out", default="tests/fixtures", help="output directory")
  args = parser.parse_args(argv)
  if not os.path.isdir(os.path.join(args.big_vision, "big_vision", "models", "proj", "paligemma")):
    raise SystemExit(f"{args.big_vision!r} is not a big_vision checkout (no big_vision/models/proj/paligemma)")
  flat, logits, decode_logits = build(args.big_vision)
  os.makedirs(args.out, exist_ok=True)
  image, text, mask_ar = inputs()
  np.savez(os.path.join(args.out, PARAMS_FILE), **flat)
  np.savez(os.path.join(args.out, LOGITS_FILE), image=image, text=text, mask_ar=mask_ar, logits=logits,
           decode_logits=decode_logits)
  for name in (PARAMS_FILE, LOGITS_FILE):
    print(f"{os.path.join(args.out, name)}: {os.path.getsize(os.path.join(args.out, name)) / 1e6:.2f} MB")
  print(f"{len(flat)} tensors; logits {logits.shape}, max |logit| {np.abs(logits).max():.3f}")


if __name__ == "__main__":
  main()
