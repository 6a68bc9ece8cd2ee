"""GRPO for the auditor: group-normalised advantages, clipped-ratio loss, KL to the frozen initial auditor.

Pure functions, registered by name (Tunix-style) so a config picks them: `advantage_fn` in ADVANTAGES
("grpo": (r - mean) / std within each group; "dr_grpo": r - mean, no std, as Dr.GRPO argues), loss aggregation in
AGGREGATIONS ("seq_mean_token_mean" = GRPO, "seq_mean_token_sum_norm" = Dr.GRPO, "token_mean" = DAPO) and KL
estimators in KL_ESTIMATORS ("k1", "k2", "k3"; Schulman's approximations of KL(pi || pi_ref)). ALGORITHMS bundles
the three published presets.

Shapes: N = number of sampled sequences (prompts x G, group members contiguous), L = completion length.
"""
import dataclasses

import jax
import jax.numpy as jnp

ADVANTAGES = {}
AGGREGATIONS = {}
KL_ESTIMATORS = {}


def _register(table, name):
  def wrap(fn):
    table[name] = fn
    return fn
  return wrap


def _lookup(table, name, what):
  if name not in table:
    raise ValueError(f"unknown {what} {name!r}; known: {sorted(table)}")
  return table[name]


@_register(ADVANTAGES, "grpo")
def grpo_advantages(rewards, group_size, valid=None, eps=1e-6):
  """(r - group mean) / (group std + eps) for rewards [N] in groups of `group_size` contiguous samples -> [N].

  `valid` [N] bool drops samples (e.g. the image service failed): statistics use the valid members only and
  dropped samples get advantage 0. std is the population std (ddof=0).
  """
  r, v = _grouped(rewards, group_size, valid)
  mean = (r * v).sum(1, keepdims=True) / jnp.maximum(v.sum(1, keepdims=True), 1.0)
  std = jnp.sqrt((jnp.square(r - mean) * v).sum(1, keepdims=True) / jnp.maximum(v.sum(1, keepdims=True), 1.0))
  return ((r - mean) / (std + eps) * v).reshape(-1)


@_register(ADVANTAGES, "dr_grpo")
def dr_grpo_advantages(rewards, group_size, valid=None, eps=1e-6):
  """r - group mean (no std normalisation, which Dr.GRPO shows biases towards easy/hard groups) -> [N]."""
  del eps
  r, v = _grouped(rewards, group_size, valid)
  mean = (r * v).sum(1, keepdims=True) / jnp.maximum(v.sum(1, keepdims=True), 1.0)
  return ((r - mean) * v).reshape(-1)


def _grouped(rewards, group_size, valid):
  rewards = jnp.asarray(rewards, jnp.float32)
  if rewards.ndim != 1 or group_size < 1 or rewards.shape[0] % group_size:
    raise ValueError(f"rewards must be [N] with N a multiple of group_size={group_size}, got {rewards.shape}")
  valid = jnp.ones_like(rewards) if valid is None else jnp.asarray(valid, jnp.float32)
  if valid.shape != rewards.shape:
    raise ValueError(f"valid must have the shape of rewards {rewards.shape}, got {valid.shape}")
  return rewards.reshape(-1, group_size), valid.reshape(-1, group_size)


@_register(KL_ESTIMATORS, "k1")
def kl_k1(logp, ref_logp):
  """log pi - log pi_ref: unbiased, high variance, can be negative. [N, L] -> [N, L]."""
  return logp - ref_logp


@_register(KL_ESTIMATORS, "k2")
def kl_k2(logp, ref_logp):
  """(log pi - log pi_ref)^2 / 2: biased, low variance, >= 0."""
  return 0.5 * jnp.square(logp - ref_logp)


@_register(KL_ESTIMATORS, "k3")
def kl_k3(logp, ref_logp):
  """exp(log pi_ref - log pi) - (log pi_ref - log pi) - 1: unbiased and >= 0 (the GRPO paper's choice)."""
  d = ref_logp - logp
  return jnp.exp(d) - d - 1.0


@_register(AGGREGATIONS, "seq_mean_token_mean")
def seq_mean_token_mean(values, mask, max_len=None):
  """GRPO: mean over each sequence's tokens, then over sequences. values, mask [N, L] -> scalar."""
  del max_len
  per_seq = (values * mask).sum(-1) / jnp.maximum(mask.sum(-1), 1.0)
  return per_seq.mean()


@_register(AGGREGATIONS, "seq_mean_token_sum_norm")
def seq_mean_token_sum_norm(values, mask, max_len=None):
  """Dr.GRPO: token sums divided by a constant (the generation budget `max_len`, default L), mean over sequences."""
  max_len = values.shape[-1] if max_len is None else max_len
  return ((values * mask).sum(-1) / max_len).mean()


@_register(AGGREGATIONS, "token_mean")
def token_mean(values, mask, max_len=None):
  """DAPO: mean over all valid tokens of the batch, so long sequences are not down-weighted."""
  del max_len
  return (values * mask).sum() / jnp.maximum(mask.sum(), 1.0)


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """Hyper-parameters of the policy loss (defaults: GRPO as in DeepSeekMath)."""
  advantage: str = "grpo"
  aggregation: str = "seq_mean_token_mean"
  kl_estimator: str = "k3"
  epsilon_low: float = 0.2
  epsilon_high: float = 0.2
  beta: float = 0.04
  max_len: int | None = None  # Dr.GRPO's constant normaliser; None = the padded completion length.

  def __post_init__(self):
    _lookup(ADVANTAGES, self.advantage, "advantage estimator")
    _lookup(AGGREGATIONS, self.aggregation, "loss aggregation")
    _lookup(KL_ESTIMATORS, self.kl_estimator, "KL estimator")
    if self.epsilon_low < 0 or self.epsilon_high < 0 or self.beta < 0:
      raise ValueError(f"epsilons and beta must be >= 0: {self}")


ALGORITHMS = {
    "grpo": LossConfig(),
    "dr_grpo": LossConfig(advantage="dr_grpo", aggregation="seq_mean_token_sum_norm", beta=0.0),
    "dapo": LossConfig(aggregation="token_mean", epsilon_low=0.2, epsilon_high=0.28, beta=0.0),
}


def loss_config(algorithm="grpo", **overrides):
  """The preset `algorithm` ("grpo", "dr_grpo", "dapo") with field overrides."""
  return dataclasses.replace(_lookup(ALGORITHMS, algorithm, "algorithm"), **overrides)


def advantages(rewards, group_size, valid=None, config=LossConfig()):
  """Advantages [N] of rewards [N] (valid [N] bool or None) with the estimator named by `config.advantage`."""
  return _lookup(ADVANTAGES, config.advantage, "advantage estimator")(rewards, group_size, valid)


def policy_loss(logp, old_logp, advs, mask, ref_logp=None, config=LossConfig()):
  """Clipped-ratio policy-gradient loss with KL penalty.

  Args:
    logp: [N, L] log-probabilities of the sampled tokens under the policy being optimised (differentiable).
    old_logp: [N, L] the same under the sampling policy (the sampler's logprobs); constants.
    advs: [N] advantages (constants).
    mask: [N, L] 1 for completion tokens, 0 for padding.
    ref_logp: [N, L] under the frozen initial auditor; required when config.beta > 0.
  Returns:
    (scalar loss, dict of scalar metrics: pg_loss, kl, clip_fraction, ratio_mean).
  """
  mask = mask.astype(jnp.float32)
  old_logp = jax.lax.stop_gradient(old_logp)
  advs = jax.lax.stop_gradient(advs)[:, None]
  ratio = jnp.exp(logp - old_logp)
  clipped = jnp.clip(ratio, 1.0 - config.epsilon_low, 1.0 + config.epsilon_high)
  unclipped_obj, clipped_obj = ratio * advs, clipped * advs
  per_token = -jnp.minimum(unclipped_obj, clipped_obj)
  aggregate = _lookup(AGGREGATIONS, config.aggregation, "loss aggregation")
  pg_loss = aggregate(per_token, mask, config.max_len)
  metrics = dict(pg_loss=pg_loss,
                 clip_fraction=token_mean((clipped_obj < unclipped_obj).astype(jnp.float32), mask),
                 ratio_mean=token_mean(ratio, mask))
  loss = pg_loss
  if config.beta > 0:
    if ref_logp is None:
      raise ValueError("beta > 0 needs ref_logp (log-probs under the frozen initial auditor)")
    kl = _lookup(KL_ESTIMATORS, config.kl_estimator, "KL estimator")(logp, jax.lax.stop_gradient(ref_logp))
    kl_term = aggregate(kl, mask, config.max_len)
    loss = loss + config.beta * kl_term
    metrics["kl"] = token_mean(kl, mask)
  elif ref_logp is not None:
    metrics["kl"] = token_mean(kl_k3(logp, ref_logp), mask)
  metrics["loss"] = loss
  return loss, metrics
