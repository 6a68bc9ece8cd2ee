"""Orbax checkpoints of the whole train state with exact resume and preemption (SIGTERM) saves.

One checkpoint = `params` + `opt_state` (sharded arrays, written asynchronously by every host) + a JSON item with
the RNG key, the data-iterator state and user metadata; the step is the checkpoint's name.

  ckpt = Checkpointer(workdir, save_every_steps=250, save_every_seconds=1800, keep=3)
  state = ckpt.restore_latest(params=abstract_params, opt_state=abstract_opt_state)   # None on a fresh start
  for step in range(start, total_steps):
    params, opt_state, metrics = train_step(params, opt_state, batch, rng)
    ckpt.maybe_save(step + 1, params=params, opt_state=opt_state, rng=rng, data_state=it.state(),
                    force=step + 1 == total_steps)
    if ckpt.preempted:  # SIGTERM arrived: maybe_save has already written (and waited for) a final checkpoint
      break
  ckpt.close()  # After a preemption save: raises Preempted, so nothing after the loop takes it for finished.
"""
import logging
import os
import signal
import threading
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from auditdm_jax.errors import InputError

log = logging.getLogger(__name__)


class Preempted(KeyboardInterrupt):
  """Raised by `Checkpointer.close` after a preemption save (SIGTERM or Ctrl-C): the program stops there, so what
  follows a training loop (a later stage of a pipeline) never runs on a partly trained model; a rerun resumes."""

  def __init__(self, signum):
    super().__init__(f"stopped by signal {signum} after saving a checkpoint")
    self.signum = signum


def abstract(tree, shardings=None):
  """Arrays / ShapeDtypeStructs (+ optional shardings tree) -> ShapeDtypeStructs: restore targets.

  Restoring onto a different mesh = passing shardings of that mesh here.
  """
  if shardings is None:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
                        tree)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def _rng_to_json(rng):
  if rng is None:
    return None
  if jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
    return {"data": np.asarray(jax.random.key_data(rng)).tolist(), "impl": str(jax.random.key_impl(rng))}
  return {"data": np.asarray(rng).tolist(), "impl": None}


def _rng_from_json(obj):
  if obj is None:
    return None
  data = np.asarray(obj["data"], np.uint32)
  return jax.random.wrap_key_data(data, impl=obj["impl"]) if obj["impl"] else jax.numpy.asarray(data)


class Checkpointer:
  """Saves/restores `params`, `opt_state`, `rng`, `data_state` (JSON-able dict) under `<workdir>/checkpoints`.

  Args:
    workdir: run directory (checkpoints go to `<workdir>/checkpoints/<step>`).
    save_every_steps: save when `step % save_every_steps == 0` (None = never by steps).
    save_every_seconds: also save when this many seconds passed since the last save (None = never by time).
    keep: keep the last `keep` checkpoints; `keep_every`: additionally keep every step divisible by this forever.
    async_save: write in a background thread (training continues; `wait()`/`close()` block until written).
    handle_sigterm: install a SIGTERM handler that makes the next `maybe_save` a synchronous final save and sets
      `preempted` (the loop then stops). On multi-host runs the decision is agreed across hosts.
  """

  def __init__(self, workdir, *, save_every_steps=None, save_every_seconds=None, keep=3, keep_every=None,
               async_save=True, handle_sigterm=True):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.save_every_steps = save_every_steps
    self.save_every_seconds = save_every_seconds
    self._sigterm = None  # The signal number once SIGTERM (or a Ctrl-C forwarded by the CLI) arrived.
    self._preempted = False
    self._last_save_time = time.time()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, keep_period=keep_every, enable_async_checkpointing=async_save, create=True,
        cleanup_tmp_directories=True)
    self._mngr = ocp.CheckpointManager(self.directory, options=options,
                                       item_names=("params", "opt_state", "meta"))
    self._previous_handler = None
    if handle_sigterm and threading.current_thread() is threading.main_thread():
      self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)

  def _on_sigterm(self, signum, frame):
    del frame
    log.warning("signal %d received: saving a final checkpoint at the next step", signum)
    self._sigterm = signum

  @property
  def preempted(self):
    """True once a preemption save was made: the training loop should stop."""
    return self._preempted

  def latest_step(self):
    return self._mngr.latest_step()

  def all_steps(self):
    return list(self._mngr.all_steps())

  def _due(self, step):
    """(preemption, periodic) decisions, agreed by all hosts."""
    by_steps = bool(self.save_every_steps) and step % self.save_every_steps == 0
    by_time = self.save_every_seconds is not None and time.time() - self._last_save_time >= self.save_every_seconds
    preempt = self._sigterm is not None
    if jax.process_count() > 1:
      # Hosts see SIGTERM and wall-clock at different steps: OR the local flags so all save the same step.
      flags = multihost_utils.process_allgather(np.array([preempt, by_time], np.int32))
      preempt, by_time = bool(flags[..., 0].max()), bool(flags[..., 1].max())
      preempt = preempt or self._mngr.reached_preemption(step)
    return preempt, by_steps or by_time

  def maybe_save(self, step, *, params, opt_state=None, rng=None, data_state=None, metadata=None, force=False):
    """Saves if due (steps/seconds), forced, or preempted. Returns True when a save was started.

    Preemption saves block until written. Call every step (the check is cheap).
    """
    preempt, periodic = self._due(step)
    if not (preempt or periodic or force):
      return False
    self.save(step, params=params, opt_state=opt_state, rng=rng, data_state=data_state, metadata=metadata)
    if preempt:
      self.wait()
      self._preempted = True
      log.warning("preemption checkpoint at step %d written", step)
    return True

  def save(self, step, *, params, opt_state=None, rng=None, data_state=None, metadata=None):
    """Starts writing checkpoint `step` (async unless disabled). An existing checkpoint at `step` is kept."""
    if step in self._mngr.all_steps():
      log.info("checkpoint %d already exists; not overwritten", step)
      return
    meta = {"rng": _rng_to_json(rng), "data_state": data_state, "metadata": metadata or {},
            "has_opt_state": opt_state is not None}
    items = {"params": ocp.args.StandardSave(params), "meta": ocp.args.JsonSave(meta)}
    if opt_state is not None:
      items["opt_state"] = ocp.args.StandardSave(opt_state)
    self._mngr.save(step, args=ocp.args.Composite(**items), force=True)
    self._last_save_time = time.time()
    log.info("checkpoint %d started -> %s", step, self.directory)

  def restore(self, step, *, params, opt_state=None):
    """Restores checkpoint `step` onto the targets' shapes/dtypes/shardings (arrays or ShapeDtypeStructs; see
    `abstract`, which may name shardings of a different mesh than the one saved from). Targets without a
    sharding (numpy arrays, plain `jax.eval_shape` output) restore onto the default device.

    Returns dict(step, params, opt_state, rng, data_state, metadata). `opt_state=None` skips the optimizer state.
    """
    if step not in self._mngr.all_steps():
      raise FileNotFoundError(f"no checkpoint {step} in {self.directory} (have {self.all_steps()})")
    items = {"params": ocp.args.StandardRestore(abstract(params)), "meta": ocp.args.JsonRestore()}
    if opt_state is not None:
      items["opt_state"] = ocp.args.StandardRestore(abstract(opt_state))
    try:
      out = self._mngr.restore(step, args=ocp.args.Composite(**items))
    except ValueError as e:  # E.g. a model of another shape: orbax's message does not say which checkpoint.
      raise InputError(f"checkpoint {step} does not fit: {e}", os.path.join(self.directory, str(step))) from None
    meta = out["meta"]
    return {"step": step, "params": out["params"], "opt_state": out["opt_state"] if opt_state is not None else None,
            "rng": _rng_from_json(meta["rng"]), "data_state": meta["data_state"], "metadata": meta["metadata"]}

  def restore_latest(self, *, params, opt_state=None):
    """`restore` of the latest checkpoint that can be read, or None when there is none (fresh start).

    Later checkpoints that cannot be read (files cut short or damaged on disk) are set aside as
    `<step>.unreadable` with a warning, so the run redoes their steps and saves them anew; when none can be
    read, the latest's error is raised (e.g. a model of another shape, which no checkpoint fits).
    """
    steps, first_error = sorted(self.all_steps(), reverse=True), None
    for step in steps:
      log.info("resuming from checkpoint %d in %s", step, self.directory)
      try:
        restored = self.restore(step, params=params, opt_state=opt_state)
      except InputError as e:
        first_error = first_error or e
        continue
      self._set_aside([s for s in steps if s > step], first_error)
      return restored
    if first_error is not None:
      raise first_error
    return None

  def _set_aside(self, steps, error):
    if not steps:
      return
    log.warning("checkpoints %s cannot be read (%s); set aside as <step>.unreadable, resuming from an earlier one",
                steps, error)
    if jax.process_index() == 0:
      for step in steps:
        path = os.path.join(self.directory, str(step))
        aside = f"{path}.unreadable"
        os.replace(path, aside if not os.path.exists(aside) else f"{aside}.{time.time():.0f}")
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("checkpoints set aside")
    self._mngr.reload()

  def wait(self):
    """Blocks until pending async saves are on disk."""
    self._mngr.wait_until_finished()

  def close(self):
    """Waits for pending saves; restores the SIGTERM handler. After a preemption save, raises Preempted."""
    self.wait()
    self._mngr.close()
    if self._previous_handler is not None:
      signal.signal(signal.SIGTERM, self._previous_handler)
      self._previous_handler = None
    if self._preempted:
      raise Preempted(self._sigterm)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
