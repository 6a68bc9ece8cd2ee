"""Preprocessing ops composed from big_vision-style strings.

A pp string is ops joined by `|`, each `name` or `name(args)` with Python-literal arguments:

  decode|resize(448, antialias=True)|value_range(-1, 1)|strfmt("answer en {question}", outkey="prefix")|...

`@register("name")` registers a factory `get_name(*args, **kwargs) -> op(data: dict) -> dict` that works on one
example (a dict of tf tensors) inside `tf.data.Dataset.map`. `get_preprocess_fn(spec)` returns the composition.

Random ops (`choice`) draw from the example's `_rng` (a stateless tf seed, shape [2] int64) that the input
pipeline attaches (see tfds_input.py), so a pipeline is reproducible and resumable; keys starting with `_` are
dropped at the end of every preprocess fn.
"""
import ast
import functools
import string

import numpy as np
import tensorflow as tf

from auditdm_jax import config as config_lib
from auditdm_jax.models import tokenizer as tokenizer_lib

_REGISTRY = {}


class PPError(ValueError):
  """A pp string names an unknown op or passes arguments an op does not accept."""


def register(name):
  """Decorator: registers an op factory under `name`."""
  def wrap(factory):
    if name in _REGISTRY:
      raise PPError(f"pp op {name!r} registered twice")
    _REGISTRY[name] = factory
    return factory
  return wrap


def registered():
  """Sorted names of all registered ops."""
  return sorted(_REGISTRY)


def parse_op(text):
  """`'resize(448, antialias=True)'` -> ("resize", (448,), {"antialias": True})."""
  try:
    node = ast.parse(text if "(" in text else text + "()", mode="eval").body
  except SyntaxError as e:
    raise PPError(f"cannot parse pp op {text!r}: {e.msg}") from None
  if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
    raise PPError(f"pp op {text!r} is not of the form name(args)")
  names = [k.arg for k in node.keywords]
  if None in names or len(set(names)) < len(names):
    raise PPError(f"pp op {text!r}: keyword arguments must be named once each (no ** either)")
  try:
    args = tuple(ast.literal_eval(a) for a in node.args)
    kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
  except (ValueError, TypeError, SyntaxError, RecursionError):  # E.g. {[1]: 2}: a literal, unhashable.
    raise PPError(f"pp op {text!r}: arguments must be Python literals") from None
  return node.func.id, args, kwargs


def get_op(text):
  """Builds one op from its text, with clear errors for unknown names and bad arguments."""
  name, args, kwargs = parse_op(text)
  if name not in _REGISTRY:
    raise PPError(f"unknown pp op {name!r} in {text!r}; registered ops: {', '.join(registered())}")
  try:
    return _REGISTRY[name](*args, **kwargs)
  except PPError:
    raise
  except (TypeError, ValueError) as e:  # E.g. a missing argument, or strfmt's template "{a".
    raise PPError(f"bad arguments for pp op {text!r}: {e}") from None


def get_preprocess_fn(spec, drop_private=True):
  """Composes the ops of `spec` into `fn(data: dict) -> dict` (an empty spec is the identity)."""
  ops = [get_op(t) for t in config_lib.split_top_level(spec or "", "|")]

  def preprocess(data):
    data = dict(data)
    for op in ops:
      data = op(data)
    if drop_private:
      data = {k: v for k, v in data.items() if not k.startswith("_")}
    return data
  return preprocess


def _need(data, key, op):
  if key not in data:
    raise PPError(f"pp op {op}: key {key!r} not in example; keys: {sorted(data)}")
  return data[key]


# ----------------------------------------------------------------------------------------------------------------
# Images.


@register("decode")
def get_decode(key="image", channels=3):
  """Decodes encoded image bytes (JPEG/PNG/GIF/BMP) to uint8 [H, W, channels]; decoded images pass through."""
  def op(data):
    img = _need(data, key, "decode")
    if img.dtype == tf.string:
      img = tf.io.decode_image(img, channels=channels, expand_animations=False)
    data[key] = img
    return data
  return op


@register("resize")
def get_resize(size, key="image", method="bilinear", antialias=False):
  """Resizes [H, W, C] to `size` (int or (h, w)); output float32 with the input's value range."""
  hw = (size, size) if isinstance(size, int) else tuple(size)
  if len(hw) != 2:
    raise PPError(f"resize: size must be an int or (height, width), got {size!r}")

  def op(data):
    img = _need(data, key, "resize")
    dtype = img.dtype
    img = tf.image.resize(img, hw, method=method, antialias=antialias)
    if dtype == tf.uint8:
      img = tf.clip_by_value(img, 0, 255)
    data[key] = img
    return data
  return op


@register("value_range")
def get_value_range(vmin=-1, vmax=1, in_min=0, in_max=255.0, clip_values=False, key="image"):
  """Maps values from [in_min, in_max] linearly to [vmin, vmax] (float32)."""
  def op(data):
    x = tf.cast(_need(data, key, "value_range"), tf.float32)
    x = (x - in_min) / (in_max - in_min) * (vmax - vmin) + vmin
    if clip_values:
      x = tf.clip_by_value(x, vmin, vmax)
    data[key] = x
    return data
  return op


# ----------------------------------------------------------------------------------------------------------------
# Text fields.


@register("strfmt")
def get_strfmt(template, outkey="prefix"):
  """Formats `template` with scalar string/number fields of the example: `strfmt("answer en {question}")`."""
  pieces = list(string.Formatter().parse(template))
  for _, field, spec, conv in pieces:
    if field is not None and (spec or conv or not field):
      raise PPError(f"strfmt: only plain {{field}} placeholders are supported, got {template!r}")

  def op(data):
    parts = []
    for literal, field, _, _ in pieces:
      if literal:
        parts.append(tf.constant(literal))
      if field is not None:
        value = _need(data, field, "strfmt")
        parts.append(value if value.dtype == tf.string else tf.strings.as_string(value))
    data[outkey] = tf.strings.join(parts) if parts else tf.constant("")
    return data
  return op


def _uniform(data, salt, shape=()):
  """A uniform [0, 1) draw from the example's `_rng` (stateless) or, without one, from the global generator."""
  if "_rng" in data:
    seed = tf.random.experimental.stateless_fold_in(tf.cast(data["_rng"], tf.int64), salt)
    return tf.random.stateless_uniform(shape, seed=seed)
  return tf.random.uniform(shape)


@register("choice")
def get_choice(inkey="answers", outkey=None, key=None):
  """Picks one element of the 1-D tensor `inkey` uniformly at random (e.g. one of the 10 VQAv2 answers)."""
  outkey = outkey or key or inkey
  salt = sum(map(ord, f"choice/{inkey}/{outkey}"))

  def op(data):
    values = _need(data, inkey, "choice")
    n = tf.shape(values)[0]
    tf.debugging.assert_positive(n, message=f"choice: {inkey!r} is empty")
    i = tf.minimum(tf.cast(_uniform(data, salt) * tf.cast(n, tf.float32), tf.int32), n - 1)
    data[outkey] = tf.gather(values, i)
    return data
  return op


@register("lower")
def get_lower(key="text"):
  def op(data):
    data[key] = tf.strings.lower(_need(data, key, "lower"), encoding="utf-8")
    return data
  return op


# ----------------------------------------------------------------------------------------------------------------
# Tokenisation (sentencepiece through tf.numpy_function: no tensorflow_text dependency).


@functools.lru_cache(maxsize=8)
def load_sentencepiece(path):
  import sentencepiece  # pylint: disable=g-import-not-at-top
  if not tf.io.gfile.exists(path):
    raise PPError(f"tok: sentencepiece model not found: {path!r}")
  sp = sentencepiece.SentencePieceProcessor()
  sp.LoadFromSerializedProto(tf.io.gfile.GFile(path, "rb").read())
  return sp


def _flag(value, name):
  if value in ("yes", True):
    return True
  if value in ("no", False):
    return False
  raise PPError(f"tok: {name} must be 'yes' or 'no', got {value!r}")


@register("tok")
def get_tok(key="text", inkey=None, outkey=None, model=None, text=None, bos="no", eos="no"):
  """Tokenises the string `inkey` (or the constant `text`) with sentencepiece `model` (a .model path).

  Output: int32 [T] token ids in `outkey` (default `key`), with BOS/EOS added when `bos="yes"` / `eos="yes"`.
  """
  if model is None:
    raise PPError("tok: model=<path to sentencepiece .model> is required")
  add_bos, add_eos = _flag(bos, "bos"), _flag(eos, "eos")
  sp = load_sentencepiece(model)
  inkey, outkey = inkey or key, outkey or key

  def encode(s):
    s = s.item() if isinstance(s, np.ndarray) else s  # eager: 0-d object array; in tf.data: bytes
    ids = sp.EncodeAsIds(s.decode("utf-8"))
    ids = ([sp.bos_id()] if add_bos else []) + ids + ([sp.eos_id()] if add_eos else [])
    return np.asarray(ids, np.int32)

  def op(data):
    s = tf.constant(text) if text is not None else _need(data, inkey, "tok")
    ids = tf.numpy_function(encode, [s], tf.int32, stateful=False)
    ids.set_shape([None])
    data[outkey] = ids
    return data
  return op


@register("masked_concat")
def get_masked_concat(keys, outkey="text", **masks):
  """Concatenates 1-D token tensors `keys`; each mask `name=[v0, v1, ...]` fills the tokens of keys[i] with vi.

  E.g. `masked_concat(["prefix", "septok", "suffix"], mask_ar=[0, 0, 1], mask_loss=[0, 0, 1])`: the prefix is
  attended bidirectionally (mask_ar 0), the suffix causally, and the loss is on the suffix only.
  """
  for name, values in masks.items():
    if len(values) != len(keys):
      raise PPError(f"masked_concat: mask {name!r} has {len(values)} values for {len(keys)} keys")

  def op(data):
    parts = [_need(data, k, "masked_concat") for k in keys]
    data[outkey] = tf.concat(parts, axis=0)
    for name, values in masks.items():
      data[name] = tf.concat([tf.fill(tf.shape(p), tf.constant(v, tf.int32)) for p, v in zip(parts, values)], 0)
    return data
  return op


@register("gemma3_chat_tokens")
def get_gemma3_chat_tokens(model=None, image_token_id=None, num_image_tokens=256, question="question", answer=None,
                           outkey="text"):
  """Gemma3 chat example: user turn [image + `question`], model turn [`answer` <end_of_turn>] (no answer: a
  sampling prompt ending in "<start_of_turn>model\n").

  Output int32 [T]: `outkey` tokens (each "<image_soft_token>" -> `image_token_id`), `mask_ar` all 1 (Gemma3VLM
  makes attention causal and adds the bidirectional image blocks itself; mask_ar 0 on the image would also open
  the image to the <start_of_image> token before it), `mask_loss` 1 on the answer and its <end_of_turn>, and
  `mask_input` all 1.
  """
  if model is None:
    raise PPError("gemma3_chat_tokens: model=<path to sentencepiece .model> is required")
  tok = tokenizer_lib.Tokenizer(model)
  end_of_turn = tok.piece_id("<end_of_turn>")

  def encode(q, *a):
    text = lambda s: (s.item() if isinstance(s, np.ndarray) else s).decode("utf-8")
    prompt = tokenizer_lib.gemma3_chat([{"role": "user", "content": [{"type": "image"}, text(q)]}],
                                       num_image_tokens=num_image_tokens)
    ids = tokenizer_lib.encode_gemma3(tok, prompt, image_token_id)
    suffix = tok.encode(text(a[0]).strip()) + [end_of_turn] if a else []
    return np.asarray(ids + suffix, np.int32), np.asarray([0] * len(ids) + [1] * len(suffix), np.int32)

  def op(data):
    inputs = [_need(data, question, "gemma3_chat_tokens")]
    if answer is not None:
      inputs.append(_need(data, answer, "gemma3_chat_tokens"))
    ids, loss = tf.numpy_function(encode, inputs, (tf.int32, tf.int32), stateful=False)
    ids.set_shape([None])
    loss.set_shape([None])
    data[outkey], data["mask_loss"] = ids, loss
    data["mask_ar"], data["mask_input"] = tf.ones_like(ids), tf.ones_like(ids)
    return data
  return op


@register("tolen")
def get_tolen(length, key="text", pad_value=0):
  """Pads (with `pad_value`) or truncates the 1-D tensor `key` to exactly `length`."""
  def op(data):
    x = _need(data, key, "tolen")[:length]
    x = tf.pad(x, [[0, length - tf.shape(x)[0]]], constant_values=tf.cast(pad_value, x.dtype))
    x.set_shape([length])
    data[key] = x
    return data
  return op


# ----------------------------------------------------------------------------------------------------------------
# Dict plumbing.


@register("keep")
def get_keep(*keys):
  """Keeps `keys` (and the private `_` keys, e.g. `_rng`, which a later `choice` draws from)."""
  def op(data):
    missing = [k for k in keys if k not in data]
    if missing:
      raise PPError(f"keep: keys {missing} not in example; keys: {sorted(data)}")
    return {k: v for k, v in data.items() if k in keys or k.startswith("_")}
  return op


@register("drop")
def get_drop(*keys):
  def op(data):
    return {k: v for k, v in data.items() if k not in keys}
  return op


@register("copy")
def get_copy(inkey, outkey):
  def op(data):
    data[outkey] = _need(data, inkey, "copy")
    return data
  return op


@register("setdefault")
def get_setdefault(key, value):
  """Sets `key` to the constant `value` when the example has no such key (e.g. a source without `question_id`)."""
  def op(data):
    if key not in data:
      data[key] = tf.constant(value)
    return data
  return op


@register("bbox_to_loc")
def get_bbox_to_loc(key="bbox", outkey="loc", bins=1024):
  """A [4] normalised (y1, x1, y2, x2) box -> the string "<locYYYY><locXXXX><locYYYY><locXXXX>" (PaliGemma)."""
  def op(data):
    box = tf.reshape(tf.cast(_need(data, key, "bbox_to_loc"), tf.float32), [-1])
    need = f"bbox_to_loc: {key!r} must hold 4 finite coordinates (y1, x1, y2, x2)"
    if box.shape[0] not in (None, 4):
      raise PPError(f"{need}, got shape {box.shape}")
    with tf.control_dependencies([tf.debugging.assert_equal(tf.size(box), 4, message=need)]):
      box = tf.debugging.assert_all_finite(tf.ensure_shape(box, [4]), need)
    box = tf.clip_by_value(box, 0.0, 1.0)
    ids = tf.cast(tf.round(box * (bins - 1)), tf.int32)
    data[outkey] = tf.strings.reduce_join(tf.strings.join(["<loc", tf.strings.as_string(ids, width=4, fill="0"), ">"]))
    return data
  return op


@register("flatten")
def get_flatten(sep="/"):
  """Flattens nested feature dicts (e.g. TFDS `captions: {text, id}`) into `captions/text`, `captions/id`."""
  def op(data):
    out = {}
    def visit(prefix, value):
      if isinstance(value, dict):
        for k, v in value.items():
          visit(f"{prefix}{sep}{k}" if prefix else k, v)
      else:
        out[prefix] = value
    visit("", data)
    return out
  return op


@register("join")
def get_join(inkey, outkey=None, sep=" ; ", template="{}"):
  """Joins a 1-D string tensor with `sep` (each item formatted by `template`), e.g. multiple-choice options."""
  before, _, after = template.partition("{}")

  def op(data):
    items = tf.strings.join([before, _need(data, inkey, "join"), after])
    data[outkey or inkey] = tf.strings.reduce_join(items, separator=sep)
    return data
  return op
