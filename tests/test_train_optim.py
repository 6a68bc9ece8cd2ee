"""Optimizer/schedule from config: hand-computed schedule values, weight-decay masks, clipping, frozen params."""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from auditdm_jax.train import optim


def _params():
  return {"Dense_0": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones((4,))},
          "norm": {"scale": jnp.ones((4,))},
          "embedder": {"input_embedding": jnp.ones((5, 4))},
          "layers": {"attn": {"q_einsum": {"w": jnp.ones((2, 4, 2))}}}}


def test_paper_auditor_schedule():
  # Sec. A.2: AdamW, lr 3e-6, 10% warm-up, cosine decay to 1e-6 over 1000 steps.
  config = ml_collections.ConfigDict(dict(lr=3e-6, total_steps=1000, schedule=dict(
      decay_type="cosine", warmup_percent=0.1, min_lr=1e-6)))
  _, sched = optim.make_optimizer(config)
  expected = {0: 0.0, 50: 1.5e-6, 100: 3e-6, 325: 1e-6 + 1e-6 * (1 + math.cos(math.pi / 4)), 550: 2e-6,
              1000: 1e-6, 2000: 1e-6}
  for s, v in expected.items():
    np.testing.assert_allclose(float(sched(s)), v, rtol=1e-6, atol=1e-13, err_msg=f"step {s}")


def test_other_schedules():
  linear = optim.make_schedule(1.0, dict(decay_type="linear", min_lr=0.0), total_steps=10)
  np.testing.assert_allclose([float(linear(s)) for s in (0, 3, 10, 12)], [1.0, 0.7, 0.0, 0.0], atol=1e-7)
  rsqrt = optim.make_schedule(1.0, dict(decay_type="rsqrt", warmup_steps=10, timescale=100))
  np.testing.assert_allclose([float(rsqrt(s)) for s in (5, 10, 110)], [0.5, 1.0, math.sqrt(0.5)], rtol=1e-6)
  const = optim.make_schedule(0.3)
  assert float(const(0)) == pytest.approx(0.3) and float(const(10**6)) == pytest.approx(0.3)
  warm_const = optim.make_schedule(2.0, dict(decay_type="constant", warmup_steps=4))
  np.testing.assert_allclose([float(warm_const(s)) for s in (1, 4, 9)], [0.5, 2.0, 2.0])


@pytest.mark.parametrize("config", [
    dict(lr=1.0, optimizer="lamb"),
    dict(lr=1.0, schedule=dict(decay_type="exp")),
    dict(lr=1.0, schedule=dict(decay_type="cosine")),  # needs total_steps
    dict(lr=1.0, total_steps=10, schedule=dict(decay_type="cosine", warmup=3)),
    dict(lr=1.0, total_steps=10, schedule=dict(decay_type="cosine", warmup_steps=20)),
    dict(lr=1.0, total_steps=10, schedule=dict(decay_type="cosine", min_lr=2.0)),
    dict(wd=1.0),
    dict(lr=1.0, trainable="("),
])
def test_bad_config(config):
  with pytest.raises(ValueError):
    tx, _ = optim.make_optimizer(config)
    tx.init(_params())


def test_decay_mask():
  mask = optim.decay_mask(_params(), {})
  assert mask == {"Dense_0": {"kernel": True, "bias": False}, "norm": {"scale": False},
                  "embedder": {"input_embedding": True}, "layers": {"attn": {"q_einsum": {"w": True}}}}
  mask = optim.decay_mask(_params(), dict(wd_exclude="embedder|bias"))
  assert not mask["embedder"]["input_embedding"] and mask["layers"]["attn"]["q_einsum"]["w"]


def test_decoupled_weight_decay_applies_to_masked_params_only():
  # Zero gradients: only weight decay moves params, by wd * lr_t / lr (big_vision convention).
  params = _params()
  tx, _ = optim.make_optimizer(dict(optimizer="sgd", momentum=0.0, lr=0.1, wd=0.01))
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  new = optax.apply_updates(params, updates)
  np.testing.assert_allclose(new["Dense_0"]["kernel"], 0.99, rtol=1e-6)
  np.testing.assert_allclose(new["layers"]["attn"]["q_einsum"]["w"], 0.99, rtol=1e-6)
  np.testing.assert_array_equal(new["Dense_0"]["bias"], 1.0)
  np.testing.assert_array_equal(new["norm"]["scale"], 1.0)


def test_grad_clipping():
  params = _params()
  tx, _ = optim.make_optimizer(dict(optimizer="sgd", momentum=0.0, lr=1.0, grad_clip_norm=1e-3))
  grads = jax.tree.map(lambda x: jnp.full_like(x, 0.5), params)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(float(optax.tree.norm(updates)), 1e-3, rtol=1e-5)


def test_frozen_params_bitwise_unchanged_and_stateless():
  params = _params()
  config = dict(lr=0.1, wd=0.1, trainable=r"^(Dense_0|layers)/", frozen=r"bias")
  assert optim.trainable_mask(params, config) == {
      "Dense_0": {"kernel": True, "bias": False}, "norm": {"scale": False}, "embedder": {"input_embedding": False},
      "layers": {"attn": {"q_einsum": {"w": True}}}}
  tx, _ = optim.make_optimizer(config)
  state = tx.init(params)
  # Adam moments exist only for the two trainable leaves.
  moments = [x for x in jax.tree.leaves(state) if x.ndim > 0]
  assert sorted(x.shape for x in moments) == sorted([(3, 4), (2, 4, 2)] * 2)
  new = params
  for _ in range(3):
    updates, state = tx.update(jax.tree.map(jnp.ones_like, params), state, new)
    new = optax.apply_updates(new, updates)
  for path in (("Dense_0", "bias"), ("norm", "scale"), ("embedder", "input_embedding")):
    a, b = new[path[0]][path[1]], params[path[0]][path[1]]
    assert np.array_equal(np.asarray(a), np.asarray(b)) and a.dtype == b.dtype, path
  assert not np.allclose(new["Dense_0"]["kernel"], 1.0)


@pytest.mark.parametrize("name", ["adamw", "sgd", "adafactor"])
def test_optimizers_reduce_a_quadratic(name):
  target = {"w": jnp.arange(12.0).reshape(3, 4) / 12, "b": jnp.ones(4)}
  start = jax.tree.map(lambda t: t + 1.0, target)  # not 0: Adafactor scales updates by the param RMS
  params = start
  loss = lambda p: sum(jnp.sum((p[k] - target[k]) ** 2) for k in p)
  tx, _ = optim.make_optimizer(dict(optimizer=name, lr=0.05, b2=0.99, total_steps=50,
                                    schedule=dict(decay_type="cosine", warmup_steps=5)))
  state = tx.init(params)

  @jax.jit
  def update(params, state):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    return optax.apply_updates(params, updates), state
  for _ in range(50):
    params, state = update(params, state)
  assert float(loss(params)) < 0.5 * float(loss(start))
