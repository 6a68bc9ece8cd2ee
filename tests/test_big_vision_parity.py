"""Parity with big_vision's own PaliGemma2 (fixture made by auditdm_jax/tools/big_vision_fixture.py from a
big_vision checkout): its unscanned checkpoint loads into ours and our fp32 logits equal its logits."""
import os

import numpy as np
import pytest

from auditdm_jax.models import checkpoints
from auditdm_jax.models import gemma
from auditdm_jax.models import vlm
from auditdm_jax.tools import big_vision_fixture as fixture

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


@pytest.mark.slow
def test_big_vision_paligemma2_logits():
  """big_vision's decoder logits (final softcap 30) equal ours; its training forward skips the final softcap (see
  the tool's docstring) and equals ours without it, as our PaliGemma2 transfer configs train."""
  cfg = fixture.our_config()
  assert gemma.attn_kinds(cfg.llm) == ("global",) * cfg.llm.depth  # big_vision's Gemma2 has no sliding window.
  params = checkpoints.load_npz(os.path.join(FIXTURES, fixture.PARAMS_FILE), vlm.abstract_params(cfg))
  with np.load(os.path.join(FIXTURES, fixture.LOGITS_FILE)) as z:
    image, text, mask_ar = z["image"], z["text"], z["mask_ar"]
    decode_logits, train_logits = z["decode_logits"], z["logits"]
  # The fixture's inputs are the ones the script documents (so it can be regenerated and compared).
  for a, b in zip((image, text, mask_ar), fixture.inputs()):
    np.testing.assert_array_equal(a, b)
  assert np.abs(decode_logits).max() > 5.0  # Non-trivial logits, where the softcap matters.
  for final_softcap, want in ((cfg.llm.final_softcap, decode_logits), (None, train_logits)):
    c = cfg.copy_and_resolve_references()
    c.llm.final_softcap = final_softcap
    got = np.asarray(vlm.get_model(c).apply({"params": params}, image, text, mask_ar))
    assert got.shape == want.shape == (fixture.BATCH, fixture.TEXT_LEN, cfg.llm.vocab_size)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0, err_msg=f"final_softcap={final_softcap}")
