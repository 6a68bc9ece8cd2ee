"""The symbolic spatial-relation probe: its examples are labelled right, and a run trains and evaluates."""
import numpy as np
import pytest

from auditdm_jax.models import gemma
from auditdm_jax.tools import relation_probe as rp
from auditdm_jax.worlds.shapes import pretrain


def _decode(tokens):
  """One example's tokens -> ({name: (row, col)}, name A, relation, name B)."""
  objects = {}
  for o in tokens[:rp.MAX_OBJECTS * rp.OBJ_LEN].reshape(rp.MAX_OBJECTS, rp.OBJ_LEN):
    if o[0]:
      assert o[0] == rp.OBJ
      name = (o[1] - rp.COLOR0, o[2] - rp.SHAPE0)
      assert name not in objects, "two objects share a name"
      objects[name] = (o[3] - rp.ROW0, o[4] - rp.COL0)
  q = tokens[-rp.Q_LEN:]
  assert q[0] == rp.QUESTION and q[-1] == rp.ANSWER
  return objects, (q[1] - rp.COLOR0, q[2] - rp.SHAPE0), rp.RELATIONS[q[3] - rp.REL0], (q[4] - rp.COLOR0,
                                                                                        q[5] - rp.SHAPE0)


def test_examples_are_labelled_by_the_positions_of_the_named_objects():
  tokens, answer, cells = rp.sample(np.random.default_rng(3), 2000)
  assert tokens.shape == (2000, rp.MAX_OBJECTS * rp.OBJ_LEN + rp.Q_LEN) and tokens.max() < rp.VOCAB
  for t, y, c in zip(tokens, answer, cells):
    objects, a, rel, b = _decode(t)
    assert 2 <= len(objects) <= rp.MAX_OBJECTS and a != b
    (ra, ca), (rb, cb) = objects[a], objects[b]
    holds = {"left": ca < cb, "right": ca > cb, "above": ra < rb, "below": ra > rb}[rel]
    assert y == (rp.YES if holds else rp.NO)
    assert list(c) == [rp.CELL0 + ra * rp.GRID + ca, rp.CELL0 + rb * rp.GRID + cb]
    assert t[rp.NAME_ENDS[0]] == rp.SHAPE0 + a[1] and t[rp.NAME_ENDS[1]] == rp.SHAPE0 + b[1]
  assert 0.45 < np.mean(answer == rp.YES) < 0.55
  assert set(tokens[:, -4] - rp.REL0) == set(range(len(rp.RELATIONS)))


def test_run_trains_and_the_grounding_target_changes_training():
  kw = dict(seed=0, width=16, depth=1, steps=6, batch=8, eval_every=3, eval_size=64)
  plain = rp.run(**kw)
  assert [s for s, _, _ in plain] == [3, 6] and all(0 <= a <= 1 and loss > 0 for _, a, loss in plain)
  assert rp.run(**kw) == plain
  grounded = rp.run(ground=1.0, **kw)
  assert abs(grounded[-1][2] - plain[-1][2]) > 1e-3
  assert abs(rp.run(heads=4, kv_heads=4, **kw)[-1][2] - plain[-1][2]) > 1e-4  # Another head layout.
  assert abs(rp.run(one_token=True, ground=1.0, **kw)[-1][2] - grounded[-1][2]) > 1e-3


def test_one_token_objects_sum_their_tokens():
  model = gemma.Model(pretrain.model_config(rp.VOCAB, width=16, depth=1).llm)
  params = gemma.random_params(model.config)
  tokens, _, _ = rp.sample(np.random.default_rng(0), 4)
  out = rp.forward(model, params, tokens, one_token=True)
  assert out.shape == (4, tokens.shape[1] - (rp.OBJ_LEN - 1) * rp.MAX_OBJECTS, rp.VOCAB)
  swapped = tokens.copy()
  objects = swapped[:, :rp.MAX_OBJECTS * rp.OBJ_LEN].reshape(4, rp.MAX_OBJECTS, rp.OBJ_LEN)
  objects[..., [3, 4]] = objects[..., [4, 3]]  # Row and column tokens change places within each object.
  swapped[:, :rp.MAX_OBJECTS * rp.OBJ_LEN] = objects.reshape(4, -1)
  np.testing.assert_allclose(rp.forward(model, params, swapped, one_token=True), out, atol=1e-5)
  assert np.abs(rp.forward(model, params, swapped)[:, -1] - rp.forward(model, params, tokens)[:, -1]).max() > 1e-4


def test_chain_trains_and_the_prompt_does_not_see_it():
  kw = dict(seed=0, width=16, depth=1, steps=6, batch=8, eval_every=3, eval_size=64)
  chained = rp.run(chain=True, **kw)
  assert [s for s, _, _ in chained] == [3, 6] and all(0 <= a <= 1 and loss > 0 for _, a, loss in chained)
  assert abs(chained[-1][2] - rp.run(**kw)[-1][2]) > 1e-3
  model = gemma.Model(pretrain.model_config(rp.VOCAB, width=16, depth=1).llm)
  params = gemma.random_params(model.config)
  tokens, _, cells = rp.sample(np.random.default_rng(0), 4)
  with_chain = rp.forward(model, params, np.concatenate([tokens, cells], 1))
  other_chain = rp.forward(model, params, np.concatenate([tokens, cells[:, :1], cells[:, :1]], 1))  # 2nd differs.
  valid = tokens != 0  # (Padding rows attend to nothing and hold no value.)
  np.testing.assert_allclose(with_chain[:, :-1][np.pad(valid, ((0, 0), (0, 1)), constant_values=True)],
                             other_chain[:, :-1][np.pad(valid, ((0, 0), (0, 1)), constant_values=True)],
                             atol=1e-5)  # Nothing before the second chain token sees it.
  assert np.abs(with_chain[:, -1] - other_chain[:, -1]).max() > 1e-4
  np.testing.assert_allclose(with_chain[:, :tokens.shape[1]][valid], rp.forward(model, params, tokens)[valid],
                             atol=1e-5)


def test_model_config_head_layout():
  llm = pretrain.model_config(50, width=64, heads=8, kv_heads=2).llm
  assert (llm.num_heads, llm.num_kv_heads, llm.head_dim) == (8, 2, 8)
  with pytest.raises(ValueError, match="split into 3 heads"):
    pretrain.model_config(50, width=64, heads=3)


@pytest.mark.parametrize("argv", [["--seeds", "0,a"], ["--ground", "-1"], ["--width", "30"], ["--steps", "0"],
                                  ["--heads", "3"], ["--kv_heads", "3"], ["--chain", "--ground", "0.5"]])
def test_bad_flags_fail_at_once(argv, capsys):
  with pytest.raises(SystemExit):
    rp.main(argv)
  assert "error:" in capsys.readouterr().err
