"""GRPO math against hand-computed values; micro-batched losses equal the whole batch's."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from auditdm_jax.audit import grpo
from auditdm_jax.train import step


def test_grpo_advantages_hand_computed():
  # Group [1, 0, 0, 0]: mean 0.25, population std sqrt(0.1875) = 0.4330.
  a = grpo.grpo_advantages(jnp.array([1., 0., 0., 0., 2., 2., 2., 2.]), 4)
  np.testing.assert_allclose(a[:4], [1.7320508, -0.5773503, -0.5773503, -0.5773503], rtol=1e-5)
  # A group with identical rewards carries no signal.
  np.testing.assert_allclose(a[4:], 0.0, atol=1e-6)


def test_advantage_std_conventions_hand_computed():
  r = jnp.array([1., 0., 0., 0.])
  # Sample std (TRL, torch.std): sqrt(0.75 / 3) = 0.5, eps 1e-4.
  sample = grpo.advantages(r, 4, config=grpo.LossConfig(advantage_std="sample"))
  np.testing.assert_allclose(sample, [0.75 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001], rtol=1e-6)
  # Population std: sqrt(0.1875), eps 1e-6; ratio sqrt(G / (G - 1)) to the sample convention.
  population = grpo.advantages(r, 4)
  np.testing.assert_allclose(population[0], 0.75 / (np.sqrt(0.1875) + 1e-6), rtol=1e-6)
  np.testing.assert_allclose(population[0] / sample[0], np.sqrt(4 / 3) * 0.5001 / 0.5, rtol=1e-5)
  with pytest.raises(ValueError, match="unknown advantage std"):
    grpo.LossConfig(advantage_std="bessel")


@pytest.mark.parametrize("std", ["population", "sample"])
def test_groups_without_signal_get_zero_advantage(std):
  cfg = grpo.LossConfig(advantage_std=std)
  # G = 1: no group to compare with.
  np.testing.assert_array_equal(grpo.advantages(jnp.array([1., 0., 3.]), 1, config=cfg), 0.0)
  # All-equal rewards, and a group with one valid member.
  a = grpo.advantages(jnp.array([2., 2., 2., 1., 0., 5.]), 3, valid=jnp.array([1, 1, 1, 0, 1, 0], bool), config=cfg)
  np.testing.assert_array_equal(a, 0.0)
  assert np.isfinite(np.asarray(a)).all()


def test_dr_grpo_advantages_are_mean_centred_only():
  a = grpo.dr_grpo_advantages(jnp.array([1., 0., 0., 0.]), 4)
  np.testing.assert_allclose(a, [0.75, -0.25, -0.25, -0.25], rtol=1e-6)


def test_advantages_reject_ragged_groups():
  with pytest.raises(ValueError, match="multiple of group_size"):
    grpo.grpo_advantages(jnp.zeros(5), 2)


def _loss(aggregation, logp, old, advs, mask, **kw):
  cfg = grpo.LossConfig(aggregation=aggregation, beta=0.0, **kw)
  return grpo.policy_loss(logp, old, advs, mask, config=cfg)


def test_aggregation_modes_hand_computed():
  # ratio 1 everywhere: per-token loss is -A: [[-1, -1], [1, 0(pad)]].
  logp = jnp.log(jnp.array([[0.5, 0.5], [0.5, 0.5]]))
  advs = jnp.array([1., -1.])
  mask = jnp.array([[1., 1.], [1., 0.]])
  assert float(_loss("seq_mean_token_mean", logp, logp, advs, mask)[0]) == pytest.approx(0.0)  # (-1 + 1) / 2
  assert float(_loss("token_mean", logp, logp, advs, mask)[0]) == pytest.approx(-1 / 3)  # (-1 -1 +1) / 3
  assert float(_loss("seq_mean_token_sum_norm", logp, logp, advs, mask)[0]) == pytest.approx(-0.25)  # (-2/2+1/2)/2
  assert float(_loss("seq_mean_token_sum_norm", logp, logp, advs, mask, max_len=4)[0]) == pytest.approx(-0.125)


def test_clipping_hand_computed():
  old = jnp.zeros((2, 1))
  logp = jnp.full((2, 1), 0.5)  # ratio e^0.5 = 1.6487
  advs = jnp.array([1., -1.])
  mask = jnp.ones((2, 1))
  loss, m = _loss("token_mean", logp, old, advs, mask, epsilon_low=0.2, epsilon_high=0.2)
  # A=+1: min(1.6487, 1.2) -> clipped, loss -1.2. A=-1: min(-1.6487, -1.2) = -1.6487 -> unclipped, loss 1.6487.
  assert float(loss) == pytest.approx((-1.2 + np.exp(0.5)) / 2, rel=1e-5)
  assert float(m["clip_fraction"]) == pytest.approx(0.5)
  # DAPO's clip-higher: eps_high = 0.7 leaves ratio 1.6487 unclipped for A=+1.
  loss, m = _loss("token_mean", logp, old, advs, mask, epsilon_low=0.2, epsilon_high=0.7)
  assert float(loss) == pytest.approx(0.0, abs=1e-6)
  assert float(m["clip_fraction"]) == 0.0


def test_gradient_at_ratio_one_is_minus_advantage():
  logp = jnp.zeros((2, 2))
  advs = jnp.array([2., -1.])
  mask = jnp.array([[1., 1.], [1., 0.]])
  g = jax.grad(lambda lp: _loss("token_mean", lp, jnp.zeros((2, 2)), advs, mask)[0])(logp)
  np.testing.assert_allclose(g, [[-2 / 3, -2 / 3], [1 / 3, 0.]], rtol=1e-6)
  # No gradient flows into the sampler's logprobs.
  g_old = jax.grad(lambda old: _loss("token_mean", logp, old, advs, mask)[0])(jnp.zeros((2, 2)))
  np.testing.assert_allclose(g_old, 0.0)


def test_kl_estimators_hand_computed():
  logp, ref = jnp.log(jnp.array([0.5])), jnp.log(jnp.array([0.25]))
  np.testing.assert_allclose(grpo.kl_k1(logp, ref), [np.log(2)], rtol=1e-6)
  np.testing.assert_allclose(grpo.kl_k2(logp, ref), [0.5 * np.log(2) ** 2], rtol=1e-6)
  np.testing.assert_allclose(grpo.kl_k3(logp, ref), [0.5 + np.log(0.5) * -1 - 1], rtol=1e-6)


def test_kl_estimators_are_unbiased_in_expectation():
  p, q = np.array([0.7, 0.2, 0.1]), np.array([0.4, 0.4, 0.2])
  true_kl = float((p * np.log(p / q)).sum())
  x = jax.random.categorical(jax.random.PRNGKey(0), jnp.log(p), shape=(200_000,))
  logp, ref = jnp.log(p)[x], jnp.log(q)[x]
  assert float(grpo.kl_k1(logp, ref).mean()) == pytest.approx(true_kl, rel=0.03)
  assert float(grpo.kl_k3(logp, ref).mean()) == pytest.approx(true_kl, rel=0.03)
  assert float(grpo.kl_k3(logp, ref).min()) >= 0.0


def test_kl_penalty_enters_the_loss():
  logp, ref = jnp.log(jnp.full((1, 1), 0.5)), jnp.log(jnp.full((1, 1), 0.25))
  cfg = grpo.LossConfig(beta=0.1, kl_estimator="k1", aggregation="token_mean")
  loss, m = grpo.policy_loss(logp, logp, jnp.zeros(1), jnp.ones((1, 1)), ref_logp=ref, config=cfg)
  assert float(loss) == pytest.approx(0.1 * np.log(2), rel=1e-5)
  assert float(m["kl"]) == pytest.approx(np.log(2), rel=1e-5)
  with pytest.raises(ValueError, match="ref_logp"):
    grpo.policy_loss(logp, logp, jnp.zeros(1), jnp.ones((1, 1)), config=cfg)


def test_presets_and_registry_errors():
  assert grpo.loss_config("dapo").epsilon_high == 0.28
  assert grpo.loss_config("dr_grpo").aggregation == "seq_mean_token_sum_norm"
  assert grpo.loss_config("grpo", beta=0.0).beta == 0.0
  with pytest.raises(ValueError, match="unknown loss aggregation"):
    grpo.LossConfig(aggregation="nope")
  with pytest.raises(ValueError, match="unknown algorithm"):
    grpo.loss_config("ppo")


def test_dropped_samples_are_excluded_from_group_statistics():
  # Sample 3 dropped: the group is [1, 0, 0] -> mean 1/3, std sqrt(2)/3.
  a = grpo.advantages(jnp.array([1., 0., 0., 5.]), 4, valid=jnp.array([1, 1, 1, 0], bool))
  np.testing.assert_allclose(a, [2 / 3 / (np.sqrt(2) / 3), -1 / 3 / (np.sqrt(2) / 3), -1 / 3 / (np.sqrt(2) / 3), 0.],
                             rtol=1e-5)
  a = grpo.advantages(jnp.array([1., 0., 0., 5.]), 4, valid=jnp.array([1, 1, 1, 0], bool),
                      config=grpo.loss_config("dr_grpo"))
  np.testing.assert_allclose(a, [2 / 3, -1 / 3, -1 / 3, 0.], rtol=1e-5)


def _toy_grpo_batch(n=8, length=6, seed=0):
  """A batch of n completions of unequal lengths (1..length tokens) whose log-probs are logp = a * x + b."""
  rng = np.random.default_rng(seed)
  lengths = rng.permutation(np.arange(n) % length + 1)
  mask = (np.arange(length)[None] < lengths[:, None]).astype(np.float32)
  return dict(x=rng.normal(size=(n, length)).astype(np.float32),
              old_logp=rng.normal(-1.0, 0.3, (n, length)).astype(np.float32),
              ref_logp=rng.normal(-1.0, 0.3, (n, length)).astype(np.float32),
              adv=rng.normal(size=n).astype(np.float32), mask=mask)


def _accumulated_step(cfg, batch, accum):
  def loss_fn(params, b, rng):
    del rng
    logp = params["a"] * b["x"] + params["b"] - 1.0
    return grpo.policy_loss(logp, b["old_logp"], b["adv"], b["mask"], b["ref_logp"], cfg,
                            weights=(b["agg_weight"], b["token_weight"]))
  batch = dict(batch)
  batch["agg_weight"], batch["token_weight"] = map(np.asarray, grpo.loss_weights(batch["mask"], cfg))
  train_step = step.make_train_step(loss_fn, optax.sgd(1.0), grad_accum_steps=accum, donate=False,
                                    loss_reduction="sum")
  params = dict(a=jnp.array(0.3), b=jnp.array(0.1))
  new, _, metrics = train_step(params, optax.sgd(1.0).init(params), batch, jax.random.PRNGKey(0))
  grads = jax.tree.map(lambda p, q: p - q, params, new)  # SGD with lr 1: the update is the gradient.
  return jax.device_get(metrics), jax.device_get(grads)


@pytest.mark.parametrize("aggregation", sorted(grpo.AGGREGATIONS))
def test_micro_batches_give_the_whole_batch_loss_and_gradient(aggregation):
  """A batch split in 4 micro-batches (gradient accumulation) has the loss, gradient and metrics of the unsplit
  batch, for every aggregation: DAPO's token mean divides by the token count of the whole batch."""
  cfg = grpo.LossConfig(aggregation=aggregation, beta=0.04, epsilon_high=0.28)
  batch = _toy_grpo_batch()
  whole, g_whole = _accumulated_step(cfg, batch, 1)
  split, g_split = _accumulated_step(cfg, batch, 4)
  for key in ("loss", "pg_loss", "kl", "clip_fraction", "ratio_mean", "grad_norm"):
    np.testing.assert_allclose(split[key], whole[key], rtol=1e-6, atol=1e-7, err_msg=key)
  for key in ("a", "b"):
    np.testing.assert_allclose(g_split[key], g_whole[key], rtol=1e-6, atol=1e-7, err_msg=key)
  # The unsplit loss is the plain formula on the whole batch (no weights passed).
  logp = 0.3 * batch["x"] + 0.1 - 1.0
  plain, _ = grpo.policy_loss(logp, batch["old_logp"], batch["adv"], batch["mask"], batch["ref_logp"], cfg)
  np.testing.assert_allclose(whole["loss"], plain, rtol=1e-6)


def test_per_micro_batch_token_mean_is_not_dapo():
  """What the accumulation test guards against: averaging per-micro-batch token means (each normalised by its own
  token count) differs from the token mean of the whole batch when lengths differ."""
  cfg = grpo.loss_config("dapo")
  b = _toy_grpo_batch()
  logp = 0.3 * b["x"] + 0.1 - 1.0
  rows = [np.arange(j, 8, 4) for j in range(4)]  # make_train_step's micro-batch j: rows j, j + 4.
  per_micro = np.mean([grpo.policy_loss(logp[r], b["old_logp"][r], b["adv"][r], b["mask"][r], config=cfg)[0]
                       for r in rows])
  whole = grpo.policy_loss(logp, b["old_logp"], b["adv"], b["mask"], config=cfg)[0]
  assert abs(per_micro - whole) > 1e-3
