"""SigLIP ViT: shapes, param names, and parity with transformers' SiglipVisionModel (fp32)."""
import jax
import numpy as np
import pytest
import torch
import transformers

from auditdm_jax.models import checkpoints
from auditdm_jax.models import vit

TINY = dict(variant="mu/8", width=32, depth=2, mlp_dim=64, num_heads=4)


def test_decode_variant():
  assert vit.decode_variant("So400m/14") == dict(width=1152, depth=27, mlp_dim=4304, num_heads=16, patch_size=14)
  assert vit.decode_variant("B/16")["width"] == 768
  with pytest.raises(ValueError, match="unknown ViT variant"):
    vit.decode_variant("Huge/3")


def test_so400m_shapes_and_names():
  model = vit.Model(variant="So400m/14", head_dim=2304, scan=True)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, 224, 224, 3), np.float32))
  flat = checkpoints.flatten(params["params"])
  assert flat["pos_embedding"].shape == (1, 256, 1152)
  assert flat["embedding/kernel"].shape == (14, 14, 3, 1152)
  assert flat["Transformer/encoderblock/MultiHeadDotProductAttention_0/query/kernel"].shape == (27, 1152, 16, 72)
  assert flat["Transformer/encoderblock/MlpBlock_0/Dense_0/kernel"].shape == (27, 1152, 4304)
  assert flat["head/kernel"].shape == (1152, 2304)
  n = sum(int(np.prod(v.shape)) for k, v in flat.items() if not k.startswith("head"))
  assert n == 412_442_352  # = 678,528 patch-emb + 294,912 pos-emb + 27 x 15,239,504 + 2,304 final LN.


def test_bad_image_shape():
  model = vit.Model(**TINY)
  with pytest.raises(ValueError, match="divisible by 8"):
    model.init(jax.random.PRNGKey(0), np.zeros((1, 30, 32, 3), np.float32))


@pytest.mark.parametrize("scan", [False, True])
def test_parity_with_transformers(tmp_path, scan):
  cfg = transformers.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, image_size=32, patch_size=8, vision_use_head=False)
  torch.manual_seed(0)
  ref = transformers.SiglipVisionModel(cfg).eval()
  ref.save_pretrained(tmp_path)
  model = vit.Model(**TINY, scan=scan)
  img = np.random.RandomState(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), img)["params"]
  mapping = {k.removeprefix("img/"): v for k, v in checkpoints.vit_rules("img", "vision_model", 2, 4, 32, scan).items()}
  params = checkpoints.load_hf(tmp_path, mapping, abstract, aliases=[("vision_model.", "")])
  out = np.asarray(model.apply({"params": params}, img))
  with torch.no_grad():
    expected = ref(pixel_values=torch.tensor(img.transpose(0, 3, 1, 2))).last_hidden_state.numpy()
  assert out.shape == (2, 16, 32)
  np.testing.assert_allclose(out, expected, atol=1e-5)
