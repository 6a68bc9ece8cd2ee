"""Tokenizer wrapper, special pieces and prompt formats, on a sentencepiece model trained in-test."""
import numpy as np
import pytest

from auditdm_jax.models import tokenizer as tok_lib

TEXTS = ["caption en a red circle left of a blue square", "answer en what color is the circle?", "red",
         "detect circle ; square", "segment blue square", "how many shapes are there? three"] * 10


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  return tok_lib.train(tmp_path_factory.mktemp("tok") / "tiny.model", TEXTS, vocab_size=1300)


def test_ids_and_roundtrip(tok):
  assert (tok.pad_id, tok.eos_id, tok.bos_id) == (0, 1, 2)
  text = "answer en what color is the circle?"
  ids = tok.encode(text, add_bos=True, add_eos=True)
  assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
  assert tok.decode(ids) == text
  assert tok.decode(ids + [5, 6, 7]) == text  # stops at eos
  assert tok.decode([tok.pad_id] + ids[:-1] + [tok.pad_id, 262_144]) == text


def test_rare_characters_keep_a_piece(tmp_path):
  # One "9" in ~20k characters: under sentencepiece's default character_coverage it would become <unk>.
  texts = ["how many stars are there? 1", "how many squares are there? 2"] * 400 + ["how many circles? 9"]
  tok = tok_lib.train(tmp_path / "rare.model", texts, vocab_size=1300)
  ids = tok.encode("9")
  assert tok.sp.unk_id() not in ids and tok.decode(ids) == "9"


def test_special_pieces_are_single_tokens(tok):
  for piece in ("<loc0000>", "<loc1023>", "<seg000>", "<seg127>", "<start_of_image>", "<image_soft_token>",
                "<start_of_turn>", "\n"):
    assert tok.encode(piece) == [tok.piece_id(piece)]
  assert len({tok.piece_id(p) for p in tok_lib.LOC_TOKENS}) == 1024
  with pytest.raises(ValueError, match="no piece"):
    tok.piece_id("<loc9999>")


def test_paligemma_prompts():
  assert tok_lib.paligemma_prompt("answer", "what color?") == "answer en what color?"
  assert tok_lib.paligemma_prompt("caption", lang="de") == "caption de"
  assert tok_lib.paligemma_prompt("detect", ["cat", "dog"]) == "detect cat ; dog"
  assert tok_lib.paligemma_prompt("segment", "cat") == "segment cat"
  with pytest.raises(ValueError, match="unknown PaliGemma task"):
    tok_lib.paligemma_prompt("translate")
  with pytest.raises(ValueError, match="needs text"):
    tok_lib.paligemma_prompt("answer")


def test_encode_paligemma_masks(tok):
  tokens, mask_ar, mask_loss = tok_lib.encode_paligemma(tok, "caption en", "red")
  prefix = tok.encode("caption en", add_bos=True) + tok.encode("\n")
  suffix = tok.encode("red", add_eos=True)
  np.testing.assert_array_equal(tokens, prefix + suffix)
  np.testing.assert_array_equal(mask_ar, [0] * len(prefix) + [1] * len(suffix))
  np.testing.assert_array_equal(mask_loss, mask_ar)
  tokens, mask_ar, _ = tok_lib.encode_paligemma(tok, "caption en")
  assert tokens[-1] == tok.piece_id("\n") and not mask_ar.any()


def test_boxes():
  loc = tok_lib.box_to_loc([0.0, 0.5, 1.0, 0.25])
  assert loc == "<loc0000><loc0512><loc1023><loc0256>"
  (box, label), = tok_lib.parse_detections(loc + " red circle")
  np.testing.assert_allclose(box, [0, 512 / 1023, 1, 256 / 1023])
  assert label == "red circle"
  assert len(tok_lib.parse_detections(loc + " a ; " + loc + " b ; <loc0001> junk")) == 2


def test_gemma3_chat(tok):
  prompt = tok_lib.gemma3_chat([
      {"role": "system", "content": "Be brief."},
      {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]},
  ], num_image_tokens=4)
  assert prompt == ("<start_of_turn>user\nBe brief.\n\n\n\n<start_of_image>" + "<image_soft_token>" * 4 +
                    "<end_of_image>\n\nWhat is it?<end_of_turn>\n<start_of_turn>model\n")
  ids = tok.encode(prompt, add_bos=True)
  assert ids.count(tok.piece_id("<image_soft_token>")) == 4
  assert tok_lib.gemma3_chat([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
                             add_generation_prompt=False) == \
      "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\nyo<end_of_turn>\n"
  with pytest.raises(ValueError, match="role"):
    tok_lib.gemma3_chat([{"role": "robot", "content": "x"}])


def test_encode_gemma3_placeholders(tok):
  prompt = tok_lib.gemma3_chat([{"role": "user", "content": [{"type": "image"}, "red?"]}], num_image_tokens=4)
  ids = tok_lib.encode_gemma3(tok, prompt)
  assert ids == tok.encode(prompt, add_bos=True)
  real_id = tok_lib.encode_gemma3(tok, prompt, image_token_id=262_144)
  assert real_id.count(262_144) == 4 and tok.piece_id("<image_soft_token>") not in real_id
  start = real_id.index(tok.piece_id("<start_of_image>"))
  assert real_id[start + 1:start + 5] == [262_144] * 4 and real_id[start + 5] == tok.piece_id("<end_of_image>")
