"""Checkpoint I/O: HF key layouts, padded vocab, errors naming the key, big_vision .npz, sharded placement."""
import os
import stat

import jax
import ml_dtypes
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from safetensors.numpy import load_file, save_file

from auditdm_jax.models import checkpoints
from auditdm_jax.models import gemma
from auditdm_jax.models import vlm


def _random_params(cfg, seed=0):
  rng = np.random.RandomState(seed)
  return jax.tree.map(lambda s: (rng.normal(size=s.shape) * 0.1).astype(np.float32), vlm.abstract_params(cfg))


def _assert_same(a, b):
  fa, fb = checkpoints.flatten(a), checkpoints.flatten(b)
  assert fa.keys() == fb.keys()
  for k in fa:
    np.testing.assert_array_equal(np.asarray(fa[k], np.float32), np.asarray(fb[k], np.float32), err_msg=k)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """A tiny PaliGemma2 exported in the official layout: (cfg, params, directory)."""
  cfg = vlm.get_config("paligemma2_tiny")
  params = _random_params(cfg)
  path = tmp_path_factory.mktemp("hf")
  checkpoints.export_vlm_hf(path, cfg, params)
  return cfg, params, path


def _rewrite(src, dst, fn):
  tensors = fn(load_file(src / "model.safetensors"))
  dst.mkdir()
  save_file(tensors, dst / "model.safetensors")
  (dst / "config.json").write_text((src / "config.json").read_text())
  return dst


def test_official_layout_roundtrip(tiny):
  cfg, params, path = tiny
  keys = load_file(path / "model.safetensors").keys()
  assert "vision_tower.vision_model.embeddings.patch_embedding.weight" in keys
  assert "language_model.model.layers.1.self_attn.q_proj.weight" in keys
  assert "multi_modal_projector.linear.bias" in keys
  loaded_cfg, loaded = checkpoints.load_vlm_hf(path)
  assert loaded_cfg.llm == cfg.llm
  _assert_same(loaded, params)


def test_new_layout_padded_vocab_and_ignored_keys(tiny, tmp_path):
  cfg, params, path = tiny

  def to_new_layout(t):
    out = {}
    for k, v in t.items():
      for old, new in (("language_model.model.", "model.language_model."),
                       ("vision_tower.vision_model.", "model.vision_tower."),
                       ("multi_modal_projector.", "model.multi_modal_projector.")):
        k = k.replace(old, new) if k.startswith(old) else k
      out[k] = v
    emb = out["model.language_model.embed_tokens.weight"]
    out["model.language_model.embed_tokens.weight"] = np.concatenate([emb, np.ones((64, emb.shape[1]), emb.dtype)])
    out["lm_head.weight"] = out["model.language_model.embed_tokens.weight"]
    out["model.vision_tower.head.probe"] = np.zeros((1, 1, 32), np.float32)
    return out

  _, loaded = checkpoints.load_vlm_hf(_rewrite(path, tmp_path / "new", to_new_layout), cfg)
  _assert_same(loaded, params)


@pytest.mark.parametrize("edit,match", [
    (lambda t: t.pop("language_model.model.layers.1.mlp.up_proj.weight"),
     "missing key 'language_model.model.layers.1.mlp.up_proj.weight'"),
    (lambda t: t.update(extra=np.zeros(3, np.float32)), r"unexpected keys .*'extra'"),
    (lambda t: t.update({"multi_modal_projector.linear.bias": np.zeros(7, np.float32)}),
     "shape mismatch for 'multi_modal_projector.linear.bias' -> 'img/head/bias'"),
])
def test_errors_name_the_key(tiny, tmp_path, edit, match):
  cfg, _, path = tiny

  def fn(t):
    edit(t)
    return t

  with pytest.raises(checkpoints.CheckpointError, match=match):
    checkpoints.load_vlm_hf(_rewrite(path, tmp_path / "bad", fn), cfg)


def test_config_from_hf_real_sizes():
  for variant, res in (("paligemma2_3b", 448), ("paligemma2_28b", 896), ("gemma3_4b", 896), ("gemma3_27b", 896)):
    cfg = vlm.get_config(variant, res=res)
    back = checkpoints.config_from_hf(checkpoints.hf_config(cfg).to_dict())
    assert back.variant == variant and back.res == res and back.llm == cfg.llm, variant
  hf = checkpoints.hf_config(vlm.get_config("gemma3_4b")).to_dict()
  hf["text_config"]["vocab_size"] = 262_208  # transformers' padded Gemma3 vocab.
  assert checkpoints.config_from_hf(hf).llm.vocab_size == 262_144
  with pytest.raises(checkpoints.CheckpointError, match="unsupported model_type"):
    checkpoints.config_from_hf({"model_type": "llava"})


def test_gemma_rules_match_gemma_params_from_hf(tiny):
  cfg, params, path = tiny
  state = load_file(path / "model.safetensors")
  ref = gemma.params_from_hf(state, cfg.llm, prefix="language_model.model.")
  _assert_same(ref, params["llm"])


def test_npz_bf16_scan_and_unscanned(tiny, tmp_path):
  cfg, params, _ = tiny
  bf16 = jax.tree.map(lambda x: x.astype(ml_dtypes.bfloat16), params)
  checkpoints.save_npz(tmp_path / "p.npz", bf16)
  with np.load(tmp_path / "p.npz") as z:
    assert z["llm/layers/mlp/linear"].dtype == np.dtype("|V2")
  for scan in (False, True):
    c = vlm.get_config("paligemma2_tiny", img=dict(scan=scan))
    loaded = checkpoints.load_npz(tmp_path / "p.npz", vlm.abstract_params(c))
    flat = checkpoints.flatten(loaded)
    key = "img/Transformer/encoderblock/MlpBlock_0/Dense_0/kernel" if scan else \
        "img/Transformer/encoderblock_1/MlpBlock_0/Dense_0/kernel"
    expect = params["img"]["Transformer"]["encoderblock_1"]["MlpBlock_0"]["Dense_0"]["kernel"]
    got = flat[key][1] if scan else flat[key]
    np.testing.assert_allclose(got, expect, rtol=1e-2, atol=1e-3)  # bf16 round trip.
    assert flat[key].dtype == np.float32
  # A stacked checkpoint also loads into the unscanned model.
  c = vlm.get_config("paligemma2_tiny", img=dict(scan=True))
  checkpoints.save_npz(tmp_path / "scan.npz", checkpoints.load_npz(tmp_path / "p.npz", vlm.abstract_params(c)))
  _assert_same(checkpoints.load_npz(tmp_path / "scan.npz", vlm.abstract_params(cfg)),
               checkpoints.load_npz(tmp_path / "p.npz", vlm.abstract_params(cfg)))
  with pytest.raises(checkpoints.CheckpointError, match=r"p.npz' is missing '"):
    checkpoints.load_npz(tmp_path / "p.npz", vlm.abstract_params(vlm.get_config("gemma3_tiny")))


def test_npz_unscanned_big_vision_decoder(tiny, tmp_path):
  """big_vision's Gemma with scan=False names its blocks `llm/layers/{i}/...` (`layers.push(str(i))`), its ViT
  `img/Transformer/encoderblock_{i}/...`; with a "params/" prefix as its checkpoints. Both load into ours."""
  cfg, params, _ = tiny
  flat = {}
  for k, v in checkpoints.flatten(params).items():
    if k.startswith("llm/layers/"):
      for i in range(v.shape[0]):
        flat["params/" + k.replace("llm/layers/", f"llm/layers/{i}/")] = v[i]
    else:
      flat["params/" + k] = v
  np.savez(tmp_path / "bv.npz", **flat)
  assert "params/llm/layers/3/attn/attn_vec_einsum/w" in np.load(tmp_path / "bv.npz").files
  _assert_same(checkpoints.load_npz(tmp_path / "bv.npz", vlm.abstract_params(cfg)), params)
  # A missing layer is named, never silently stacked short.
  del flat["params/llm/layers/3/mlp/linear"]
  np.savez(tmp_path / "short.npz", **flat)
  with pytest.raises(checkpoints.CheckpointError, match="missing 'llm/layers/mlp/linear'"):
    checkpoints.load_npz(tmp_path / "short.npz", vlm.abstract_params(cfg))


def test_big_vision_tensorstore_checkpoint(tiny, tmp_path):
  """big_vision's `save_checkpoint_ts` layout: `<prefix>-<step>/params~llm~layers~{i}~...` zarr arrays (plus
  optimizer state, ignored) and a `<prefix>-LAST` pointer; unscanned decoder blocks stack into ours."""
  import tensorstore  # pylint: disable=g-import-not-at-top
  cfg, params, _ = tiny
  step_dir = tmp_path / "ckpt-000000007"
  step_dir.mkdir()

  def write(name, value):
    spec = {"driver": "zarr", "kvstore": {"driver": "file", "path": str(step_dir / name)}}
    store = tensorstore.open(spec, create=True, dtype=value.dtype.name, shape=value.shape).result()
    store.write(value).result()
  for k, v in checkpoints.flatten(params).items():
    if k.startswith("llm/layers/"):
      for i in range(v.shape[0]):
        write("params~" + k.replace("llm/layers/", f"llm/layers/{i}/").replace("/", "~"), v[i])
    else:
      write("params~" + k.replace("/", "~"), v)
  write("opt~1~0~mu~llm~final_norm~scale", np.zeros(3, np.float32))
  (tmp_path / "ckpt-LAST").write_text("000000007")
  assert checkpoints.is_big_vision_ts(tmp_path / "ckpt") and checkpoints.is_big_vision_ts(step_dir)
  assert not checkpoints.is_big_vision_ts(tmp_path)
  for path in (tmp_path / "ckpt", step_dir):
    _assert_same(checkpoints.load_npz(path, vlm.abstract_params(cfg)), params)


def test_load_onto_mesh(tiny):
  cfg, params, path = tiny
  mesh = Mesh(np.array(jax.devices()), ("fsdp",))
  n = len(jax.devices())
  abstract = vlm.abstract_params(cfg)

  def spec(s):  # Shard the first axis divisible by the mesh, replicate the rest.
    axes = [i for i, d in enumerate(s.shape) if d % n == 0]
    return NamedSharding(mesh, P(*([None] * axes[0] + ["fsdp"])) if axes else P())

  shardings = jax.tree.map(spec, abstract)
  _, loaded = checkpoints.load_vlm_hf(path, cfg, shardings=shardings)
  emb = loaded["llm"]["embedder"]["input_embedding"]
  assert emb.sharding == shardings["llm"]["embedder"]["input_embedding"]
  assert len(emb.addressable_shards) == n
  if n > 1:
    assert emb.addressable_shards[0].data.shape[0] == emb.shape[0] // n
  _assert_same(loaded, params)


def test_convert_command_roundtrip(tiny, tmp_path):
  from auditdm_jax import main  # pylint: disable=g-import-not-at-top
  cfg, params, path = tiny
  npz = str(tmp_path / "pg.npz")
  assert main.main(["convert", "--src", str(path), "--dst", npz, "--log-level", "WARNING"]) == 0
  _assert_same(checkpoints.load_npz(npz, vlm.abstract_params(cfg)), params)
  out = str(tmp_path / "hf")
  assert main.main(["convert", "--src", npz, "--dst", out, "--dtype", "bfloat16", "--log-level", "WARNING"]) == 0
  back_cfg, back = checkpoints.load_vlm_hf(out)
  assert back_cfg.llm == cfg.llm
  bf16 = jax.tree.map(lambda x: np.asarray(x).astype(ml_dtypes.bfloat16), params)
  _assert_same(back, bf16)
  umask = os.umask(0)
  os.umask(umask)
  for name in ("model.safetensors", "config.json"):  # Readable as the umask says, not private (0600).
    assert stat.S_IMODE(os.stat(os.path.join(out, name)).st_mode) == 0o666 & ~umask, name
  with pytest.raises(SystemExit) as e:  # Weights are floats: an int dtype would write zeros.
    main.main(["convert", "--src", npz, "--dst", str(tmp_path / "i8.npz"), "--dtype", "int8"])
  assert e.value.code == 2 and not os.path.exists(tmp_path / "i8.npz")


def test_sharded_export(tiny, tmp_path):
  cfg, params, _ = tiny
  checkpoints.export_vlm_hf(tmp_path, cfg, params)
  checkpoints.export_hf(tmp_path / "sharded", params, checkpoints.vlm_rules(cfg), checkpoints.hf_config(cfg),
                        max_shard_bytes=200_000)
  files = sorted(p.name for p in (tmp_path / "sharded").iterdir())
  shards = [f for f in files if f.startswith("model-")]
  assert "model.safetensors.index.json" in files and len(shards) > 1, files
  assert all(f.endswith(f"-of-{len(shards):05d}.safetensors") for f in shards), files
  assert not [f for f in files if f.endswith(".tmp")]
  _, loaded = checkpoints.load_vlm_hf(tmp_path / "sharded", cfg)
  _assert_same(loaded, params)
