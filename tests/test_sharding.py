"""Mesh construction, partition rules, batch sharding; the sharded train step equals the unsharded one."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from auditdm_jax import sharding
from auditdm_jax.train import optim, step, toy

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")


def test_mesh_shape_resolution():
  assert sharding.mesh_shape(None, 8) == (1, 8, 1)
  assert sharding.mesh_shape(dict(data=2, fsdp=-1), 8) == (2, 4, 1)
  assert sharding.mesh_shape(ml_collections.ConfigDict(dict(data=-1, tensor=2)), 8) == (4, 1, 2)
  assert sharding.mesh_shape(dict(data=2, fsdp=2, tensor=2), 8) == (2, 2, 2)
  for bad in (dict(data=-1, fsdp=-1), dict(data=3, fsdp=-1), dict(data=2, fsdp=2), dict(pipe=2), dict(data=0)):
    with pytest.raises(ValueError):
      sharding.mesh_shape(bad, 8)
  mesh = sharding.make_mesh(dict(data=2, fsdp=-1, tensor=2))
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}


def test_partition_rules():
  mesh = sharding.make_mesh(dict(data=1, fsdp=4, tensor=2))
  spec = lambda name, shape, **kw: sharding.spec_for(name, shape, mesh, **kw)
  # Tensor over heads, FSDP over the largest remaining divisible dim.
  assert spec("llm/layers/attn/q_einsum/w", (8, 256, 32)) == P("tensor", "fsdp", None)
  # Scanned layer axis in front: rules align to trailing dims.
  assert spec("llm/layers/attn/q_einsum/w", (12, 8, 256, 32)) == P(None, "tensor", "fsdp", None)
  # MQA: a single kv head cannot be split over tensor=2 -> replicated on tensor.
  assert spec("llm/layers/attn/kv_einsum/w", (2, 1, 256, 32)) == P(None, None, "fsdp", None)
  assert spec("llm/layers/mlp/gating_einsum", (2, 256, 1024)) == P(None, "fsdp", "tensor")
  assert spec("llm/layers/mlp/linear", (1024, 256)) == P("tensor", "fsdp")
  assert spec("img/Transformer/encoderblock/MlpBlock_0/Dense_0/kernel", (64, 256)) == P("fsdp", "tensor")
  # Small params stay replicated; unmatched big ones only get FSDP; the largest divisible dim is chosen.
  assert spec("llm/final_norm/scale", (256,)) == P(None)
  assert spec("llm/final_norm/scale", (256,), fsdp_min_size=0) == P("fsdp")
  assert spec("llm/embedder/input_embedding", (1001, 256)) == P(None, "fsdp")
  assert spec("x/kernel", (6, 4, 3)) == P(None, None, None)  # 72 elements < fsdp_min_size
  with pytest.raises(ValueError):
    spec("x", (4,), rules=((r"x", ("tensor", None)),))


def test_param_shardings_from_shapes_and_shard_params():
  mesh = sharding.make_mesh(dict(fsdp=4, tensor=2))
  model = toy.TinyLM(vocab_size=64, width=32, num_heads=4, head_dim=8, mlp_dim=64)
  shapes = jax.eval_shape(lambda: toy.init_params(model, jax.random.key(0)))
  shardings = sharding.param_shardings(shapes, mesh, fsdp_min_size=0)
  params = sharding.shard_params(jax.device_get(jax.jit(lambda: toy.init_params(model, jax.random.key(0)))()),
                                 shardings=shardings)
  q = params["layers_0"]["attn"]["q_einsum"]["w"]
  assert q.sharding.spec == P("tensor", "fsdp", None)
  assert q.addressable_shards[0].data.shape == (2, 8, 8)
  assert "layers_0/attn/q_einsum/w (4, 32, 8) P('tensor', 'fsdp', None)" in sharding.describe(
      params, shardings)


def test_shard_batch_and_constrain():
  mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
  batch = {"x": np.arange(8 * 3, dtype=np.float32).reshape(8, 3), "y": np.arange(8)}
  out = sharding.shard_batch(batch, mesh)
  assert out["x"].shape == (8, 3) and out["x"].sharding.spec == P(("data", "fsdp"))
  np.testing.assert_array_equal(out["x"], batch["x"])
  assert {s.data.shape for s in out["x"].addressable_shards} == {(2, 3)}
  with pytest.raises(ValueError, match="not divisible"):
    sharding.shard_batch({"x": np.zeros((6, 2))}, mesh)
  f = jax.jit(lambda x: sharding.constrain(x * 2, mesh, ("batch", "tensor")))
  y = f(jnp.ones((8, 4)))
  assert y.sharding.spec == P(("data", "fsdp"), "tensor")
  assert sharding.constrain(y, None, ("batch",)) is y


def _step_setup():
  model = toy.TinyLM(vocab_size=64, width=32, depth=1, num_heads=4, head_dim=8, mlp_dim=64)
  params = jax.device_get(jax.jit(lambda: toy.init_params(model, jax.random.key(0)))())
  tx, sched = optim.make_optimizer(dict(lr=1e-2, wd=1e-3, grad_clip_norm=1.0, total_steps=4,
                                        schedule=dict(decay_type="cosine", warmup_steps=1)))
  batches = [{"tokens": np.random.default_rng(i).integers(0, 64, (8, 9), dtype=np.int32)} for i in range(2)]
  return toy.next_token_loss(model), params, tx, sched, batches


@pytest.fixture(scope="module")
def unsharded_result():
  loss_fn, params, tx, sched, batches = _step_setup()
  train_step = step.make_train_step(loss_fn, tx, schedule_fn=sched, donate=False)
  p, s = params, step.init_opt_state(tx, params)
  for b in batches:
    p, s, m = train_step(p, s, b, jax.random.key(0))
  return jax.device_get(p), jax.device_get(m)


@pytest.mark.parametrize("mesh_cfg", [dict(data=2, fsdp=2, tensor=2), dict(data=-1), dict(fsdp=4, tensor=2)])
def test_sharded_step_equals_unsharded(mesh_cfg, unsharded_result):
  ref_p, ref_m = unsharded_result
  loss_fn, params, tx, sched, batches = _step_setup()
  mesh = sharding.make_mesh(mesh_cfg)
  shardings = sharding.param_shardings(params, mesh, fsdp_min_size=0)
  p = sharding.shard_params(params, shardings=shardings)
  s = step.init_opt_state(tx, p, mesh, shardings)
  train_step = step.make_train_step(loss_fn, tx, mesh=mesh, param_shardings=shardings, schedule_fn=sched)
  for b in batches:
    p, s, m = train_step(p, s, sharding.shard_batch(b, mesh), jax.random.key(0))
  for k in ("loss", "grad_norm", "lr"):
    np.testing.assert_allclose(m[k], ref_m[k], rtol=1e-5, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), jax.device_get(p), ref_p)
  specs_ok = jax.tree.map(lambda x, sh: x.sharding.spec == sh.spec, p, shardings)
  assert all(jax.tree.leaves(specs_ok))
