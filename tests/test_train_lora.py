"""LoRA: layout of the low-rank update, forward == base at init, only adapters train."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from auditdm_jax import tree_paths as paths
from auditdm_jax.train import lora, optim, step, toy

MODEL = toy.TinyLM(vocab_size=64, width=32, depth=2, num_heads=4, head_dim=8, mlp_dim=64)
PARAMS = jax.device_get(jax.jit(lambda: toy.init_params(MODEL, jax.random.key(0)))())
TOKENS = np.random.default_rng(0).integers(0, 64, (4, 9), dtype=np.int32)


def test_adapter_shapes():
  adapters = lora.init(jax.random.key(1), PARAMS, rank=4)
  layer = adapters["layers_0"]
  shapes = {k: (v["a"].shape, v["b"].shape) for k, v in
            {"q": layer["attn"]["q_einsum"]["w"], "kv": layer["attn"]["kv_einsum"]["w"],
             "o": layer["attn"]["attn_vec_einsum"]["w"], "gate": layer["mlp"]["gating_einsum"],
             "lin": layer["mlp"]["linear"]}.items()}
  assert shapes == {"q": ((32, 4), (4, 32)), "kv": ((2, 32, 4), (2, 4, 32)), "o": ((32, 4), (4, 32)),
                    "gate": ((2, 32, 4), (2, 4, 64)), "lin": ((64, 4), (4, 32))}
  assert "embedder" not in adapters and "final_norm" not in adapters
  b_leaves = [x for n, x in zip(paths.names(adapters), jax.tree.leaves(adapters)) if n.endswith("/b")]
  assert len(b_leaves) == 10 and all(not np.any(x) for x in b_leaves)


def test_delta_layout_matches_low_rank_map():
  # For q_einsum [N, D, H]: x @ W' adds (x @ A @ B) reshaped to [N, H].
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(32, 3)), rng.normal(size=(3, 4 * 8))
  d = lora.delta((4, 32, 8), a, b, "layers/attn/q_einsum/w")
  x = rng.normal(size=(5, 32))
  np.testing.assert_allclose(np.einsum("TD,NDH->TNH", x, d), (x @ a @ b).reshape(5, 4, 8), rtol=1e-4, atol=1e-4)
  # attn_vec_einsum [N, H, D]: inputs are (N, H).
  a, b = rng.normal(size=(4 * 8, 3)), rng.normal(size=(3, 32))
  d = lora.delta((4, 8, 32), a, b, "layers/attn/attn_vec_einsum/w")
  y = rng.normal(size=(5, 4, 8))
  np.testing.assert_allclose(np.einsum("TNH,NHD->TD", y, d), y.reshape(5, 32) @ a @ b, rtol=1e-4, atol=1e-4)
  # Scanned layers [L, D, F]: one adapter per layer.
  a, b = rng.normal(size=(2, 16, 3)), rng.normal(size=(2, 3, 8))
  d = lora.delta((2, 16, 8), a, b, "layers/mlp/Dense_0/kernel")
  np.testing.assert_allclose(d, a @ b, rtol=1e-5)


def test_forward_equals_base_at_init():
  tree, scale = lora.from_config(jax.random.key(1), PARAMS, dict(rank=4, alpha=8))
  assert scale == 2.0
  merged = lora.merge(tree["base"], tree["lora"], scale)
  jax.tree.map(np.testing.assert_array_equal, merged, PARAMS)
  np.testing.assert_array_equal(MODEL.apply({"params": merged}, TOKENS), MODEL.apply({"params": PARAMS}, TOKENS))


def test_only_adapters_train():
  tree, scale = lora.from_config(jax.random.key(1), PARAMS, dict(rank=4, alpha=8))
  config = dict(lr=1e-2, trainable=lora.TRAINABLE)
  tx, _ = optim.make_optimizer(config)
  state = tx.init(tree)
  n_state = sum(x.size for x in jax.tree.leaves(state) if x.ndim > 0)
  assert n_state == 2 * sum(x.size for x in jax.tree.leaves(tree["lora"]))  # Adam moments for adapters only
  train_step = step.make_train_step(lora.wrap_loss(toy.next_token_loss(MODEL), scale), tx,
                                    trainable=lora.TRAINABLE, donate=False)
  new, losses = tree, []
  for _ in range(5):
    new, state, metrics = train_step(new, state, {"tokens": TOKENS}, jax.random.key(0))
    losses.append(float(metrics["loss"]))
  assert losses[-1] < losses[0]
  jax.tree.map(np.testing.assert_array_equal, new["base"], PARAMS)
  b = new["lora"]["layers_0"]["attn"]["q_einsum"]["w"]["b"]
  assert float(jnp.abs(b).max()) > 0


def test_errors():
  with pytest.raises(ValueError):
    lora.init(jax.random.key(0), PARAMS, rank=0)
  with pytest.raises(ValueError, match="match no parameter"):
    lora.init(jax.random.key(0), PARAMS, rank=2, targets=r"nothing_here")
  with pytest.raises(ValueError, match="no rule"):
    lora.init(jax.random.key(0), PARAMS, rank=2, targets=r"final_norm")
