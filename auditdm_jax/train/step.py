"""Generic jitted train step: loss -> grads (micro-batched) -> optax update, with shardings and donation.

Used by the SFT fine-tuner and the GRPO auditor trainer alike:

  tx, sched = optim.make_optimizer(config)
  shardings = sharding.param_shardings(params, mesh)
  params = sharding.shard_params(params, shardings=shardings)
  opt_state = init_opt_state(tx, params, mesh, shardings)
  train_step = make_train_step(loss_fn, tx, mesh=mesh, param_shardings=shardings, schedule_fn=sched,
                               grad_accum_steps=config.grad_accum_steps,
                               trainable=optim.trainable_mask(params, config))
  params, opt_state, metrics = train_step(params, opt_state, sharding.shard_batch(batch, mesh), rng)

Rematerialisation is a model concern (`nn.remat` on layers, `scan_layers`), not done here.
"""
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from auditdm_jax import compile_log
from auditdm_jax import sharding as sharding_lib
from auditdm_jax import tree_paths as paths

compile_log.install()  # Every compilation over a second is logged with its function's name.


def opt_state_shardings(tx, params, mesh, param_shardings):
  """Shardings for `tx.init(params)`: a state leaf whose path ends with a param's path and has its shape (Adam
  moments, momentum...) is sharded like that param; everything else (counts, factored stats) is replicated."""
  by_name = {}
  for (kp, x), s in zip(jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(
      param_shardings, is_leaf=lambda x: isinstance(x, NamedSharding))):
    by_name[tuple(paths.path_name(kp).split("/"))] = (tuple(x.shape), s)
  replicated = NamedSharding(mesh, P())

  def pick(name, leaf):
    parts = tuple(name.split("/"))
    for i in range(len(parts)):  # longest suffix first
      shape, s = by_name.get(parts[i:], (None, None))
      if shape == tuple(leaf.shape):
        return s
    return replicated
  return paths.tree_map_with_names(pick, jax.eval_shape(tx.init, params))


def init_opt_state(tx, params, mesh=None, param_shardings=None):
  """`tx.init(params)`, created directly with the right shardings when a mesh is given (no host round-trip)."""
  if mesh is None:
    return jax.jit(tx.init)(params)
  if param_shardings is None:
    param_shardings = jax.tree.map(lambda x: x.sharding, params)
  return jax.jit(tx.init, out_shardings=opt_state_shardings(tx, params, mesh, param_shardings))(params)


def _resolve_mask(trainable, params):
  if trainable is None:
    return None
  if isinstance(trainable, str) or isinstance(trainable, (list, tuple)) and all(isinstance(t, str)
                                                                                for t in trainable):
    return paths.match_mask(params, trainable)
  if callable(trainable):
    return trainable(params)
  return trainable


def _schedule_count(opt_state):
  """The update count stored by optax (Adam/schedule state), or None if the optimizer keeps none."""
  found = optax.tree_utils.tree_get_all_with_path(opt_state, "count")
  return found[0][1] if found else None


def _split_microbatches(batch, steps, mesh):
  """[B, ...] -> [steps, B/steps, ...], micro-batch j = rows j, j+steps, ...: each keeps its batch sharding."""
  def split(x):
    if x.ndim == 0 or x.shape[0] % steps:
      raise ValueError(f"batch dim {x.shape[:1]} not divisible by grad_accum_steps={steps}")
    return jnp.swapaxes(x.reshape(x.shape[0] // steps, steps, *x.shape[1:]), 0, 1)
  micro = jax.tree.map(split, batch)
  if mesh is not None:
    micro = jax.tree.map(lambda x: sharding_lib.constrain(x, mesh, (None, "batch") + (None,) * (x.ndim - 2)), micro)
  return micro


LOSS_REDUCTIONS = ("mean", "sum")


def make_train_step(loss_fn, tx, *, mesh=None, param_shardings=None, opt_shardings=None, donate=True,
                    grad_accum_steps=1, trainable=None, schedule_fn=None, batch_sharding=None,
                    loss_reduction="mean"):
  """Builds `step(params, opt_state, batch, rng) -> (params, opt_state, metrics)`, jitted.

  Args:
    loss_fn: `loss_fn(params, batch, rng) -> (scalar loss, dict of scalar aux metrics)` (or just the loss). With
      `grad_accum_steps > 1` it sees micro-batches (equal row subsets of the batch); see `loss_reduction`.
    tx: optax transformation (e.g. from `optim.make_optimizer`).
    mesh, param_shardings: when given, the step is jitted with these in/out shardings (params and optimizer
      state stay sharded, the batch is split over `data` x `fsdp`). `opt_shardings` defaults to
      `opt_state_shardings(tx, params, mesh, param_shardings)` computed on the first call.
    donate: donate params/opt_state buffers (the caller must not reuse the arguments).
    grad_accum_steps: micro-batches per step, looped with `lax.scan` inside the jitted step (memory of one
      micro-batch's activations; one optimizer update).
    trainable: None (all), regex, bool tree or `fn(params) -> bool tree`. Gradients are computed only for
      trainable leaves; frozen leaves are returned untouched (bitwise). Pair with an optimizer whose config has
      the same `trainable` regex so no optimizer state is kept for frozen params.
    schedule_fn: if given, metrics include `lr` = schedule at the optimizer's update count.
    batch_sharding: sharding (or tree prefix) of the batch; default split of the leading dim over the batch axes.
    loss_reduction: how micro-batch results (loss, aux, grads) combine into the batch's. "mean": the loss is a
      per-example mean over the rows it sees, micro-batches are averaged (exact for equal-size micro-batches).
      "sum": the loss of a row subset is that subset's share of the whole batch's loss (its normalisers, e.g.
      GRPO's `loss_weights`, were computed on the whole batch and travel in it), micro-batches are summed; needed
      by losses whose normaliser is not per example, such as DAPO's token mean over the whole batch.
  Returns:
    The jitted step; metrics: `loss`, `grad_norm` (trainable grads, before clipping), `lr`, and the aux metrics
    (combined over micro-batches as the loss).
  """
  if grad_accum_steps < 1:
    raise ValueError(f"grad_accum_steps must be >= 1, got {grad_accum_steps}")
  if loss_reduction not in LOSS_REDUCTIONS:
    raise ValueError(f"loss_reduction must be one of {LOSS_REDUCTIONS}, got {loss_reduction!r}")

  def loss_and_aux(params, batch, rng):
    out = loss_fn(params, batch, rng)
    return out if isinstance(out, tuple) else (out, {})

  def grads_fn(params, mask, batch, rng):
    if mask is None:
      return jax.value_and_grad(loss_and_aux, has_aux=True)(params, batch, rng)
    leaves, treedef = jax.tree.flatten(params)
    flags = jax.tree.leaves(mask)
    idx = [i for i, m in enumerate(flags) if m]

    def partial_loss(train_leaves, batch, rng):
      full = list(leaves)
      for i, leaf in zip(idx, train_leaves):
        full[i] = leaf
      return loss_and_aux(jax.tree.unflatten(treedef, full), batch, rng)
    (loss, aux), train_grads = jax.value_and_grad(partial_loss, has_aux=True)([leaves[i] for i in idx], batch, rng)
    # Frozen grads are zeros that the optimizer's set_to_zero branch never reads: XLA drops them.
    grads = [jnp.zeros_like(x) for x in leaves]
    for i, g in zip(idx, train_grads):
      grads[i] = g
    return (loss, aux), jax.tree.unflatten(treedef, grads)

  def accumulated_grads(params, mask, batch, rng):
    if grad_accum_steps == 1:
      return grads_fn(params, mask, batch, rng)
    micro = _split_microbatches(batch, grad_accum_steps, mesh)

    def body(carry, xs):
      i, mb = xs
      (loss, aux), grads = grads_fn(params, mask, mb, jax.random.fold_in(rng, i))
      acc = jax.tree.map(lambda a, g: a + g.astype(a.dtype), carry, (loss, aux, grads))
      return acc, None
    (loss, aux), grads = jax.eval_shape(lambda: grads_fn(params, mask, jax.tree.map(lambda x: x[0], micro), rng))
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.promote_types(s.dtype, jnp.float32)), (loss, aux, grads))
    (loss, aux, grads), _ = jax.lax.scan(body, zeros, (jnp.arange(grad_accum_steps), micro))
    scale = 1.0 / grad_accum_steps if loss_reduction == "mean" else 1.0
    grads = jax.tree.map(lambda g, p: (g * scale).astype(p.dtype), grads, params)
    return (loss * scale, jax.tree.map(lambda a: a * scale, aux)), grads

  def step(params, opt_state, batch, rng):
    mask = _resolve_mask(trainable, params)
    (loss, aux), grads = accumulated_grads(params, mask, batch, rng)
    train_grads = grads if mask is None else jax.tree.map(lambda g, m: g if m else None, grads, mask)
    metrics = dict(aux, loss=loss, grad_norm=optax.tree.norm(train_grads))
    if schedule_fn is not None and (count := _schedule_count(opt_state)) is not None:
      metrics["lr"] = schedule_fn(count)
    updates, opt_state = tx.update(grads, opt_state, params)
    if mask is None:
      params = optax.apply_updates(params, updates)
    else:
      params = jax.tree.map(lambda p, u, m: optax.apply_updates(p, u) if m else p, params, updates, mask)
    return params, opt_state, metrics

  donate_argnums = (0, 1) if donate else ()
  if mesh is None:
    return jax.jit(step, donate_argnums=donate_argnums)
  if param_shardings is None:
    raise ValueError("make_train_step with a mesh needs param_shardings (see sharding.param_shardings)")
  replicated = NamedSharding(mesh, P())
  batch_sharding = batch_sharding or sharding_lib.batch_sharding(mesh)

  def build(params):
    state_shardings = opt_shardings or opt_state_shardings(tx, params, mesh, param_shardings)
    return jax.jit(step, donate_argnums=donate_argnums,
                   in_shardings=(param_shardings, state_shardings, batch_sharding, replicated),
                   out_shardings=(param_shardings, state_shardings, replicated))
  return _LazyJit(build)


class _LazyJit:
  """A jitted function built on the first call, once the params' shapes (for optimizer-state shardings) exist."""

  def __init__(self, build):
    self._build = build
    self._fn = None

  def _get(self, params):
    if self._fn is None:
      self._fn = self._build(params)
    return self._fn

  def __call__(self, params, *args):
    return self._get(params)(params, *args)

  def lower(self, params, *args):
    return self._get(params).lower(params, *args)
