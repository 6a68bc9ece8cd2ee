"""GRPO math against hand-computed values."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from auditdm_jax.audit import grpo


def test_grpo_advantages_hand_computed():
  # Group [1, 0, 0, 0]: mean 0.25, population std sqrt(0.1875) = 0.4330.
  a = grpo.grpo_advantages(jnp.array([1., 0., 0., 0., 2., 2., 2., 2.]), 4)
  np.testing.assert_allclose(a[:4], [1.7320508, -0.5773503, -0.5773503, -0.5773503], rtol=1e-5)
  # A group with identical rewards carries no signal.
  np.testing.assert_allclose(a[4:], 0.0, atol=1e-6)


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
