"""Sentencepiece tokenizer + the prompt formats of PaliGemma (big_vision) and Gemma3 (chat template).

PaliGemma sequence (big_vision `masked_concat(["prefix", "septok", "suffix"], mask_ar=[0, 0, 1])`):
  [image soft tokens] <bos> prefix "\n" | suffix <eos>
with full attention over everything left of "|" and causal attention over the suffix; the loss covers the suffix.
Gemma3 chat: <bos><start_of_turn>user\n ... <end_of_turn>\n<start_of_turn>model\n, an image is
"\n\n<start_of_image>" + <image_soft_token> * 256 + "<end_of_image>\n\n" (as transformers' Gemma3Processor).
"""
import os
import re
import tempfile

import numpy as np
import sentencepiece as spm

from auditdm_jax import errors
from auditdm_jax import io

LOC_TOKENS = tuple(f"<loc{i:04d}>" for i in range(1024))
SEG_TOKENS = tuple(f"<seg{i:03d}>" for i in range(128))
GEMMA3_SPECIAL = ("<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>", "<image_soft_token>")
_LOC_RE = re.compile(r"<loc(\d{4})>")

PALIGEMMA_TASKS = {
    "caption": "caption {lang}",
    "answer": "answer {lang} {text}",
    "question": "question {lang} {text}",
    "detect": "detect {text}",
    "segment": "segment {text}",
    "ocr": "ocr",
}


class Tokenizer:
  """Wraps a sentencepiece model file; ids of special pieces are looked up, never hard-coded."""

  def __init__(self, model_path):
    self.path = str(model_path)
    if not os.path.isfile(self.path):
      raise FileNotFoundError(2, "sentencepiece model not found", self.path)
    self.sp = spm.SentencePieceProcessor()
    try:
      loaded = self.sp.Load(self.path)
    except RuntimeError as e:  # A truncated or foreign file: sentencepiece cannot parse it.
      raise errors.InputError(f"cannot read the sentencepiece model: {e}", self.path) from None
    if not loaded:
      raise errors.InputError("cannot read the sentencepiece model", self.path)
    self.bos_id, self.eos_id = self.sp.bos_id(), self.sp.eos_id()
    self.pad_id = max(self.sp.pad_id(), 0)  # Gemma's pad is 0; -1 means "none" in sentencepiece.
    self.vocab_size = self.sp.GetPieceSize()

  def encode(self, text, add_bos=False, add_eos=False):
    ids = ([self.bos_id] if add_bos else []) + list(self.sp.EncodeAsIds(text))
    return ids + ([self.eos_id] if add_eos else [])

  def decode(self, ids, stop_at_eos=True):
    """Decodes ids, dropping bos/pad, ids outside the vocabulary (e.g. Gemma3's image placeholder) and (by
    default) everything from the first eos on."""
    ids = [int(i) for i in np.asarray(ids).reshape(-1)]
    if stop_at_eos and self.eos_id in ids:
      ids = ids[:ids.index(self.eos_id)]
    return self.sp.DecodeIds([i for i in ids if i not in (self.bos_id, self.pad_id) and 0 <= i < self.vocab_size])

  def piece_id(self, piece):
    """Id of a special piece (e.g. "<loc0012>"); ValueError if the model file does not have it."""
    i = self.sp.PieceToId(piece)
    if i == self.sp.unk_id() and piece != self.sp.IdToPiece(i):
      raise ValueError(f"tokenizer has no piece {piece!r}")
    return i


def train(model_path, texts, vocab_size=2000, special=("\n\n", "\n") + LOC_TOKENS + SEG_TOKENS + GEMMA3_SPECIAL):
  """Trains a small sentencepiece model with Gemma's id layout (pad 0, eos 1, bos 2, unk 3) and the PaliGemma/
  Gemma3 special pieces as single tokens. For the embedded shapes world and tests: the real Gemma tokenizer is a
  file you point `Tokenizer` at. `vocab_size` counts the special pieces; it is a soft limit for tiny corpora.
  Every character of the corpus gets a piece (character_coverage=1: sentencepiece's default 0.9995 maps the rarest
  ones, e.g. an uncommon digit, to <unk>). Returns a `Tokenizer`.
  """
  model_path = str(model_path)
  if not model_path.endswith(".model"):
    raise ValueError(f"model_path must end with .model, got {model_path!r}")
  with tempfile.TemporaryDirectory() as tmp:
    corpus = os.path.join(tmp, "corpus.txt")
    with open(corpus, "w", encoding="utf-8") as f:
      f.write("\n".join(texts) + "\n")
    spm.SentencePieceTrainer.Train(
        input=corpus, model_prefix=os.path.join(tmp, "m"), vocab_size=vocab_size, model_type="bpe",
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, user_defined_symbols=list(special), hard_vocab_limit=False,
        byte_fallback=False, character_coverage=1.0, split_digits=True, add_dummy_prefix=False,
        remove_extra_whitespaces=False, minloglevel=2, normalization_rule_name="identity")
    with open(os.path.join(tmp, "m.model"), "rb") as f:
      data = f.read()
  io.write_bytes(model_path, data)
  return Tokenizer(model_path)


def paligemma_prompt(task, text=None, lang="en"):
  """Task prefix as PaliGemma was trained: paligemma_prompt("answer", "what color?") -> "answer en what color?".

  `detect`/`segment` take one or several objects ("cat" or ["cat", "dog"], joined with " ; ").
  """
  if task not in PALIGEMMA_TASKS:
    raise ValueError(f"unknown PaliGemma task {task!r}; known: {sorted(PALIGEMMA_TASKS)}")
  template = PALIGEMMA_TASKS[task]
  if "{text}" in template and not text:
    raise ValueError(f"PaliGemma task {task!r} needs text")
  if isinstance(text, (list, tuple)):
    text = " ; ".join(text)
  return template.format(lang=lang, text=text or "").strip()


def encode_paligemma(tok, prefix, suffix=None):
  """Text part of a PaliGemma example (image tokens are prepended by the model).

  Returns int32 arrays `tokens`, `mask_ar` (0 = full attention prefix, 1 = causal suffix) and `mask_loss`,
  all [T]: <bos> prefix "\n" get mask_ar 0; suffix <eos> get mask_ar 1 and mask_loss 1. With `suffix=None`
  (a prompt for sampling) only the prefix part is returned.
  """
  pre = tok.encode(prefix, add_bos=True) + tok.encode("\n")
  suf = tok.encode(suffix, add_eos=True) if suffix is not None else []
  tokens = np.asarray(pre + suf, np.int32)
  mask_ar = np.asarray([0] * len(pre) + [1] * len(suf), np.int32)
  return tokens, mask_ar, mask_ar.copy()


def box_to_loc(box, size=1024):
  """Normalised [ymin, xmin, ymax, xmax] in [0, 1] -> "<locYYYY><locXXXX><locYYYY><locXXXX>" (PaliGemma)."""
  box = np.clip(np.asarray(box, np.float64), 0.0, 1.0)
  return "".join(f"<loc{int(round(v * (size - 1))):04d}>" for v in box)


def parse_detections(text, size=1024):
  """Parses PaliGemma detection output "<loc..>x4 label ; <loc..>x4 label" -> [(box yxyx in [0,1], label)]."""
  out = []
  for part in text.split(";"):
    locs = [int(v) / (size - 1) for v in _LOC_RE.findall(part)]
    if len(locs) < 4:
      continue
    label = _LOC_RE.sub("", part).strip()
    out.append((np.asarray(locs[:4]), label))
  return out


def gemma3_image_text(num_tokens=256):
  """The text an image becomes in a Gemma3 prompt (placeholders later replaced by soft tokens)."""
  return "\n\n<start_of_image>" + "<image_soft_token>" * num_tokens + "<end_of_image>\n\n"


def encode_gemma3(tok, prompt, image_token_id=None, add_bos=True):
  """Encodes a Gemma3 prompt, mapping each "<image_soft_token>" to `image_token_id`.

  The released Gemma3 sentencepiece model has no <image_soft_token> piece (transformers adds it as id 262144), so
  the text is split around the placeholders. image_token_id defaults to the tokenizer's own piece if it has one.
  """
  placeholder = "<image_soft_token>"
  if image_token_id is None:
    image_token_id = tok.piece_id(placeholder)
  ids = [tok.bos_id] if add_bos else []
  for i, chunk in enumerate(prompt.split(placeholder)):
    if i:
      ids.append(image_token_id)
    if chunk:
      ids.extend(tok.encode(chunk))
  return ids


def gemma3_chat(messages, add_generation_prompt=True, num_image_tokens=256):
  """Gemma3 chat template. messages: [{"role": "user"|"model"|"system", "content": str | [parts]}] where a part is
  a str or {"type": "image"} / {"type": "text", "text": ...}. A system message is prepended to the first user turn
  (as Gemma3's template does). Returns the prompt string (starting with "<bos>" is left to `encode(add_bos=True)`).
  """
  def render(content):
    if isinstance(content, str):
      return content.strip()
    parts = []
    for p in content:
      if isinstance(p, str):
        parts.append(p.strip())
      elif p.get("type") == "image":
        parts.append(gemma3_image_text(num_image_tokens))
      elif p.get("type") == "text":
        parts.append(p["text"].strip())
      else:
        raise ValueError(f"unknown message part {p!r}")
    return "".join(parts)

  system, out = None, []
  for i, m in enumerate(messages):
    role, text = m["role"], render(m["content"])
    if role == "system":
      if i != 0:
        raise ValueError("a system message must come first")
      system = text
      continue
    if role not in ("user", "model", "assistant"):
      raise ValueError(f"unknown chat role {role!r}")
    role = "model" if role == "assistant" else role
    if system is not None and role == "user":
      text, system = system + "\n\n" + text, None
    out.append(f"<start_of_turn>{role}\n{text}<end_of_turn>\n")
  if add_generation_prompt:
    out.append("<start_of_turn>model\n")
  return "".join(out)
