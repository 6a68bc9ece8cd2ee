"""GRPO for the auditor: group-normalised advantages, clipped-ratio loss, KL to the frozen initial auditor.

Pure functions, registered by name (Tunix-style) so a config picks them: `advantage_fn` in ADVANTAGES
("grpo": (r - mean) / std within each group; "dr_grpo": r - mean, no std, as Dr.GRPO argues), loss aggregation in
AGGREGATIONS ("seq_mean_token_mean" = GRPO, "seq_mean_token_sum_norm" = Dr.GRPO, "token_mean" = DAPO) and KL
estimators in KL_ESTIMATORS ("k1", "k2", "k3"; Schulman's approximations of KL(pi || pi_ref)). ALGORITHMS bundles
the three published presets. ADVANTAGE_STD names the group-std convention (population vs TRL's sample std).

An aggregation is a token-weight function of the whole batch's mask (`loss_weights`), so a micro-batch's loss is
its exact share of the whole batch's: gradient accumulation sums shares (`make_train_step(loss_reduction="sum")`)
and matches the unsplit batch for every aggregation, DAPO's global token mean included.

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


# Group std conventions: name -> (ddof, eps). "population" is the GRPO paper's formula as written
# (DeepSeekMath); "sample" is TRL's GRPOTrainer (torch.std, n - 1); sample advantages are sqrt(G / (G - 1)) times
# smaller (x0.866 at G = 4) for the same rewards.
ADVANTAGE_STD = {"population": (0, 1e-6), "sample": (1, 1e-4)}


@_register(ADVANTAGES, "grpo")
def grpo_advantages(rewards, group_size, valid=None, std="population"):
  """(r - group mean) / (group std + eps) for rewards [N] in groups of `group_size` contiguous samples -> [N].

  `valid` [N] bool drops samples (e.g. the image service failed): statistics use the valid members only and
  dropped samples get advantage 0. `std` names the convention in ADVANTAGE_STD. A group with fewer than two valid
  members (e.g. G = 1) or identical rewards carries no signal: advantage 0.
  """
  ddof, eps = _lookup(ADVANTAGE_STD, std, "advantage std")
  r, v = _grouped(rewards, group_size, valid)
  count = v.sum(1, keepdims=True)
  mean = (r * v).sum(1, keepdims=True) / jnp.maximum(count, 1.0)
  sd = jnp.sqrt((jnp.square(r - mean) * v).sum(1, keepdims=True) / jnp.maximum(count - ddof, 1.0))
  return ((r - mean) / (sd + eps) * v).reshape(-1)


@_register(ADVANTAGES, "dr_grpo")
def dr_grpo_advantages(rewards, group_size, valid=None, std=None):
  """r - group mean (no std normalisation, which Dr.GRPO shows biases towards easy/hard groups) -> [N]."""
  del std
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


# An aggregation is a weight per token, computed on the WHOLE batch: loss = sum(per_token * weights). Micro-batches
# of the batch (gradient accumulation) then add up to exactly the whole-batch loss, for every aggregation; DAPO's
# token mean in particular divides by the token count of the whole batch, not of each micro-batch.
@_register(AGGREGATIONS, "seq_mean_token_mean")
def seq_mean_token_mean(mask, max_len=None):
  """GRPO: mean over each sequence's tokens, then over sequences. mask [N, L] -> weights [N, L]."""
  del max_len
  return mask / jnp.maximum(mask.sum(-1, keepdims=True), 1.0) / mask.shape[0]


@_register(AGGREGATIONS, "seq_mean_token_sum_norm")
def seq_mean_token_sum_norm(mask, max_len=None):
  """Dr.GRPO: token sums divided by a constant (the generation budget `max_len`, default L), mean over sequences."""
  max_len = mask.shape[-1] if max_len is None else max_len
  return mask / (max_len * mask.shape[0])


@_register(AGGREGATIONS, "token_mean")
def token_mean(mask, max_len=None):
  """DAPO: mean over all valid tokens of the batch, so long sequences are not down-weighted."""
  del max_len
  return mask / jnp.maximum(mask.sum(), 1.0)


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """Hyper-parameters of the policy loss (defaults: GRPO as in DeepSeekMath)."""
  advantage: str = "grpo"
  advantage_std: str = "population"  # ADVANTAGE_STD: "population" (ddof 0, eps 1e-6) or "sample" (TRL).
  aggregation: str = "seq_mean_token_mean"
  kl_estimator: str = "k3"
  epsilon_low: float = 0.2
  epsilon_high: float = 0.2
  beta: float = 0.04
  max_len: int | None = None  # Dr.GRPO's constant normaliser; None = the padded completion length.

  def __post_init__(self):
    _lookup(ADVANTAGES, self.advantage, "advantage estimator")
    _lookup(ADVANTAGE_STD, self.advantage_std, "advantage std")
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
  fn = _lookup(ADVANTAGES, config.advantage, "advantage estimator")
  return fn(rewards, group_size, valid, config.advantage_std)


def loss_weights(mask, config=LossConfig()):
  """Token weights of a whole batch: mask [N, L] -> (aggregation weights [N, L], token-mean weights [N, L]).

  Compute them on the whole batch and slice them with it: `policy_loss` on any row subset (a micro-batch) then
  returns that subset's share of the whole-batch loss and metrics, and the shares add up to the whole.
  """
  mask = jnp.asarray(mask, jnp.float32)
  return _lookup(AGGREGATIONS, config.aggregation, "loss aggregation")(mask, config.max_len), token_mean(mask)


def policy_loss(logp, old_logp, advs, mask, ref_logp=None, config=LossConfig(), weights=None):
  """Clipped-ratio policy-gradient loss with KL penalty.

  Args:
    logp: [N, L] log-probabilities of the sampled tokens under the policy being optimised (differentiable).
    old_logp: [N, L] the same under the sampling policy (the sampler's logprobs); constants.
    advs: [N] advantages (constants).
    mask: [N, L] 1 for completion tokens, 0 for padding.
    ref_logp: [N, L] under the frozen initial auditor; required when config.beta > 0.
    weights: `loss_weights` of the whole batch these rows belong to (then loss and metrics are this micro-batch's
      share of the whole batch's, to be summed); None = `loss_weights(mask)`, these rows are the whole batch.
  Returns:
    (scalar loss, dict of scalar metrics: loss, pg_loss, kl, clip_fraction, ratio_mean).
  """
  agg_w, tok_w = loss_weights(mask, config) if weights is None else weights
  old_logp = jax.lax.stop_gradient(old_logp)
  advs = jax.lax.stop_gradient(advs)[:, None]
  ratio = jnp.exp(logp - old_logp)
  clipped = jnp.clip(ratio, 1.0 - config.epsilon_low, 1.0 + config.epsilon_high)
  unclipped_obj, clipped_obj = ratio * advs, clipped * advs
  per_token = -jnp.minimum(unclipped_obj, clipped_obj)
  pg_loss = (per_token * agg_w).sum()
  metrics = dict(pg_loss=pg_loss, clip_fraction=((clipped_obj < unclipped_obj) * tok_w).sum(),
                 ratio_mean=(ratio * tok_w).sum())
  loss = pg_loss
  if config.beta > 0:
    if ref_logp is None:
      raise ValueError("beta > 0 needs ref_logp (log-probs under the frozen initial auditor)")
    kl = _lookup(KL_ESTIMATORS, config.kl_estimator, "KL estimator")(logp, jax.lax.stop_gradient(ref_logp))
    loss = loss + config.beta * (kl * agg_w).sum()
    metrics["kl"] = (kl * tok_w).sum()
  elif ref_logp is not None:
    metrics["kl"] = (kl_k3(logp, ref_logp) * tok_w).sum()
  metrics["loss"] = loss
  return loss, metrics
