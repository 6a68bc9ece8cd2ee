"""pp-op strings: parsing, errors, and each op's values."""
import numpy as np
import pytest
import tensorflow as tf

from auditdm_jax import config as config_lib
from auditdm_jax.data import pp
from auditdm_jax.models import tokenizer as tokenizer_lib


@pytest.fixture(scope="module")
def spm_path(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("tok") / "tiny.model")
  texts = ["answer en what color is the cat?", "red", "blue", "two dogs", "caption en", "the cat is red"] * 20
  tokenizer_lib.train(path, texts, vocab_size=1300)
  return path


def run(spec, data):
  out = pp.get_preprocess_fn(spec)({k: tf.constant(v) for k, v in data.items()})
  return {k: v.numpy() for k, v in out.items()}


def test_parse_op_literals():
  assert pp.parse_op('resize(448, antialias=True)') == ("resize", (448,), {"antialias": True})
  assert pp.parse_op("decode") == ("decode", (), {})
  assert pp.parse_op('masked_concat(["a", "b"], mask_ar=[0, 1])') == ("masked_concat", (["a", "b"],),
                                                                       {"mask_ar": [0, 1]})
  # `|` inside quotes does not split ops.
  assert config_lib.split_top_level('strfmt("a|b")|keep("x")', "|") == ['strfmt("a|b")', 'keep("x")']


def test_unknown_op_lists_registered():
  with pytest.raises(pp.PPError, match=r"unknown pp op 'decodee'.*registered ops: .*decode.*resize"):
    pp.get_preprocess_fn("decodee|resize(4)")


def test_bad_arguments_are_clear():
  with pytest.raises(pp.PPError, match="bad arguments for pp op 'resize"):
    pp.get_preprocess_fn("resize(4, sizee=3)")
  with pytest.raises(pp.PPError, match="Python literals"):
    pp.get_preprocess_fn("resize(x)")
  with pytest.raises(pp.PPError, match="mask 'mask_ar' has 1 values for 2 keys"):
    pp.get_preprocess_fn('masked_concat(["a", "b"], mask_ar=[0])')
  with pytest.raises(pp.PPError, match="key 'question' not in example"):
    run('strfmt("q {question}")', {"x": "1"})
  with pytest.raises(pp.PPError, match="bad arguments for pp op 'strfmt"):
    pp.get_preprocess_fn('strfmt("{a")')
  with pytest.raises(pp.PPError, match="Python literals"):
    pp.get_preprocess_fn("keep({[1]: 2})")
  with pytest.raises(pp.PPError, match="named once each"):
    pp.get_preprocess_fn('resize(4, key="a", key="b")')
  with pytest.raises(pp.PPError, match="must hold 4 finite coordinates"):
    run("bbox_to_loc", {"bbox": [0.1, 0.2, 0.3]})
  with pytest.raises(tf.errors.InvalidArgumentError, match="must hold 4 finite coordinates"):
    run("bbox_to_loc", {"bbox": [float("nan"), 0.2, 0.3, 0.4]})


def test_image_ops():
  img = np.zeros((4, 6, 3), np.uint8)
  img[:, :3] = 255
  encoded = tf.io.encode_png(img).numpy()
  out = run("decode|resize((2, 3))|value_range(-1, 1)", {"image": encoded})
  assert out["image"].shape == (2, 3, 3) and out["image"].dtype == np.float32
  np.testing.assert_allclose(out["image"][:, 0], 1.0)
  np.testing.assert_allclose(out["image"][:, 2], -1.0)
  assert run("decode|resize(5)", {"image": encoded})["image"].shape == (5, 5, 3)


def test_strfmt_choice_keep_drop_copy():
  data = {"question": "what?", "id": np.int64(7), "answers": ["a", "b", "c"], "x": 1.0}
  out = run('strfmt("answer en {question} #{id}", outkey="prefix")|choice(inkey="answers", outkey="suffix")'
            '|copy("x", "y")|drop("x")', data)
  assert out["prefix"] == b"answer en what? #7"
  assert out["suffix"] in (b"a", b"b", b"c")
  assert "x" not in out and out["y"] == 1.0
  assert sorted(run('keep("id", "question")', data)) == ["id", "question"]
  # keep leaves the example's `_rng`: a later choice draws the same answer as without the keep.
  rng = {"_rng": np.array([5, 9], np.int64)}
  picks = [run(f'{ops}choice(inkey="answers", outkey="a")', dict(data, **rng))["a"]
           for ops in ('keep("answers")|', "")]
  assert picks[0] == picks[1]


def test_choice_is_deterministic_given_rng():
  fn = pp.get_preprocess_fn('choice(inkey="answers", outkey="a")')
  picks = set()
  for i in range(30):
    data = {"answers": tf.constant([str(j) for j in range(10)]), "_rng": tf.constant([3, i], tf.int64)}
    a, b = fn(dict(data))["a"].numpy(), fn(dict(data))["a"].numpy()
    assert a == b
    picks.add(a)
  assert len(picks) > 3  # different examples pick different answers
  assert "_rng" not in fn(dict(data))


def test_tok_masked_concat_tolen(spm_path):
  tok = tokenizer_lib.Tokenizer(spm_path)
  spec = (f'tok(key="prefix", bos="yes", model="{spm_path}")|tok(key="suffix", eos="yes", model="{spm_path}")'
          f'|tok(key="septok", text="\\n", model="{spm_path}")'
          '|masked_concat(["prefix", "septok", "suffix"], mask_ar=[0, 0, 1], mask_loss=[0, 0, 1], '
          'mask_input=[1, 1, 1])|tolen(24, key="text")|tolen(24, key="mask_ar", pad_value=1)'
          '|tolen(24, key="mask_loss")|tolen(24, key="mask_input")|keep("text", "mask_ar", "mask_loss", "mask_input")')
  out = run(spec, {"prefix": "answer en what color is the cat?", "suffix": "red"})
  want, want_ar, _ = tokenizer_lib.encode_paligemma(tok, "answer en what color is the cat?", "red")
  n = len(want)
  np.testing.assert_array_equal(out["text"][:n], want)
  np.testing.assert_array_equal(out["text"][n:], 0)
  np.testing.assert_array_equal(out["mask_ar"][:n], want_ar)
  np.testing.assert_array_equal(out["mask_ar"][n:], 1)
  np.testing.assert_array_equal(out["mask_loss"], out["mask_ar"] * out["mask_input"])
  assert out["mask_input"].sum() == n and out["text"].dtype == np.int32
  assert tok.decode(out["text"]) == "answer en what color is the cat?\nred"
  # Truncation.
  assert run('tolen(2, key="t")', {"t": np.arange(5, dtype=np.int32)})["t"].tolist() == [0, 1]


def test_tok_errors(spm_path):
  with pytest.raises(pp.PPError, match="model=<path"):
    pp.get_preprocess_fn('tok(key="prefix")')
  with pytest.raises(pp.PPError, match="not found"):
    pp.get_preprocess_fn('tok(key="prefix", model="/nonexistent.model")')
  with pytest.raises(pp.PPError, match="bos must be 'yes' or 'no'"):
    pp.get_preprocess_fn(f'tok(key="prefix", bos="maybe", model="{spm_path}")')


def test_bbox_to_loc():
  out = run('bbox_to_loc(key="bbox", outkey="loc")', {"bbox": np.array([0.0, 0.5, 1.0, 0.25], np.float32)})
  assert out["loc"] == b"<loc0000><loc0512><loc1023><loc0256>"
  assert out["loc"].decode() == tokenizer_lib.box_to_loc([0.0, 0.5, 1.0, 0.25])


def test_register_custom_op():
  @pp.register("test_double")
  def get_double(key="x"):
    def op(data):
      data[key] = data[key] * 2
      return data
    return op
  assert run("test_double", {"x": 3})["x"] == 6
  with pytest.raises(pp.PPError, match="registered twice"):
    pp.register("test_double")(get_double)


def test_join_and_flatten():
  out = run('join(inkey="opts", outkey="choices", sep=" ; ")', {"opts": ["egg", "larva", "pupa"]})
  assert out["choices"] == b"egg ; larva ; pupa"
  fn = pp.get_preprocess_fn('flatten|copy("captions/text", "refs")')
  out = fn({"captions": {"text": tf.constant(["a", "b"]), "id": tf.constant([1, 2])}, "image/id": tf.constant(3)})
  assert sorted(out) == ["captions/id", "captions/text", "image/id", "refs"]
  assert out["refs"].numpy().tolist() == [b"a", b"b"]
