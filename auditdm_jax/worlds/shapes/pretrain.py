"""Pretraining of the demo's tiny VLMs on the shapes world (CPU, minutes).

Like real MLLMs, the demo's question answerers share a pretrained BASE: one VLM trained on the world's questions
(fresh scenes every pass: the world has unlimited data). The REFERENCES are the base fine-tuned further on other
data (own seeds); the TARGET is the base fine-tuned on data whose planted weakness slices (`tasks` weakness spec,
e.g. "spatial:relation=left") are annotated wrongly: about `planted_share` of its questions lie inside the slices
and each of them carries a wrong answer of the right type (`tasks.wrong_answer`), so the target's failure is known
exactly and holds for any spec. The AUDITOR (its own architecture) is SFT-trained to emit captions, edit commands
and questions in the world's language from the instruction prompts p_c, p_e, p_q (and the baselines p^b).

All models are PaliGemma-style (`models.vlm.PaliGemma`, tiny SigLIP + tiny Gemma2); text is `<bos> prefix "\n"` +
`suffix <eos>` with the loss on the suffix. VQA prefix: `answer en {question}`. Params are cached as
`<workdir>/pretrain/<name>/params.npz` next to `meta.json`; a rerun with the same config loads them instead of
training.
"""
import concurrent.futures
import hashlib
import json
import logging
import os
import threading
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from auditdm_jax import config as config_lib
from auditdm_jax import decode
from auditdm_jax import io
from auditdm_jax import progress
from auditdm_jax.audit import prompts
from auditdm_jax.worlds.shapes import language as lang
from auditdm_jax.worlds.shapes import scenes as shapes
from auditdm_jax.worlds.shapes import shipped
from auditdm_jax.worlds.shapes import tasks
from auditdm_jax.models import checkpoints
from auditdm_jax.models import tokenizer as tokenizer_lib
from auditdm_jax.models import vlm
from auditdm_jax.train import optim
from auditdm_jax.train import step as step_lib
from auditdm_jax.worlds.shapes import tokenizer_train

log = logging.getLogger(__name__)


def model_config(vocab_size, res=96, width=128, depth=2, img_width=128, img_depth=2, patch=None, heads=4,
                 kv_heads=1):
  """Tiny PaliGemma config: ViT -> Gemma2 decoder with all-global attention (`heads` query heads sharing
  `kv_heads` key/value heads).

  The default patch is a third of the image: one image token per grid cell, so the tiny models learn in minutes.
  """
  if width % heads or heads % kv_heads:
    raise ValueError(f"width {width} must split into {heads} heads, and those into {kv_heads} key/value groups")
  patch = patch or res // shapes.GRID
  if res % patch:
    raise ValueError(f"image size {res} is not a multiple of the patch size {patch}")
  cfg = vlm.get_config(
      "paligemma2_tiny", res=res,
      img=dict(variant=f"mu/{patch}", width=img_width, depth=img_depth, mlp_dim=2 * img_width, num_heads=4),
      llm=dict(width=width, depth=depth, mlp_dim=2 * width, num_heads=heads, num_kv_heads=kv_heads,
               head_dim=width // heads, vocab_size=vocab_size, sliding_window=None,
               query_pre_attn_scalar=width // heads))
  return cfg


def vqa_prefix(question):
  return tokenizer_lib.paligemma_prompt("answer", question)


# ------------------------------------------------------------------------------------------------------- data
def _pad(seqs, length):
  out = np.zeros((len(seqs), length), np.int32)
  for i, s in enumerate(seqs):
    if len(s) > length:
      raise ValueError(f"sequence of {len(s)} tokens exceeds max length {length}")
    out[i, :len(s)] = s
  return out


def encode_examples(tok, prefixes, suffixes, max_len):
  """-> dict tokens, mask_ar, mask_loss, input_mask: int32/bool [N, max_len] (right-padded)."""
  enc = [tokenizer_lib.encode_paligemma(tok, p, s) for p, s in zip(prefixes, suffixes)]
  return {"tokens": _pad([e[0] for e in enc], max_len), "mask_ar": _pad([e[1] for e in enc], max_len),
          "mask_loss": _pad([e[2] for e in enc], max_len),
          "input_mask": _pad([np.ones_like(e[0]) for e in enc], max_len).astype(bool)}


def sample_scenes(num, seed, min_objects=1, max_objects=4):
  rng = np.random.default_rng(seed)
  return [shapes.sample_scene(rng, min_objects, max_objects) for _ in range(num)]


def vqa_data(scenes, per_scene, seed, weakness=None, exclude_weakness=False, image_size=64, planted_share=0.0,
             mix=tasks.Mix()):
  """Questions about `scenes` (drawn by `mix`, a `tasks.Mix`): dict images uint8
  [S, H, W, 3], image_index [N], question/answer/skill lists and in_weakness bool [N]. With `exclude_weakness`,
  questions inside the weakness slices are re-drawn (the target's training distribution without them). With
  `planted_share` > 0 (the target's training set), that share of the questions is drawn inside the slices, and
  every question inside them gets a plausible wrong answer (`tasks.wrong_answer`; counts up to the most objects of
  a scene)."""
  if exclude_weakness and planted_share:
    raise ValueError("a weakness is either excluded or planted, not both")
  rng = np.random.default_rng(seed)
  specs = tasks.weakness_specs(weakness)
  max_count = max(len(s) for s in scenes)  # Wrong counts stay within what the scenes show.
  rows = {"image_index": [], "question": [], "answer": [], "skill": [], "in_weakness": []}
  for i, scene in enumerate(scenes):
    for _ in range(per_scene):
      drawn = None
      if specs and rng.random() < planted_share:
        hit = tasks.sample_weakness_question(scene, rng, specs[int(rng.integers(len(specs)))])
        drawn = hit + (True,) if hit else None
      drawn = drawn or tasks.sample_training_question(scene, rng, weakness, exclude_weakness, mix=mix)
      if drawn is None:
        continue
      question, answer, skill, inside = drawn
      if inside and planted_share:
        answer = tasks.wrong_answer(question, answer, rng, max_count)
      for k, v in zip(rows, (i, question, answer, skill, inside)):
        rows[k].append(v)
  rows["images"] = np.stack([shapes.render(s, image_size) for s in scenes])
  rows["image_index"] = np.asarray(rows["image_index"], np.int32)
  rows["in_weakness"] = np.asarray(rows["in_weakness"], bool)
  return rows


def auditor_data(scenes, per_scene, seed, image_size=64):
  """(instruction prompt, target text) pairs over the three kinds and both prompt variants (p and p^b)."""
  rng = np.random.default_rng(seed)
  rows = {"image_index": [], "prefix": [], "suffix": []}
  for i, scene in enumerate(scenes):
    for _ in range(per_scene):
      kind = tasks.AUDITOR_KINDS[int(rng.integers(3))]
      rows["image_index"].append(i)
      rows["prefix"].append(prompts.get(kind, baseline=bool(rng.integers(2))))
      rows["suffix"].append(tasks.auditor_example(scene, rng, kind))
  rows["images"] = np.stack([shapes.render(s, image_size) for s in scenes])
  rows["image_index"] = np.asarray(rows["image_index"], np.int32)
  return rows


# ------------------------------------------------------------------------------------------------ training
CELL_HEADS = (("shape", len(shapes.SHAPES) + 1), ("color", len(shapes.COLORS)), ("size", len(shapes.SIZES)))


def cell_labels(scene):
  """int32 [9, 3]: per grid cell (reading order) shape index + 1 (0 = empty), colour, size."""
  out = np.zeros((shapes.GRID * shapes.GRID, len(CELL_HEADS)), np.int32)
  for o in scene.objects:
    out[o.row * shapes.GRID + o.col, :3] = (shapes.SHAPES.index(o.shape) + 1, shapes.COLORS.index(o.color),
                                            shapes.SIZES.index(o.size))
  return out


GROUND_CLASSES = shapes.GRID * shapes.GRID + 1  # A grid cell (reading order), or GRID**2: names no object.


def grounding_labels(tok, question, scene):
  """Grounding targets of a VQA example: positions int32 [2] of the last token of each referring expression of
  `question` in its encoded `vqa_prefix` (<bos> at 0; -1: no target) and classes int32 [2]: the cell of the one
  object the expression names, or GRID**2 when it names none. An expression naming several objects, or whose
  phrase is not found (`lang.ref_ends`) or not cut at a token boundary, gets no target."""
  pos, cls = np.full(2, -1, np.int32), np.zeros(2, np.int32)
  prefix = vqa_prefix(question)
  offset = prefix.index(question)
  full = tok.encode(prefix, add_bos=True)
  parsed = lang.parse_question(question)
  for k, (ref, end) in enumerate(zip(parsed.refs, lang.ref_ends(question, parsed))):
    found = ref.select(scene)
    if end is None or len(found) > 1:
      continue
    part = tok.encode(prefix[:offset + end], add_bos=True)
    if full[:len(part)] != part:
      continue
    pos[k] = len(part) - 1
    cls[k] = found[0].row * shapes.GRID + found[0].col if found else GROUND_CLASSES - 1
  return pos, cls


def _suffix_nll(logits, batch):
  logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32))
  nll = -jnp.take_along_axis(logp, batch["tokens"][:, 1:, None], axis=-1)[..., 0]
  w = batch["mask_loss"][:, 1:].astype(jnp.float32)
  return jnp.sum(nll * w) / jnp.maximum(jnp.sum(w), 1.0)


def suffix_loss(model, params, batch):
  """Mean next-token cross-entropy over suffix tokens. batch: images [B,H,W,3] float, tokens/mask_* [B, T]."""
  logits = model.apply({"params": params}, batch["images"], batch["tokens"], batch["mask_ar"],
                       batch["input_mask"])
  return _suffix_nll(logits, batch)


def grounded_losses(model, params, head, batch):
  """(`suffix_loss`, grounding loss) from one forward pass. The grounding loss is the auxiliary target that makes
  spatial relations learnable (docs/shapes_world.md): each object a question names (batch ground_pos / ground_cell
  [B, 2] from `grounding_labels`) is predicted twice from final-normed hidden states, through linear heads `head`:
  at the last token of its referring expression (head["name"] [D, GROUND_CLASSES]) and, as the question's k-th
  expression, where the answer's first token is predicted (head["answer"][k], [2, D, GROUND_CLASSES])."""
  hidden = model.apply({"params": params}, batch["images"], batch["tokens"], batch["mask_ar"], batch["input_mask"],
                       return_hidden=True)
  text = _suffix_nll(model.apply({"params": params}, hidden, method=model.unembed), batch)
  pos, cell = batch["ground_pos"], batch["ground_cell"]
  class_nll = lambda logits: -jnp.take_along_axis(jax.nn.log_softmax(logits), cell[..., None], axis=-1)[..., 0]
  at_names = jnp.take_along_axis(hidden, jnp.maximum(pos, 0)[..., None], axis=1).astype(jnp.float32)
  at = jnp.argmax(batch["mask_ar"], axis=1) - 1  # The last prefix token: it predicts the answer's first token.
  at_answer = jnp.take_along_axis(hidden, at[:, None, None], axis=1)[:, 0].astype(jnp.float32)
  nll = class_nll(at_names @ head["name"]) + class_nll(jnp.einsum("bd,kdc->bkc", at_answer, head["answer"]))
  w = (pos >= 0).astype(jnp.float32)
  return text, jnp.sum(nll * w) / jnp.maximum(jnp.sum(w), 1.0)


def cell_loss(model, params, head, images, labels, position_head=None):
  """Auxiliary losses on the image tokens [B, 9, D]: (attribute loss, position loss). Each token predicts its cell's
  shape (or empty), colour and size through linear heads `head` {name: kernel [D, K]} (`CELL_HEADS`; labels
  [B, 9, 3] from `cell_labels`; colour and size count only on occupied cells): it speeds up pretraining. With
  `position_head` ({"row", "col"}: kernels [D, GRID]) each token also predicts its cell's row and column, so the
  tokens keep where they are (attention reads values, which RoPE does not mark); else the position loss is 0."""
  z = model.apply({"params": params}, images, method=model.embed_image).astype(jnp.float32)
  nll = lambda kernel, y: -jnp.take_along_axis(jax.nn.log_softmax(z @ kernel), y[..., None], axis=-1)[..., 0]
  total = 0.0
  for k, (name, _) in enumerate(CELL_HEADS):
    loss = nll(head[name], labels[..., k])
    w = (labels[..., 0] > 0).astype(jnp.float32) if name in ("color", "size") else jnp.ones_like(loss)
    total = total + jnp.sum(loss * w) / jnp.maximum(jnp.sum(w), 1.0)
  if position_head is None:
    return total, 0.0
  cell = jnp.broadcast_to(jnp.arange(z.shape[1]), z.shape[:2])
  rows, cols = cell // shapes.GRID, cell % shapes.GRID
  return total, jnp.mean(nll(position_head["row"], rows) + nll(position_head["col"], cols))


def _in_background(fn, *args):
  """fn(*args) started in a daemon thread -> a `concurrent.futures.Future` of its result (or its exception)."""
  future = concurrent.futures.Future()

  def run():
    try:
      future.set_result(fn(*args))
    except BaseException as e:  # pylint: disable=broad-except  (re-raised by `future.result()`)
      future.set_exception(e)
  threading.Thread(target=run, name="stream-pool", daemon=True).start()
  return future


class Stream:
  """Training batches of a model, drawn at random from pools of examples. `make_pool(k)` -> pool k: dict tokens,
  mask_ar, mask_loss, input_mask [N, T], images uint8 [S, H, W, 3], image_index int [N], cells int [S, 9, 3]
  (`cell_labels`). After as many draws as a pool has examples, pool k + 1 is built: every pass sees new scenes.
  Batches are cut to the longest text in them (rounded up to 8 tokens, so few shapes compile).

  Once told how many batches are still to come (`plan`), the stream builds the next pool they need in a background
  thread while the current one is drawn from, so that rendering scenes overlaps training. The batches are the same:
  `make_pool(k)` must depend on k alone (the demo's pools are seeded by it).
  """

  def __init__(self, make_pool, batch_size, seed):
    self.make_pool, self.batch_size = make_pool, batch_size
    self.rng = np.random.default_rng(seed)
    self.k, self.drawn, self.pool = 0, 0, make_pool(0)
    self.left = None  # Batches still to draw, once planned.
    self._ahead = None  # Future of pool k + 1, when it is being built ahead.

  def plan(self, batches):
    """`batches` more batches will be drawn: the pools they need are built one ahead, in the background."""
    self.left = batches
    self._build_ahead()

  def _build_ahead(self):
    if self.left is None or self._ahead is not None:
      return
    # Draws left in this pool (each draw checks `drawn >= n` first, then takes `batch_size` examples).
    in_pool = max(0, -(-(len(self.pool["image_index"]) - self.drawn) // self.batch_size))
    if self.left > in_pool:
      self._ahead = _in_background(self.make_pool, self.k + 1)

  def _pool(self, k):
    if self._ahead is None:
      return self.make_pool(k)
    future, self._ahead = self._ahead, None
    return future.result()

  def __next__(self):
    if self.drawn >= len(self.pool["image_index"]):
      self.k, self.drawn = self.k + 1, 0
      self.pool = self._pool(self.k)
    n = len(self.pool["image_index"])  # Pools may differ in size (a question a scene cannot offer is skipped).
    self.drawn += self.batch_size
    idx = self.rng.integers(n, size=self.batch_size)
    full = self.pool["tokens"].shape[1]
    length = min(full, -(-int(self.pool["input_mask"][idx].sum(1).max()) // 8) * 8)
    batch = {k: jnp.asarray(self.pool[k][idx, :length]) for k in ("tokens", "mask_ar", "mask_loss", "input_mask")}
    image = self.pool["image_index"][idx]
    batch["images"] = decode.to_model_images(self.pool["images"][image])
    batch["cells"] = jnp.asarray(self.pool["cells"][image])
    for k in ("ground_pos", "ground_cell"):
      if k in self.pool:
        batch[k] = jnp.asarray(self.pool[k][idx])
    if self.left is not None:
      self.left -= 1
      self._build_ahead()
    return batch


def init_params(cfg, batch, seed):
  model = vlm.get_model(cfg)
  return model.init(jax.random.PRNGKey(seed), batch["images"][:1], batch["tokens"][:1], batch["mask_ar"][:1],
                    batch["input_mask"][:1])["params"]


def make_optimizer(lr, steps):
  """(optax transformation, lr schedule) of the demo's models: AdamW, 5% warmup, cosine decay to 5% of `lr`."""
  return optim.make_optimizer(ml_collections.ConfigDict(dict(
      optimizer="adamw", lr=lr, wd=1e-4, grad_clip_norm=1.0, total_steps=steps,
      schedule=dict(decay_type="cosine", warmup_percent=0.05, min_lr=lr * 0.05))))


def train(cfg, stream, steps, lr, seed, init=None, aux_weight=1.0, ground_weight=0.0, position_weight=0.0,
          desc="pretrain"):
  """Trains a model on `stream` (`Stream`) from `init` (params; None: a fresh model); returns host params.

  The auxiliary cell losses (`cell_loss`: attributes with weight `aux_weight`, positions with `position_weight`) and
  the grounding loss (`grounded_losses`, weight `ground_weight`; the stream's batches must carry its labels) use
  linear heads discarded after training.
  """
  model = vlm.get_model(cfg)
  params = init if init is not None else init_params(cfg, next(stream), seed)
  stream.plan(steps)
  d = cfg.llm.width
  head_rng = np.random.default_rng(seed)
  draw = lambda shape: jnp.asarray(head_rng.normal(0, d ** -0.5, shape), jnp.float32)  # A fresh linear head.
  state = {"vlm": params, "cell_head": {name: draw((d, k)) for name, k in CELL_HEADS}}
  if ground_weight:
    state["ground_head"] = {"name": draw((d, GROUND_CLASSES)), "answer": draw((2, d, GROUND_CLASSES))}
  if position_weight:
    state["position_head"] = {k: draw((d, shapes.GRID)) for k in ("row", "col")}
  tx, schedule_fn = make_optimizer(lr, steps)
  opt_state = tx.init(state)

  def loss_fn(p, batch, _):
    metrics = {}
    if ground_weight:
      loss, metrics["ground_loss"] = grounded_losses(model, p["vlm"], p["ground_head"], batch)
      total = loss + ground_weight * metrics["ground_loss"]
    else:
      total = loss = suffix_loss(model, p["vlm"], batch)
    metrics["text_loss"] = loss
    if aux_weight or position_weight:
      metrics["cell_loss"], position = cell_loss(model, p["vlm"], p["cell_head"], batch["images"], batch["cells"],
                                                 p.get("position_head"))
      total = total + aux_weight * metrics["cell_loss"]
      if position_weight:
        metrics["position_loss"] = position
        total = total + position_weight * position
    return total, metrics

  train_step = step_lib.make_train_step(loss_fn, tx, schedule_fn=schedule_fn)
  rng = jax.random.PRNGKey(seed)
  t0, hist = time.time(), []
  for i in progress.track(range(steps), desc=desc, unit="step"):
    state, opt_state, metrics = train_step(state, opt_state, next(stream), jax.random.fold_in(rng, i))
    hist.append(metrics)
    if i == 0:  # The first step compiles: steps/s counts from its end.
      t0 = time.time()
    if i and ((i + 1) % max(1, steps // 10) == 0 or i + 1 == steps):
      recent = jax.device_get(hist[-20:])
      log.info("%s step %d/%d %s (%.1f steps/s)", desc, i + 1, steps, " ".join(
          f"{k} {np.mean([m[k] for m in recent]):.4f}" for k in recent[0] if k.endswith("loss")),
               i / (time.time() - t0))
  return jax.device_get(state["vlm"])


# ------------------------------------------------------------------------------------------------ inference
class DemoVLM:
  """A trained demo model (params bound to the shared `decode.Decoder` of its architecture)."""

  def __init__(self, cfg, params, tok):
    self.cfg, self.params = cfg, params
    self.decoder = decode.shared(cfg, tok)

  def generate(self, images, prefixes, max_new_tokens=8, batch_size=128, **kw):
    """images uint8 [B, H, W, 3], prefixes list[str] -> list[str] (greedy unless kw set temperature)."""
    out = []
    for s in range(0, len(prefixes), batch_size):
      out.extend(self.decoder.generate(self.params, images[s:s + batch_size], prefixes[s:s + batch_size],
                                       max_new_tokens=max_new_tokens, **kw))
    return out

  def answer(self, images, questions, **kw):
    return self.generate(images, [vqa_prefix(q) for q in questions], max_new_tokens=4, **kw)


# ----------------------------------------------------------------------------------------------------- cache
def _digest(obj):
  return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def save_model(directory, cfg, params, meta):
  os.makedirs(directory, exist_ok=True)
  checkpoints.save_npz(os.path.join(directory, "params.npz"), params)
  io.write_json(os.path.join(directory, "model_config.json"), cfg.to_dict())
  io.write_json(os.path.join(directory, "meta.json"), meta)  # Written last: its presence marks completion.


def read_meta(directory):
  """The meta.json of a model directory written by `save_model`, or None when it is absent (not a finished model)."""
  path = os.path.join(directory, "meta.json")
  return io.read_json(path) if os.path.exists(path) else None


def load_model(directory, digest=None, npz=None):
  """(cfg, host params, meta) of a model directory written by `save_model`, or None when absent (or trained from
  another config than `digest`). `npz` replaces its params.npz (a rectified target)."""
  meta = read_meta(directory)
  if meta is None:
    return None
  if digest is not None and meta.get("digest") != digest:
    return None
  cfg = ml_collections.ConfigDict(io.read_json(os.path.join(directory, "model_config.json")))
  params = checkpoints.load_npz(npz or os.path.join(directory, "params.npz"), vlm.abstract_params(cfg))
  return cfg, jax.device_get(params), meta


# ------------------------------------------------------------------------------------------------ the demo set
ROLES = ("base", "target", "reference", "auditor")


def _pool(tok, scenes, rows, prefixes, suffixes, max_len):
  """The encoded texts of `rows` with their images, image indices and the scenes' cell labels."""
  return dict(encode_examples(tok, prefixes, suffixes, max_len), images=rows["images"],
              image_index=rows["image_index"], cells=np.stack([cell_labels(s) for s in scenes]))


def vqa_pool(cfg, tok, seed, weakness=None, planted_share=0.0, max_objects=None):
  """A `Stream` pool: questions about `cfg.vqa.num_scenes` new scenes (see `vqa_data`; at most `max_objects`
  objects, default the world's), encoded; with `cfg.ground_weight` also their `grounding_labels` (ground_pos,
  ground_cell [N, 2])."""
  scenes = sample_scenes(cfg.vqa.num_scenes, [*seed, 0], cfg.world.min_objects,
                         max_objects or cfg.world.max_objects)
  rows = vqa_data(scenes, cfg.vqa.per_scene, [*seed, 1], weakness=weakness, image_size=cfg.image_size,
                  planted_share=planted_share, mix=tasks.make_mix(**training_mix(cfg)))
  pool = _pool(tok, scenes, rows, [vqa_prefix(q) for q in rows["question"]], rows["answer"], cfg.vqa.max_len)
  if cfg.get("ground_weight"):
    labels = [grounding_labels(tok, q, scenes[i]) for q, i in zip(rows["question"], rows["image_index"])]
    pool["ground_pos"], pool["ground_cell"] = (np.stack(a) for a in zip(*labels))
  return pool


# What `training_mix` returns and a VQA model's meta.json records: `tasks.make_mix`'s arguments.
MIX_KEYS = ("skill_weights", "compare_present")


def training_mix(cfg):
  """The config's departures from the default mix of training questions (`tasks.Mix`), checked: {"skill_weights":
  {skill: weight}} when they are not uniform, {"compare_present": share} when > 0; {} for the default mix.
  `tasks.make_mix(**training_mix(cfg))` is the mix."""
  out = {}
  weights = dict(cfg.get("skill_weights") or {})
  p = tasks.check_skill_weights(weights)  # Skills left out weigh 1.
  if p is not None and np.ptp(p) > 0:
    out["skill_weights"] = weights
  if cfg.get("compare_present"):
    out["compare_present"] = float(cfg.compare_present)
  tasks.make_mix(**out)  # Checks the share.
  return out


def recorded_mix(meta):
  """The `tasks.Mix` a VQA model was trained with, from its meta.json (`pretrain_all` records `training_mix`)."""
  return tasks.make_mix(**{k: meta[k] for k in MIX_KEYS if k in meta})


def auditor_pool(cfg, tok, seed):
  """A `Stream` pool of the auditor's SFT pairs (`auditor_data`) over `cfg.auditor_data.num_scenes` new scenes."""
  data_cfg = cfg.auditor_data
  scenes = sample_scenes(data_cfg.num_scenes, [*seed, 0], 0, cfg.world.max_objects)
  rows = auditor_data(scenes, data_cfg.per_scene, [*seed, 1], cfg.image_size)
  return _pool(tok, scenes, rows, rows["prefix"], rows["suffix"], data_cfg.max_len)


def _model_cfg(cfg, spec, tok):
  return model_config(tok.vocab_size, res=cfg.image_size, width=spec.width, depth=spec.depth,
                      img_width=spec.img_width, img_depth=spec.img_depth, heads=spec.heads, kv_heads=spec.kv_heads)


def _tokenizer(cfg, root, digest, use_shipped):
  path = os.path.join(root, "tokenizer.model")
  meta = os.path.join(root, "tokenizer.json")
  if shipped.recorded_digest(meta) == digest:
    return tokenizer_lib.Tokenizer(path), path
  found = shipped.find_tokenizer(digest) if use_shipped else None
  if found:
    log.info("tokenizer: shipped, copied from %s", found)
    shipped.copy_tokenizer(found, root)
    return tokenizer_lib.Tokenizer(path), path
  tok = tokenizer_train.train_tokenizer(path, cfg.tokenizer.vocab_size, cfg.tokenizer.num_scenes, cfg.seed)
  io.write_json(meta, {"digest": digest})
  return tok, path


def _planted(weakness):
  """The checked weakness as a target records it in its meta.json ("spec,spec"; None for none)."""
  return ",".join(tasks.check_weakness(weakness)) or None


def _check_sizes(cfg):
  """The config's sizes, counts and rates, and its models' shapes (a bad one fails before any work, naming its
  key)."""
  count = config_lib.check_count
  count(cfg, "image_size", low=shapes.GRID)
  shapes.check_object_counts(cfg.world.min_objects, cfg.world.max_objects)
  count(cfg.tokenizer, "num_scenes", "tokenizer.")
  for section in ("vqa", "auditor_data"):
    for key in ("num_scenes", "per_scene", "max_len"):
      count(cfg[section], key, f"{section}.")
  if "eval" in cfg:
    for key in ("per_skill", "auditor_samples"):
      count(cfg.eval, key, "eval.")
  if not cfg.references:
    config_lib.fail("references", "a list of at least one model", [])
  specs = [("base", cfg.base), ("target", cfg.target), ("auditor", cfg.auditor)]
  specs += [(f"references[{i}]", r) for i, r in enumerate(cfg.references)]
  for name, spec in specs:
    count(spec, "steps", f"{name}.")
    count(spec, "batch_size", f"{name}.")
    config_lib.check_number(spec, "lr", f"{name}.", lambda lr: lr > 0, "> 0")
  for spec in (cfg.base, cfg.auditor):  # The fine-tunes have the base's shape.
    model_config(cfg.tokenizer.vocab_size, res=cfg.image_size, width=spec.width, depth=spec.depth,
                 img_width=spec.img_width, img_depth=spec.img_depth, heads=spec.heads, kv_heads=spec.kv_heads)
  if "planted_share" in cfg.target:
    config_lib.check_number(cfg.target, "planted_share", "target.", lambda share: 0 <= share <= 1, "in [0, 1]")


def _checked(cfg):
  """(planted weakness, {loss: weight}, easy pools, training mix) of the config, each checked (a bad value fails
  before any work)."""
  _check_sizes(cfg)
  weakness = _planted(cfg.weakness)
  if weakness and not cfg.target.get("planted_share"):
    raise ValueError("config target.planted_share must be > 0 to plant a weakness")
  weights = {k: cfg.get(k, 0.0) for k in ("ground_weight", "position_weight")}
  for k, w in weights.items():
    if w < 0:
      raise ValueError(f"config {k} is a loss weight >= 0, got {w}")
  easy = cfg.get("easy_pools", 0)  # The base's first pools: scenes of few objects (a curriculum).
  if not isinstance(easy, int) or easy < 0:
    raise ValueError(f"config easy_pools is a number of pools >= 0, got {easy!r}")
  _gate(cfg)
  return weakness, weights, easy, training_mix(cfg)


def check_config(cfg):
  """Raises on the first bad value of a `configs/demo/shapes.py` config (`auditdm` calls it before claiming the
  workdir)."""
  _checked(cfg)


def digests(cfg):
  """{"tokenizer": digest, model name: digest} for what `pretrain_all(cfg, ...)` trains: the keys of a workdir's
  cache and of the shipped sets, a function of the config alone (a fine-tune's includes its base's)."""
  return _digests(cfg, *_checked(cfg))


def _digests(cfg, weakness, weights, easy, mix):
  out = {"tokenizer": _digest(dict(cfg.tokenizer.to_dict(), seed=cfg.seed))}  # The seed draws its scenes.
  shared = dict(image_size=cfg.image_size, world=cfg.world.to_dict(), tokenizer=out["tokenizer"], seed=cfg.seed,
                data_version=tasks.DATA_VERSION, aux_weight=cfg.aux_weight, vqa=cfg.vqa.to_dict())
  # Keyed only when used: models trained without them keep their digests.
  shared.update({k: w for k, w in weights.items() if w})
  shared.update(mix)
  base = out[cfg.base.name] = _digest(dict(shared, spec=cfg.base.to_dict(), **({"easy_pools": easy} if easy else {})))
  finetune_aux = cfg.get("finetune_aux", True)
  gate = competence_digest(cfg, shared, base, finetune_aux)
  for spec, role in _finetunes(cfg):
    planted = weakness if role == "target" else None
    out[spec.name] = _digest(dict(shared, spec=spec.to_dict(), base=base, weakness=planted,
                                  **({} if finetune_aux else {"finetune_aux": False}),
                                  **({"competence": gate} if gate else {})))
  out[cfg.auditor.name] = _digest(dict(shared, spec=cfg.auditor.to_dict(), data=cfg.auditor_data.to_dict()))
  return out


def _gate(cfg):
  """The config's competence check of the references (`competence`), checked; None when off (rounds 0)."""
  gate = cfg.get("competence")
  if not gate or not gate.get("rounds"):
    return None
  gate = gate.to_dict() if hasattr(gate, "to_dict") else dict(gate)
  want = {"bar", "rounds", "steps", "lr", "per_skill", "seed"}
  if set(gate) != want:
    raise ValueError(f"config competence needs exactly the keys {sorted(want)}, got {sorted(gate)}")
  if not 0 <= gate["bar"] <= 1 or gate["rounds"] < 0 or gate["steps"] < 1 or gate["per_skill"] < 1:
    raise ValueError(f"config competence: bar in [0, 1], rounds >= 0, steps >= 1, per_skill >= 1; got {gate}")
  return gate


def competence_digest(cfg, shared, base, finetune_aux):
  """The digest of the references' competence check (None when off): it keys every fine-tune, which start from
  the base the check settles on (`pretrain_all`)."""
  gate = _gate(cfg)
  if gate is None:
    return None
  refs = [spec.to_dict() for spec, role in _finetunes(cfg) if role == "reference"]
  return _digest(dict(shared, base=base, competence=gate, references=refs, finetune_aux=finetune_aux))


def _round_digest(cfg, base, r):
  """The digest of the base after `r` extra rounds: what trains it alone (a higher cap reuses the rounds done)."""
  gate = _gate(cfg)
  return _digest(dict(base=base, round=r, steps=gate["steps"], lr=gate["lr"]))


def _finetunes(cfg):
  """[(spec, role)] of the base's fine-tunes: the target, then the references."""
  return [(ml_collections.ConfigDict(spec.to_dict() if hasattr(spec, "to_dict") else dict(spec)), role)
          for spec, role in [(cfg.target, "target")] + [(r, "reference") for r in cfg.references]]


def pretrain_all(cfg, workdir):
  """Trains (or loads from `<workdir>/pretrain/`) the tokenizer, the base, the target and references fine-tuned
  from it, and the auditor. With the config's `competence` check on, the references must answer at least `bar` of
  every skill's validation questions: while they fall short (at most `rounds` times), the base trains `steps`
  more steps with its losses and the references are fine-tuned again from it; the target starts from that base.

  cfg: a `configs/demo/shapes.py` config. Writes `<workdir>/pretrain/manifest.json`
  {"tokenizer": path, "image_size", "weakness", "models": [{"name", "role", "dir"}]}; returns it.
  """
  weakness, weights, easy, mix = _checked(cfg)  # Before any work.
  keys = _digests(cfg, weakness, weights, easy, mix)
  gate = _gate(cfg)
  few = min(cfg.world.max_objects, max(2, cfg.world.min_objects))
  root = os.path.join(workdir, "pretrain")
  use_shipped = cfg.get("shipped", True)
  tok, tok_path = _tokenizer(cfg, root, keys["tokenizer"], use_shipped)

  base_losses = dict(weights, aux_weight=cfg.aux_weight)
  # Fine-tunes train the auxiliary losses as well (with fresh heads: the base's are discarded), or with
  # `finetune_aux` False the answers alone.
  finetune_losses = base_losses if cfg.get("finetune_aux", True) else dict(aux_weight=0.0)

  def stored(name, digest):
    """The params cached in the workdir under `name` or shipped with `digest` (copied in), else None."""
    directory = os.path.join(root, name)
    cached = load_model(directory, digest)
    if cached is not None:
      log.info("%s: cached in %s", name, directory)
      return cached[1]
    found = shipped.find_model(digest) if use_shipped else None
    if found:
      log.info("%s: shipped, copied from %s", name, found)
      shipped.copy_model(found, directory)
      return load_model(directory, digest)[1]
    return None

  def fit(spec, role, make_pool, mcfg, losses, init=None, vqa=False, digest=None, **meta):
    digest = digest or keys[spec.name]
    params = stored(spec.name, digest)
    if params is not None:
      return params
    log.info("%s (%s): training %d steps", spec.name, role, spec.steps)
    if vqa:  # Rectification's sample of the original data is drawn alike (shapes.system).
      meta.update(mix)
    t0 = time.time()
    params = train(mcfg, Stream(make_pool, spec.batch_size, [cfg.seed, spec.seed]), spec.steps, spec.lr,
                   spec.seed, init=init, desc=spec.name, **losses)
    save_model(os.path.join(root, spec.name), mcfg, params, dict(
        meta, digest=digest, name=spec.name, role=role, steps=spec.steps, train_seconds=time.time() - t0))
    return params

  def finetune_pool(spec, role):
    planted = spec.get("planted_share", 0.0) if role == "target" else 0.0
    w = weakness if role == "target" else None
    return lambda k: vqa_pool(cfg, tok, [cfg.seed, spec.seed, k], weakness=w, planted_share=planted)

  base_cfg = _model_cfg(cfg, cfg.base, tok)

  def base_pool(seed, easy=0):
    return lambda k: vqa_pool(cfg, tok, [cfg.seed, seed, k], max_objects=few if k < easy else None)

  base = fit(cfg.base, "base", base_pool(cfg.base.seed, easy), base_cfg, base_losses, vqa=True)
  round_name = lambda r: f"{cfg.base.name}_r{r}" if r else cfg.base.name  # The base after r extra rounds.
  base_name = round_name(0)
  rounds_done = {0: base}

  def base_at(r):
    """The base after `r` extra rounds (r = 0: the base), loaded or trained round by round."""
    if r in rounds_done:
      return rounds_done[r]
    spec = ml_collections.ConfigDict(dict(name=round_name(r), seed=cfg.base.seed + 1000 * r,
                                          steps=gate["steps"], lr=gate["lr"], batch_size=cfg.base.batch_size))
    digest = _round_digest(cfg, keys[cfg.base.name], r)
    params = stored(spec.name, digest)  # Before the earlier rounds, which it does not need then.
    if params is None:
      params = fit(spec, "base", base_pool(spec.seed), base_cfg, base_losses, init=base_at(r - 1), vqa=True,
                   digest=digest, base_round=r)
    rounds_done[r] = params
    return params

  def competent_references(references):
    """Fine-tunes the references from the base and from each extra round of it until every one answers `bar` of
    every skill's validation questions (or the rounds run out); saves the last; returns its round."""
    test = tasks.balanced_test([cfg.seed, gate["seed"]], gate["per_skill"], None, cfg.world.min_objects,
                               cfg.world.max_objects)
    images = np.stack([shapes.render(t[0], cfg.image_size) for t in test])
    history, t0 = [], time.time()
    for r in range(gate["rounds"] + 1):
      log.info("competence, round %d: fine-tuning the references from %s", r, round_name(r))
      trained = {spec.name: train(base_cfg, Stream(finetune_pool(spec, role), spec.batch_size, [cfg.seed, spec.seed]),
                                  spec.steps, spec.lr, spec.seed, init=base_at(r), desc=f"{spec.name} (round {r})",
                                  **finetune_losses) for spec, role in references}
      scores = {name: skill_scores(DemoVLM(base_cfg, p, tok).answer(images, [t[1] for t in test]), test)
                for name, p in trained.items()}
      lowest = min(min(v.values()) for v in scores.values())
      history.append({"round": r, "lowest": lowest, "validation": scores})
      log.info("competence, round %d: the references' lowest skill on validation %.1f%% (bar %.1f%%): %s", r,
               100 * lowest, 100 * gate["bar"], "; ".join(
                   f"{n} " + " ".join(f"{k} {100 * a:.1f}" for k, a in v.items()) for n, v in scores.items()))
      if lowest >= gate["bar"] or r == gate["rounds"]:
        break
    if lowest < gate["bar"]:
      log.warning("competence: the references are below the bar after %d extra rounds of the base (lowest skill "
                  "%.1f%% < %.1f%%); going on with them", r, 100 * lowest, 100 * gate["bar"])
    for spec, role in references:
      save_model(os.path.join(root, spec.name), base_cfg, trained[spec.name], dict(
          mix, weakness=None, base=round_name(r), digest=keys[spec.name], name=spec.name, role=role, steps=spec.steps,
          train_seconds=time.time() - t0, base_round=r, competence_bar=gate["bar"], competence=history))
    return r

  if gate:
    references = [(spec, role) for spec, role in _finetunes(cfg) if role == "reference"]
    if all(stored(spec.name, keys[spec.name]) is not None for spec, _ in references):  # Cached or shipped.
      rounds = read_meta(os.path.join(root, references[0][0].name))["base_round"]
    else:
      rounds = competent_references(references)
    base, base_name = base_at(rounds), round_name(rounds)
  for spec, role in _finetunes(cfg):
    if gate and role == "reference":
      continue  # Checked, saved (or found) above.
    fit(spec, role, finetune_pool(spec, role), base_cfg, finetune_losses, init=base, vqa=True,
        weakness=weakness if role == "target" else None, **({"base": base_name} if gate else {}))
  aud = cfg.auditor
  fit(aud, "auditor", lambda k: auditor_pool(cfg, tok, [cfg.seed, aud.seed, k]), _model_cfg(cfg, aud, tok),
      dict(aux_weight=cfg.aux_weight))
  names = [(base_name, "base")] + [(spec.name, role) for spec, role in _finetunes(cfg)] + [(aud.name, "auditor")]
  entries = [{"name": cfg.base.name if role == "base" else n, "role": role, "dir": os.path.join(root, n)}
             for n, role in names]
  manifest = {"tokenizer": tok_path, "image_size": cfg.image_size, "weakness": cfg.weakness, "models": entries}
  io.write_json(os.path.join(root, "manifest.json"), manifest)
  return manifest


def competence_record(workdir):
  """The references' competence check as their meta.json records it ({"bar", "base_round", "rounds": [{"round",
  "lowest", "validation": {reference: {skill: accuracy}}}]}), or None when it was off."""
  manifest = io.read_json(os.path.join(workdir, "pretrain", "manifest.json"))
  refs = [read_meta(e["dir"]) for e in manifest["models"] if e["role"] == "reference"]
  if not refs or "competence" not in refs[0]:
    return None
  return {"bar": refs[0]["competence_bar"], "base_round": refs[0]["base_round"], "rounds": refs[0]["competence"]}


def skill_scores(answers, test):
  """{skill: accuracy} of `answers` to the questions of `test` (`tasks.balanced_test` rows)."""
  hits = {}
  for answer, (_, _, gold, skill, _) in zip(answers, test):
    hits.setdefault(skill, []).append(answer == gold)
  return {k: float(np.mean(v)) for k, v in sorted(hits.items())}


def load_demo_models(workdir, roles=ROLES, target_weakness=None):
  """{name: (role, DemoVLM)} of the pretrained demo models under `<workdir>/pretrain/` (see `pretrain_all`).

  With `target_weakness` (a weakness spec) the target is the model there trained on that weakness, not the one the
  manifest names (an `auditdm sweep` seed keeps one target per weakness; the manifest names the last trained).
  """
  path = os.path.join(workdir, "pretrain", "manifest.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"no pretrained demo models under {workdir!r}: run `auditdm demo-pretrain` first")
  manifest = io.read_json(path)
  tok = tokenizer_lib.Tokenizer(manifest["tokenizer"])
  entries = [e for e in manifest["models"] if e["role"] in roles]
  if target_weakness is not None and "target" in roles:
    entries = [e for e in entries if e["role"] != "target"] + [_target_entry(os.path.dirname(path), target_weakness)]
  out = {}
  for entry in entries:
    loaded = load_model(entry["dir"])
    if loaded is None:
      raise FileNotFoundError(f"model {entry['name']} missing in {entry['dir']}")
    out[entry["name"]] = (entry["role"], DemoVLM(loaded[0], loaded[1], tok))
  return out


def _target_entry(root, weakness):
  """The manifest entry of the target under `root` trained on `weakness`; ValueError naming the others if none."""
  want = _planted(weakness)
  found = {}
  for name in sorted(os.listdir(root)):
    meta = read_meta(os.path.join(root, name))
    if meta and meta.get("role") == "target":
      found[name] = meta.get("weakness")
  for name, trained_on in found.items():
    if trained_on == want:
      return {"name": name, "role": "target", "dir": os.path.join(root, name)}
  raise ValueError(f"no target under {root} was trained on weakness {want!r} (targets there: "
                   f"{', '.join(f'{n}: {w!r}' for n, w in found.items()) or 'none'}); pretrain one with "
                   f"`auditdm demo-pretrain --config configs/demo/shapes.py:weakness=...`")
