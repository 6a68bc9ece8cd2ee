"""make_train_step: metrics, gradient accumulation == big batch, frozen params, sharded accumulation."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from auditdm_jax import sharding
from auditdm_jax.train import optim, step


class MLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.gelu(nn.LayerNorm(name="norm")(nn.Dense(32, name="Dense_0")(x)))
    return nn.Dense(4, name="Dense_1")(x)


MODEL = MLP()
PARAMS = jax.device_get(jax.jit(lambda: MODEL.init(jax.random.key(0), jnp.zeros((1, 8))))()["params"])
BATCH = {"x": np.random.default_rng(0).normal(size=(16, 8)).astype(np.float32),
         "y": np.random.default_rng(1).normal(size=(16, 4)).astype(np.float32)}


def loss_fn(params, batch, rng):
  pred = MODEL.apply({"params": params}, batch["x"])
  del rng
  mse = jnp.mean((pred - batch["y"]) ** 2)
  return mse, {"mse": mse, "pred_mean": jnp.mean(pred)}


def _run(config, steps=3, **kwargs):
  tx, sched = optim.make_optimizer(config)
  mesh = kwargs.get("mesh")
  params = PARAMS
  if mesh is not None:
    kwargs["param_shardings"] = sharding.param_shardings(PARAMS, mesh, fsdp_min_size=0)
    params = sharding.shard_params(PARAMS, shardings=kwargs["param_shardings"])
  state = step.init_opt_state(tx, params, mesh, kwargs.get("param_shardings"))
  train_step = step.make_train_step(loss_fn, tx, schedule_fn=sched, **kwargs)
  history = []
  for _ in range(steps):
    batch = BATCH if mesh is None else sharding.shard_batch(BATCH, mesh)
    params, state, metrics = train_step(params, state, batch, jax.random.key(0))
    history.append(jax.device_get(metrics))
  return jax.device_get(params), history


CONFIG = dict(lr=1e-2, wd=1e-3, grad_clip_norm=10.0, total_steps=3,
              schedule=dict(decay_type="cosine", warmup_steps=1, min_lr=1e-3))


def test_metrics():
  _, history = _run(CONFIG)
  assert set(history[0]) == {"loss", "mse", "pred_mean", "grad_norm", "lr"}
  tx, sched = optim.make_optimizer(CONFIG)
  del tx
  np.testing.assert_allclose([h["lr"] for h in history], [float(sched(s)) for s in range(3)], rtol=1e-6)
  assert history[0]["lr"] == 0.0 and history[1]["lr"] == pytest.approx(1e-2)
  assert history[2]["loss"] < history[0]["loss"]
  np.testing.assert_allclose(history[0]["loss"], loss_fn(PARAMS, BATCH, None)[0], rtol=1e-6)
  grads = jax.grad(lambda p: loss_fn(p, BATCH, None)[0])(PARAMS)
  np.testing.assert_allclose(history[0]["grad_norm"], float(jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(
      grads)))), rtol=1e-5)


def test_scalar_loss_fn():
  tx, _ = optim.make_optimizer(dict(lr=0.1))
  train_step = step.make_train_step(lambda p, b, r: loss_fn(p, b, r)[0], tx, donate=False)
  _, _, metrics = train_step(PARAMS, tx.init(PARAMS), BATCH, jax.random.key(0))
  assert set(metrics) == {"loss", "grad_norm"}


@pytest.mark.parametrize("accum", [2, 4])
def test_grad_accumulation_equals_big_batch(accum):
  ref_params, ref_hist = _run(CONFIG)
  params, hist = _run(CONFIG, grad_accum_steps=accum)
  for k in ("loss", "mse", "pred_mean", "grad_norm", "lr"):
    np.testing.assert_allclose(hist[-1][k], ref_hist[-1][k], rtol=1e-5, atol=1e-7, err_msg=k)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), params, ref_params)


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")
def test_sharded_grad_accumulation_equals_unsharded_big_batch():
  ref_params, ref_hist = _run(CONFIG)
  params, hist = _run(CONFIG, grad_accum_steps=2, mesh=sharding.make_mesh(dict(data=2, fsdp=4)))
  np.testing.assert_allclose(hist[-1]["loss"], ref_hist[-1]["loss"], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), params, ref_params)


def test_trainable_mask_leaves_frozen_bitwise_unchanged():
  config = dict(CONFIG, trainable=r"^Dense_1/")
  params, hist = _run(config, trainable=r"^Dense_1/")
  for name in ("Dense_0", "norm"):
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), params[name], PARAMS[name])
  assert not np.allclose(params["Dense_1"]["kernel"], PARAMS["Dense_1"]["kernel"])
  grads = jax.grad(lambda p: loss_fn(p, BATCH, None)[0])(PARAMS)["Dense_1"]
  np.testing.assert_allclose(hist[0]["grad_norm"], float(jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(
      grads)))), rtol=1e-5)
  # Same result whether the mask is given as a regex or a bool tree.
  mask = optim.trainable_mask(PARAMS, config)
  params2, _ = _run(config, trainable=mask)
  jax.tree.map(np.testing.assert_array_equal, params2, params)


def test_bad_accumulation():
  tx, _ = optim.make_optimizer(dict(lr=0.1))
  with pytest.raises(ValueError):
    step.make_train_step(loss_fn, tx, grad_accum_steps=0)
  with pytest.raises(ValueError, match="loss_reduction"):
    step.make_train_step(loss_fn, tx, loss_reduction="median")
  train_step = step.make_train_step(loss_fn, tx, grad_accum_steps=3)
  with pytest.raises(ValueError, match="grad_accum_steps"):
    train_step(PARAMS, tx.init(PARAMS), BATCH, jax.random.key(0))
