"""`auditdm train-auditor`: GRPO training of the auditor against a target and its references.

Reads top to bottom: config -> mesh -> models (the "system") -> data -> [rollout -> reward -> advantages ->
update -> log / checkpoint] -> final audit of the trained auditor vs the prompt-only baseline.

A *system* (`audit/system.py`) bundles the typed roles of one audit: the auditor `policy` and its initial params,
the `target`, the `references`, the image `generator` and the source data. `config.system.module` names a world's
module with `build(system_config, workdir) -> System` (e.g. `auditdm_jax.worlds.shapes.system`).
"""
import importlib
import logging
import time

import jax
import numpy as np

from auditdm_jax import metrics as metrics_lib
from auditdm_jax import progress
from auditdm_jax import sharding
from auditdm_jax.audit import grpo
from auditdm_jax.audit import rollout
from auditdm_jax.audit import system as system_lib
from auditdm_jax.train import checkpoint as checkpoint_lib
from auditdm_jax.train import optim
from auditdm_jax.train import step as step_lib

log = logging.getLogger(__name__)


def build_system(config, workdir):
  """The `System` of `config.system.module`'s world."""
  built = importlib.import_module(config.system.module).build(config.system, workdir)
  if not isinstance(built, system_lib.System):
    raise TypeError(f"{config.system.module}.build must return an audit.system.System, got {type(built).__name__}")
  return built


def loss_config(config):
  loss = config.loss.to_dict()
  return grpo.loss_config(loss.pop("algorithm"), **loss)


def make_loss_fn(policy, cfg):
  """GRPO loss over the auditor actions of a rollout. batch: tuple of per-action dicts (each N rows) with the
  policy's inputs plus old_logp [N, L], mask [N, L], adv [N], the whole batch's `grpo.loss_weights` agg_weight and
  token_weight [N, L], and (beta > 0) ref_logp [N, L]. Any row subset gives its share of the whole batch's loss
  (use with `make_train_step(loss_reduction="sum")`)."""
  def loss_fn(params, batch, rng):
    del rng
    total, metrics = 0.0, {}
    for i, action in enumerate(batch):
      logp = policy.logprobs(params, action)
      loss, m = grpo.policy_loss(logp, action["old_logp"], action["adv"], action["mask"], action.get("ref_logp"),
                                 cfg, weights=(action["agg_weight"], action["token_weight"]))
      total += loss / len(batch)
      metrics.update({f"{k}/action{i}" if i else k: v for k, v in m.items()})
    return total, metrics
  return loss_fn


def training_batch(result, advs, cfg, ref_logp_fn=None, ref_params=None):
  """Per-action numpy batches with advantages, the whole batch's loss weights (and reference logprobs) attached."""
  out = []
  for comp in result.actions:
    action = dict(comp.batch)
    action["adv"] = np.asarray(advs, np.float32)
    action["agg_weight"], action["token_weight"] = map(np.asarray, grpo.loss_weights(action["mask"], cfg))
    if ref_logp_fn is not None:
      action["ref_logp"] = np.asarray(ref_logp_fn(ref_params, action))
    out.append(action)
  return tuple(out)


def evaluate(system, params, config, baseline=False, seed=0):
  """Failure-search success rate (and ground-truth precision) of the auditor on the fixed eval batches."""
  run_rollout = rollout.Rollout.from_config(system, config)
  samples, results = [], []
  for i, source in enumerate(progress.track(system.eval_data, desc="audit eval", unit="batch")):
    res = run_rollout(params, source, jax.random.PRNGKey(seed * 7919 + i), seed=seed + i, baseline=baseline)
    results.append(res)
    samples.extend(res.samples)
  fails = [s for s in samples if s.failure]
  out = dict(success_rate=len(fails) / max(len(samples), 1),
             reward=float(np.mean(np.concatenate([r.rewards for r in results]))),
             malformed=float(np.mean([not s.well_formed for s in samples])),
             num_samples=len(samples), num_failures=len(fails))
  judged = [s for s in fails if s.judged]
  if judged:
    out["precision"] = float(np.mean([rollout.audit_is_true_failure(s) for s in judged]))
    out["flagged"] = rollout.flag_breakdown(judged)
  return out, samples


def train(config, workdir, system=None):
  """Trains the auditor; returns (final params, summary dict). Resumes from the latest checkpoint in workdir."""
  # Mesh: the auditor is data-parallel over rollout rows, params sharded by the training-infra rules.
  mesh = sharding.make_mesh(config.get("mesh"))
  system = system or build_system(config, workdir)
  lcfg = loss_config(config)
  run_rollout = rollout.Rollout.from_config(system, config)

  # Models: the trainable auditor and a frozen copy of its initial params for the KL term.
  tx, schedule_fn = optim.make_optimizer(config, total_steps=config.total_steps)
  # A host copy of the initial params: the train step donates its device buffers.
  init_params = jax.device_get(system.params)
  shardings = sharding.param_shardings(init_params, mesh)
  params = sharding.shard_params(init_params, shardings=shardings)
  ref_params = sharding.shard_params(init_params, shardings=shardings) if lcfg.beta > 0 else None
  opt_state = step_lib.init_opt_state(tx, params, mesh, shardings)
  train_step = step_lib.make_train_step(make_loss_fn(system.policy, lcfg), tx, mesh=mesh, param_shardings=shardings,
                                        schedule_fn=schedule_fn, grad_accum_steps=config.grad_accum_steps,
                                        loss_reduction="sum")
  ref_logp_fn = jax.jit(system.policy.logprobs) if ref_params is not None else None

  ckpt = checkpoint_lib.Checkpointer(workdir, save_every_steps=config.ckpt_every, keep=config.get("ckpt_keep", 5),
                                     async_save=False)
  rng = jax.random.PRNGKey(config.seed)
  start = 0
  restored = ckpt.restore_latest(params=params, opt_state=opt_state)
  if restored is not None:
    params, opt_state, rng, start = restored["params"], restored["opt_state"], restored["rng"], restored["step"]
  writer = metrics_lib.MetricWriter(workdir, after_step=start)  # Rows logged past the checkpoint are redone.

  for step in progress.track(range(start, config.total_steps), initial=start, desc="GRPO", unit="step"):
    t_step = time.perf_counter()
    rng, rng_rollout, rng_train = jax.random.split(rng, 3)
    # Data -> rollout: the auditor proposes, the generator renders, target and references answer.
    source = system.data(step)
    result = run_rollout(params, source, rng_rollout, seed=config.seed * 100_003 + step)
    # Reward -> group-normalised advantages (dropped samples excluded).
    advs = grpo.advantages(result.rewards, config.group_size, result.valid, lcfg)
    batch = training_batch(result, advs, lcfg, ref_logp_fn, ref_params)
    # Update.
    t_train = time.perf_counter()
    params, opt_state, train_metrics = train_step(params, opt_state, sharding.shard_batch(batch, mesh), rng_train)
    train_metrics = jax.device_get(train_metrics)
    now = time.perf_counter()
    # Log / checkpoint.
    m = rollout.audit_metrics(result)
    m.update({k: float(v) for k, v in train_metrics.items()})
    m.update({"time/train": now - t_train, "time/step": now - t_step})
    writer.write(step + 1, **m)
    if (step + 1) % config.log_every == 0 or step == start:
      log.info("step %d/%d reward %.3f success %.3f kl %.4f clip %.3f dropped %.2f (%.1fs)", step + 1,
               config.total_steps, m["reward"], m["success_rate"], m.get("kl", 0.0), m.get("clip_fraction", 0.0),
               m["dropped"], m["time/step"])
    ckpt.maybe_save(step + 1, params=params, opt_state=opt_state, rng=rng, force=step + 1 == config.total_steps)
    if ckpt.preempted:
      break
  writer.close()
  ckpt.close()  # Raises Preempted after a SIGTERM / Ctrl-C save.
  return params, dict(steps=config.total_steps, workdir=workdir)
