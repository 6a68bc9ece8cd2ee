"""Supervised fine-tuning of a PaliGemma or Gemma3 VLM on a task (big_vision transfer style), with periodic evals.

Reads top to bottom: config -> mesh -> data -> init/load (or resume) -> update_fn -> loop with checkpoints and
evals. The loss is the prefix-LM loss: next-token cross-entropy on the suffix only (`mask_loss`), optionally label
smoothed, averaged per example. Used by `auditdm finetune` (per-task transfers) and by rectification (the same loop
over the original split mixed with generated JSONL data, `config.input.data` with weights).

Config (see configs/paligemma2/transfers/*.py):
  model = dict(variant, res, llm={...}, img={...})     models.vlm.get_config arguments
  model_init: None (random init), a big_vision .npz / tensorstore checkpoint or a HF PaliGemma2 / Gemma3 directory
  tokenizer: sentencepiece .model path (its vocab must fit the model's)
  input = dict(data=[{name|jsonl|folder, split, weight, pp?}], pp, batch_size, shuffle_buffer)
  total_epochs or total_steps; lr, wd, schedule, optimizer, grad_clip_norm, grad_accum_steps, trainable
  label_smoothing, llm_dropout, seed, mesh, log_every_steps, ckpt_every_steps, keep_ckpts
  evals = {name: dict(type, data, pp_fn, batch_size, every_steps, max_decode_len, ...evaluator kwargs)}
Gemma3 (model.variant gemma3_*, configs/gemma3/rectify.py): the pp op `gemma3_chat_tokens` writes the chat-template
text (image placeholders in the text, loss on the answer + <end_of_turn>); eval prompts end with the model turn and
decoding stops at <end_of_turn> or <eos>.
"""
import functools
import logging
import math
import os
import time

import jax
import jax.numpy as jnp

from auditdm_jax import config as config_lib
from auditdm_jax import decode
from auditdm_jax import evaluators
from auditdm_jax import io as io_lib
from auditdm_jax import metrics as metrics_lib
from auditdm_jax import progress
from auditdm_jax import sharding
from auditdm_jax.data import tfds_input
from auditdm_jax.models import checkpoints
from auditdm_jax.models import tokenizer as tokenizer_lib
from auditdm_jax.models import vlm
from auditdm_jax.train import checkpoint as checkpoint_lib
from auditdm_jax.train import cross_entropy
from auditdm_jax.train import optim
from auditdm_jax.train import step as step_lib

log = logging.getLogger(__name__)

MODEL_KEYS = ("image", "text", "mask_ar", "mask_loss", "mask_input")


def prefix_lm_loss(logits, targets, weights, label_smoothing=0.0):
  """Per-example mean cross-entropy [B] of logits [B, T, V] for targets [B, T] where weights [B, T] > 0.

  With label smoothing ls the target distribution is (1 - ls) * onehot + ls / V.
  """
  token_loss = -cross_entropy.token_logprobs(logits, targets)
  if label_smoothing:
    token_loss = (1.0 - label_smoothing) * token_loss - label_smoothing * cross_entropy.mean_logprob(logits)
  weights = weights.astype(jnp.float32)
  return jnp.sum(token_loss * weights, axis=-1) / jnp.maximum(jnp.sum(weights, axis=-1), 1.0)


def model_config(config):
  """The VLM ConfigDict of `config.model`, with `config.llm_dropout` as the decoder's residual dropout."""
  m = config.model
  llm = dict(m.get("llm") or {})
  dropout = float(config.get("llm_dropout") or 0.0)
  if dropout:
    llm["dropout"] = dropout
  return vlm.get_config(m.variant, res=m.get("res"), llm=llm, img=dict(m.get("img") or {}))


def load_params(config, cfg, model, mesh, rng):
  """Params placed on `mesh`: random init, or loaded from `config.model_init` (a big_vision .npz or tensorstore
  checkpoint, or a HF directory)."""
  abstract = vlm.abstract_params(cfg)
  shardings = sharding.param_shardings(abstract, mesh)
  init_path = config.get("model_init")
  if not init_path:
    images = jnp.zeros((1, cfg.res, cfg.res, 3), jnp.float32)
    tokens = jnp.zeros((1, 4), jnp.int32)
    if cfg.family == "gemma3":  # One image's placeholder run.
      tokens = jnp.full((1, cfg.mm_tokens_per_image), cfg.image_token_id, jnp.int32)
    init = jax.jit(lambda r: model.init(r, images, tokens, tokens)["params"], out_shardings=shardings)
    return init(rng), shardings
  with checkpoints.reading(init_path):
    if os.path.isdir(init_path) and not checkpoints.is_big_vision_ts(init_path):
      _, params = checkpoints.load_vlm_hf(init_path, cfg, shardings)
    else:
      params = checkpoints.load_npz(init_path, abstract, shardings)
  return params, shardings


def make_loss_fn(model, label_smoothing, deterministic=False):
  """loss_fn(params, batch, rng) -> (mean loss, aux). Training (deterministic=False) applies the decoder's dropout
  with `rng`; deterministic=True (evaluation) is the dropout-free loss."""
  def loss_fn(params, batch, rng):
    text, mask_input = batch["text"], batch["mask_input"]
    logits = model.apply({"params": params}, batch["image"], text[:, :-1], batch["mask_ar"][:, :-1],
                         mask_input[:, :-1], deterministic=deterministic, rngs={"dropout": rng})
    weights = batch["mask_loss"][:, 1:] * mask_input[:, 1:]
    # Unweighted targets may lie outside the table (Gemma3's image placeholder id): clipped so they gather a logit.
    targets = jnp.clip(text[:, 1:], 0, logits.shape[-1] - 1)
    per_example = prefix_lm_loss(logits, targets, weights, label_smoothing)
    correct = (jnp.argmax(logits, -1) == targets) * weights
    return jnp.mean(per_example), {"token_acc": jnp.sum(correct) / jnp.maximum(jnp.sum(weights), 1.0)}
  return loss_fn


class Predictor:
  """Greedy decoding of the answer for eval batches (`image`, prompt `text`, `mask_input`) -> list[str] through the
  shared `decode.Decoder` of the model, so successive evaluations reuse its compiled sampler.

  Decoding stops at <eos> and, for Gemma3 (chat prompts), also at <end_of_turn>.
  """

  def __init__(self, cfg, tokenizer):
    self.decoder = decode.shared(cfg, tokenizer)

  def __call__(self, params, batch, max_decode_len=32):
    out = self.decoder.sample(params, batch["image"], batch["text"], batch["mask_input"],
                              max_new_tokens=max_decode_len)
    return [row[0] for row in self.decoder.texts(out)]


def make_evaluators(config, predictor, outdir):
  """{name: Evaluator} from `config.evals` (each entry: type, data, pp_fn, batch_size, every_steps, ...)."""
  evals = {}
  for name, ev in (config.get("evals") or {}).items():
    ev = dict(ev)
    kind = ev.pop("type")
    ev.pop("every_steps", None)
    predict_fn = functools.partial(predictor, max_decode_len=ev.pop("max_decode_len", 32))
    evals[name] = evaluators.get(kind)(predict_fn, name=name, outdir=outdir, **ev)
  return evals


def num_train_examples(sources):
  """Examples over all training sources (one epoch of the mixture)."""
  return sum(tfds_input.raw_dataset(s)[1] for s in sources)


def total_steps(config, sources):
  """`config.total_steps`, or total_epochs x (examples over all sources) / batch size."""
  if config.get("total_steps"):
    return int(config.total_steps)
  n = num_train_examples(sources)
  return max(1, math.ceil(config.total_epochs * n / config.input.batch_size))


def evaluate(config, params, outdir, cfg=None, step=None):
  """Runs every eval of `config.evals` with `params`; writes per-eval predictions + metrics under `outdir`."""
  cfg = cfg or model_config(config)
  predictor = Predictor(cfg, tokenizer_lib.Tokenizer(config.tokenizer))
  results = {}
  for name, ev in make_evaluators(config, predictor, outdir).items():
    results.update(ev.run(params))
    log.info("step %s eval %s done", step, name)
  return results


def check_config(config):
  """Checks what `train` would otherwise find only at its first step or first eval (ValueError naming the key):
  batch size, steps, gradient accumulation, the tokenizer against the model's vocabulary, and the evals
  (`check_evals`)."""
  config_lib.check_count(config.input, "batch_size", "input.")
  if config.get("grad_accum_steps"):
    config_lib.check_count(config, "grad_accum_steps")
    if config.input.batch_size % config.grad_accum_steps:
      raise ValueError(f"grad_accum_steps must divide input.batch_size {config.input.batch_size}, got "
                       f"{config.grad_accum_steps}")
  if not (config.get("total_steps") or 0) >= 0:
    raise ValueError(f"total_steps must be >= 0 (0: from total_epochs), got {config.total_steps}")
  if not config.get("total_steps") and not (config.get("total_epochs") or 0) > 0:
    raise ValueError(f"give total_steps >= 1 or total_epochs > 0, got {config.get('total_steps')!r} and "
                     f"{config.get('total_epochs')!r}")
  vocab = model_config(config).llm.vocab_size
  tok = tokenizer_lib.Tokenizer(config.tokenizer)
  if tok.vocab_size > vocab:
    raise ValueError(f"tokenizer has {tok.vocab_size} pieces but the model's vocab is {vocab}")
  for i, source in enumerate(config.input.data):
    _count_examples(source, f"input.data[{i}]")
  check_evals(config)


def _count_examples(source, what):
  """Examples in `source`; a ValueError naming `what` when it has none or cannot be opened (TFDS asserts)."""
  try:
    _, n = tfds_input.raw_dataset(dict(source))
  except AssertionError as e:  # E.g. "Dataset vqav2: could not find data in <data_dir>".
    raise ValueError(f"{what}: cannot open its data {dict(source)}: {e}") from None
  if not n:
    raise ValueError(f"{what}: its data {dict(source)} has no examples")
  return n


def check_evals(config):
  """Each eval of `config.evals`: its type and arguments, batch size, schedule and data (a split that exists and
  holds examples); ValueError naming the key."""
  for name, ev in (config.get("evals") or {}).items():
    for key, low in (("batch_size", 1), ("every_steps", 0), ("max_decode_len", 1)):
      if key in ev or key == "batch_size":
        config_lib.check_count(ev, key, f"evals.{name}.", low)
    if "data" not in ev or "type" not in ev:
      raise ValueError(f"evals.{name} needs `type` and `data`")
    _count_examples(ev["data"], f"evals.{name}")
  make_evaluators(config, lambda params, batch, max_decode_len: [], None)  # Types and their arguments.


def _due_evals(evals_cfg, step, steps):
  return [n for n, e in evals_cfg.items() if step == steps or (e.get("every_steps") and step % e["every_steps"] == 0)]


def _eval_dir(workdir, step):
  return os.path.join(workdir, "evals", f"step_{step:07d}")


def _recorded_evals(workdir, step, names):
  """({metric: value} the evals `names` wrote at `step`, [the names that did not finish there])."""
  results, missing = {}, []
  for name in names:
    path = os.path.join(_eval_dir(workdir, step), f"{name}.metrics.json")
    if os.path.exists(path):
      results.update(io_lib.read_json(path))
    else:
      missing.append(name)
  return results, missing


def train(config, workdir, checked=False):
  """Fine-tunes per `config` in `workdir` (resuming from its latest checkpoint); returns the final eval metrics.

  Resuming also runs the evals due at the checkpoint's step that did not finish before the stop, drops the
  metric rows logged past it (they are logged again), and on a finished workdir returns the last evals' metrics.
  `checked`: the caller already ran `check_config` (which opens every source to count it).
  """
  if not checked:
    check_config(config)
  # Config -> mesh.
  cfg = model_config(config)
  model = vlm.get_model(cfg)
  tok = tokenizer_lib.Tokenizer(config.tokenizer)
  mesh = sharding.make_mesh(config.get("mesh"))
  rng = jax.random.key(config.get("seed", 0))

  # Data.
  sources = [dict(s) for s in config.input.data]
  steps = total_steps(config, sources)
  log.info("training %d steps (batch %d)", steps, config.input.batch_size)

  # Init / load (or resume: then the checkpoint is restored straight onto the mesh, nothing else is loaded).
  tx, schedule_fn = optim.make_optimizer(config, total_steps=steps)
  ckpt = checkpoint_lib.Checkpointer(workdir, save_every_steps=config.get("ckpt_every_steps"),
                                     keep=config.get("keep_ckpts") or 2)
  with ckpt:  # Closing waits for the saves in flight, also when a step or an eval fails.
    start, data_state = 0, None
    if ckpt.latest_step() is None:
      params, shardings = load_params(config, cfg, model, mesh, jax.random.fold_in(rng, 0))
      opt_state = step_lib.init_opt_state(tx, params, mesh, shardings)
    else:
      if ckpt.latest_step() > steps:
        raise ValueError(f"the workdir's latest checkpoint is at step {ckpt.latest_step()}, past this config's "
                         f"{steps} steps ({ckpt.directory}); give a new workdir or at least as many steps")
      abstract = vlm.abstract_params(cfg)
      shardings = sharding.param_shardings(abstract, mesh)
      opt_abstract = checkpoint_lib.abstract(jax.eval_shape(tx.init, abstract),
                                             step_lib.opt_state_shardings(tx, abstract, mesh, shardings))
      restored = ckpt.restore_latest(params=checkpoint_lib.abstract(abstract, shardings), opt_state=opt_abstract)
      params, opt_state, start, data_state = (restored["params"], restored["opt_state"], restored["step"],
                                              restored["data_state"])
      log.info("resumed at step %d", start)

    # update_fn.
    update_fn = step_lib.make_train_step(
        make_loss_fn(model, float(config.get("label_smoothing") or 0.0), deterministic=False), tx, mesh=mesh,
        param_shardings=shardings, schedule_fn=schedule_fn, grad_accum_steps=config.get("grad_accum_steps") or 1,
        trainable=optim.trainable_mask(params, config))
    train_input = tfds_input.TrainInput(sources, config.input.pp, config.input.batch_size,
                                        seed=config.get("seed", 0),
                                        shuffle_buffer=config.input.get("shuffle_buffer") or 10_000, state=data_state)

    predictor = Predictor(cfg, tok)
    evals_cfg = dict(config.get("evals") or {})
    with metrics_lib.MetricWriter(workdir, after_step=start) as writer:

      def run_evals(step, names):
        evs = make_evaluators(config, predictor, _eval_dir(workdir, step))
        results = {}
        for name in names:
          metrics = evs[name].run(params)
          writer.write(step, **metrics)
          results.update(metrics)
        return results

      results, missing = _recorded_evals(workdir, start, _due_evals(evals_cfg, start, steps) if start else [])
      if missing:  # Stopped between the checkpoint and its evals.
        log.info("running the evals due at step %d that did not finish before the stop: %s", start, missing)
        results.update(run_evals(start, missing))
      log_every = config.get("log_every_steps") or 10
      t0 = time.time()
      for step in progress.track(range(start + 1, steps + 1), initial=start, desc="SFT", unit="step"):
        batch = {k: v for k, v in next(train_input).items() if k in MODEL_KEYS}
        params, opt_state, m = update_fn(params, opt_state, sharding.shard_batch(batch, mesh),
                                         jax.random.fold_in(rng, step))
        if step % log_every == 0 or step == steps:
          m = jax.device_get(m)
          writer.write(step, **m, steps_per_sec=log_every / max(time.time() - t0, 1e-9))
          log.info("step %d/%d loss %.4f", step, steps, float(m["loss"]))
          t0 = time.time()
        ckpt.maybe_save(step, params=params, opt_state=opt_state, rng=rng, data_state=train_input.state(),
                        force=step == steps)
        if ckpt.preempted:
          break  # Leaving the `with` raises Preempted; the resumed run runs this step's evals.
        if due := _due_evals(evals_cfg, step, steps):
          results = run_evals(step, due)
  return results
