"""Optimizer and learning-rate schedule from a big_vision-style config.

Config fields (all top-level, as in big_vision):
  optimizer       'adamw' (default) | 'sgd' | 'adafactor'
  lr, wd          base learning rate; decoupled weight decay. As in big_vision, `wd` is NOT multiplied by the base
                  lr: each step applies `p -= wd * (lr_t / lr) * p`, so Table-1 values like `wd=1e-6` mean what
                  they say.
  b1, b2, eps     Adam moments (defaults 0.9, 0.999, 1e-8); `momentum` (SGD, default 0.9), `mu_dtype` (Adam).
  schedule        dict(decay_type='cosine'|'linear'|'rsqrt'|'constant', warmup_steps=N | warmup_percent=f,
                  min_lr=0.0, timescale=10_000 [rsqrt]); None = constant.
  total_steps     needed by cosine/linear decay and `warmup_percent` (or pass `total_steps=`).
  grad_clip_norm  clip by global norm (over trainable params) before the optimizer; None/0 = off.
  trainable       regex (or list) of param names to train; None = all. `frozen`: regex of params to freeze.
  wd_exclude      regex of params without weight decay (default: norms, biases, scales, position
                  embeddings); params with ndim < 2 are never decayed.
"""
import math

import jax
import jax.numpy as jnp
import optax

from auditdm_jax import tree_paths as paths

DEFAULT_WD_EXCLUDE = r"(norm|bias|scale|pos_embedding|(^|/)b$)"
OPTIMIZERS = ("adamw", "sgd", "adafactor")
DECAY_TYPES = ("cosine", "linear", "rsqrt", "constant")


def _get(config, key, default=None):
  value = config.get(key, default) if hasattr(config, "get") else getattr(config, key, default)
  return default if value is None else value


def _as_dict(x):
  if x is None:
    return {}
  return x.to_dict() if hasattr(x, "to_dict") else dict(x)


def make_schedule(lr, schedule=None, total_steps=None):
  """Learning rate as a function of the update count (0-based): `step -> lr_t`.

  Linear warm-up from 0 to `lr` over `warmup_steps` (lr_0 = 0, as in big_vision), then decay over the remaining
  steps to `min_lr`: cosine `min_lr + (lr - min_lr) * (1 + cos(pi * p)) / 2`, linear, or
  rsqrt `lr * sqrt(timescale / (timescale + step - warmup))`; constant keeps `lr`. p = progress in [0, 1].
  """
  sched = _as_dict(schedule)
  decay_type = sched.pop("decay_type", "constant" if schedule is None else "cosine")
  if decay_type not in DECAY_TYPES:
    raise ValueError(f"unknown schedule decay_type {decay_type!r}; expected one of {DECAY_TYPES}")
  warmup_steps = sched.pop("warmup_steps", None)
  warmup_percent = sched.pop("warmup_percent", None)
  min_lr = float(sched.pop("min_lr", 0.0))
  timescale = float(sched.pop("timescale", 10_000))
  if sched:
    raise ValueError(f"unknown schedule fields {sorted(sched)}")
  if warmup_steps is not None and warmup_percent is not None:
    raise ValueError("give schedule.warmup_steps or schedule.warmup_percent, not both")
  needs_total = decay_type in ("cosine", "linear") or warmup_percent is not None
  if needs_total and not total_steps:
    raise ValueError(f"schedule {decay_type!r} (warmup_percent={warmup_percent}) needs total_steps")
  if warmup_percent is not None:
    warmup_steps = int(round(float(warmup_percent) * total_steps))
  warmup_steps = int(warmup_steps or 0)
  if total_steps and warmup_steps > total_steps:
    raise ValueError(f"warmup_steps={warmup_steps} exceeds total_steps={total_steps}")
  if min_lr > lr:
    raise ValueError(f"schedule min_lr={min_lr} exceeds lr={lr}")
  lr = float(lr)

  def schedule_fn(step):
    step = jnp.asarray(step, jnp.float32)
    if decay_type in ("cosine", "linear"):
      progress = jnp.clip((step - warmup_steps) / max(1, total_steps - warmup_steps), 0.0, 1.0)
      if decay_type == "cosine":
        value = min_lr + (lr - min_lr) * 0.5 * (1.0 + jnp.cos(math.pi * progress))
      else:
        value = lr + (min_lr - lr) * progress
    elif decay_type == "rsqrt":
      value = lr * jnp.sqrt(timescale / (timescale + jnp.maximum(0.0, step - warmup_steps)))
    else:
      value = jnp.full_like(step, lr)
    if warmup_steps:
      value = value * jnp.minimum(1.0, step / warmup_steps)
    return value
  return schedule_fn


def trainable_mask(params, config):
  """Bool tree: True for params trained under `config.trainable` / `config.frozen` (default: all)."""
  train_rx = paths.compile_regex(_get(config, "trainable"))
  frozen_rx = paths.compile_regex(_get(config, "frozen"))
  return paths.tree_map_with_names(
      lambda n, _: bool((train_rx is None or train_rx.search(n)) and not (frozen_rx and frozen_rx.search(n))),
      params)


def has_frozen(config):
  return bool(_get(config, "trainable")) or bool(_get(config, "frozen"))


def decay_mask(params, config):
  """Bool tree: True for params that get weight decay (ndim >= 2 and name not matching `wd_exclude`)."""
  rx = paths.compile_regex(_get(config, "wd_exclude", DEFAULT_WD_EXCLUDE))
  return paths.tree_map_with_names(lambda n, x: bool(jnp.ndim(x) >= 2 and not (rx and rx.search(n))), params)


def make_optimizer(config, total_steps=None):
  """Config -> (optax GradientTransformation, schedule_fn). See the module docstring for the fields.

  Frozen params (see `trainable_mask`) get zero updates and no optimizer state.
  """
  name = _get(config, "optimizer", "adamw")
  if name not in OPTIMIZERS:
    raise ValueError(f"unknown optimizer {name!r}; expected one of {OPTIMIZERS}")
  lr = _get(config, "lr")
  if lr is None:
    raise ValueError("optimizer config needs `lr`")
  lr, wd = float(lr), float(_get(config, "wd", 0.0))
  if lr <= 0 and wd:
    raise ValueError("decoupled weight decay is relative to lr: needs lr > 0")
  total_steps = total_steps or _get(config, "total_steps")
  schedule_fn = make_schedule(lr, _get(config, "schedule"), total_steps)
  wd_mask = lambda params: decay_mask(params, config)

  if name == "adamw":
    tx = optax.chain(
        optax.scale_by_adam(b1=_get(config, "b1", 0.9), b2=_get(config, "b2", 0.999),
                            eps=_get(config, "eps", 1e-8), mu_dtype=_get(config, "mu_dtype")),
        optax.add_decayed_weights(wd / lr, mask=wd_mask) if wd else optax.identity(),
        optax.scale_by_learning_rate(schedule_fn))
  elif name == "sgd":
    momentum = _get(config, "momentum", 0.9)
    tx = optax.chain(
        optax.trace(decay=momentum, nesterov=bool(_get(config, "nesterov", False))) if momentum else optax.identity(),
        optax.add_decayed_weights(wd / lr, mask=wd_mask) if wd else optax.identity(),
        optax.scale_by_learning_rate(schedule_fn))
  else:
    tx = optax.adafactor(learning_rate=schedule_fn, weight_decay_rate=(wd / lr) if wd else None,
                         weight_decay_mask=wd_mask)

  clip = _get(config, "grad_clip_norm")
  if clip:
    tx = optax.chain(optax.clip_by_global_norm(float(clip)), tx)
  if has_frozen(config):
    labels = lambda params: jax.tree.map(lambda t: "train" if t else "frozen", trainable_mask(params, config))
    tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
  return tx, schedule_fn
