"""Sampler on 8 simulated CPU devices (conftest sets XLA_FLAGS) gives the 1-device outputs."""
import collections
import re

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from auditdm_jax import sampling
from auditdm_jax.models import gemma
from test_sampling import _loop_body


def _shard_params(params, mesh):
  """Tensor-shard the big matrices over 'model' (vocab, heads, mlp), replicate the rest."""
  specs = {"input_embedding": P("model", None), "q_einsum": P(None, "model"),
           "attn_vec_einsum": P(None, "model"), "gating_einsum": P(None, None, None, "model"),
           "linear": P(None, "model")}

  def put(path, a):
    names = [getattr(k, "key", "") for k in path]
    spec = next((specs[n] for n in names if n in specs), P())
    return jax.device_put(a, NamedSharding(mesh, spec))
  return jax.tree_util.tree_map_with_path(put, params)


@pytest.mark.slow
@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")
def test_sharded_sampling_matches_single_device():
  cfg = gemma.get_config("gemma3_tiny")
  params = gemma.random_params(cfg)
  rng = np.random.default_rng(0)
  lengths = np.array([9, 4, 7, 2, 9])
  mask = np.arange(9)[None] >= (9 - lengths)[:, None]
  tokens = np.where(mask, rng.integers(2, cfg.vocab_size, (5, 9)), 0)
  kw = dict(max_new_tokens=10, num_samples=2, temperature=1.0, top_p=0.95,
            rng=jax.random.key(0), stop_tokens=(3,))

  single = sampling.Sampler(gemma.Model(cfg), params).sample_tokens(tokens, mask, **kw)
  dp = Mesh(np.array(jax.devices()[:8]), ("data",))
  data_parallel = sampling.Sampler(gemma.Model(cfg), jax.device_put(params), mesh=dp)
  out = data_parallel.sample_tokens(tokens, mask, **kw)
  np.testing.assert_array_equal(out.tokens, single.tokens)
  np.testing.assert_allclose(out.logprobs, single.logprobs, atol=1e-5)
  assert out.finish_reasons == single.finish_reasons

  mesh = Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("data", "model"))
  sharded = _shard_params(params, mesh)
  assert sharded["layers"]["mlp"]["linear"].sharding.spec == P(None, "model")
  out = sampling.Sampler(gemma.Model(cfg), sharded, mesh=mesh).sample_tokens(tokens, mask, **kw)
  np.testing.assert_array_equal(out.tokens, single.tokens)
  np.testing.assert_allclose(out.logprobs, single.logprobs, atol=1e-5)


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")
def test_tensor_parallel_decode_step_has_only_all_reduces():
  """With heads, MLP and vocab sharded over 'model', the compiled decode step communicates through the
  all-reduces of tensor parallelism only: no weight is gathered and no activation resharded per step (a fused
  q/k/v decode weight once made XLA split its sharded result with collective-permutes every step)."""
  cfg = gemma.get_config("gemma3_tiny")
  mesh = Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("data", "model"))
  params = _shard_params(gemma.random_params(cfg), mesh)
  hlo = sampling.Sampler(gemma.Model(cfg), params, mesh=mesh).lower(
      params, 8, 16, 16, greedy=True)["decode"].compile().as_text()
  ops = collections.Counter(re.findall(
      r"= \S+ (all-reduce|all-gather|all-to-all|collective-permute|reduce-scatter)(?:-start)?\(", _loop_body(hlo)))
  assert set(ops) == {"all-reduce"} and ops["all-reduce"] >= 2 * cfg.depth, ops
