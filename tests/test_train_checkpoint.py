"""Checkpointer: round trip, restore onto another mesh, keep-last-K, SIGTERM saves, exact resume after SIGKILL."""
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from auditdm_jax import sharding
from auditdm_jax.train import checkpoint, optim, step, toy

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAINEE = os.path.join(REPO, "tests", "train_resume_trainee.py")

needs8 = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices: XLA_FLAGS set too late")


def _setup(mesh_cfg):
  model = toy.TinyLM(vocab_size=32, width=16, depth=1, num_heads=2, head_dim=8, mlp_dim=32)
  params = toy.init_params(model, jax.random.key(0))
  tx, _ = optim.make_optimizer(dict(lr=1e-3, wd=1e-4))
  mesh = sharding.make_mesh(mesh_cfg)
  p_sh = sharding.param_shardings(params, mesh, fsdp_min_size=0)
  o_sh = step.opt_state_shardings(tx, params, mesh, p_sh)
  return model, params, tx, mesh, p_sh, o_sh


def _equal(a, b):
  return all(jax.tree.leaves(jax.tree.map(lambda x, y: np.array_equal(np.asarray(x), np.asarray(y)), a, b)))


@needs8
def test_round_trip_and_restore_onto_other_mesh(tmp_path):
  _, params, tx, mesh, p_sh, _ = _setup(dict(fsdp=-1))
  params = sharding.shard_params(params, shardings=p_sh)
  opt_state = step.init_opt_state(tx, params, mesh, p_sh)
  # Make the optimizer state non-trivial.
  opt_state = jax.jit(lambda p, s: tx.update(jax.tree.map(jnp.ones_like, p), s, p)[1])(params, opt_state)
  rng = jax.random.key(42)
  with checkpoint.Checkpointer(tmp_path, save_every_steps=1) as ckpt:
    assert ckpt.restore_latest(params=params) is None
    assert ckpt.maybe_save(3, params=params, opt_state=opt_state, rng=rng, data_state={"epoch": 1, "pos": 17})

  _, _, _, mesh2, p_sh2, o_sh2 = _setup(dict(data=2, fsdp=2, tensor=2))
  shapes = jax.eval_shape(lambda: params)
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    out = ckpt.restore_latest(params=checkpoint.abstract(shapes, p_sh2),
                              opt_state=checkpoint.abstract(jax.eval_shape(tx.init, shapes), o_sh2))
  assert out["step"] == 3 and out["data_state"] == {"epoch": 1, "pos": 17}
  np.testing.assert_array_equal(jax.random.key_data(out["rng"]), jax.random.key_data(rng))
  assert _equal(out["params"], params) and _equal(out["opt_state"], opt_state)
  # The restored arrays live on the new mesh with the new specs (q_einsum heads over `tensor`).
  q = out["params"]["layers_0"]["attn"]["q_einsum"]["w"]
  assert q.sharding.mesh.shape == mesh2.shape and q.sharding.spec == p_sh2["layers_0"]["attn"]["q_einsum"]["w"].spec
  assert q.sharding.spec[0] == "tensor"


def test_keep_last_k_and_raw_keys(tmp_path):
  params = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
  with checkpoint.Checkpointer(tmp_path, save_every_steps=2, keep=2, async_save=False) as ckpt:
    saved = [s for s in range(1, 9) if ckpt.maybe_save(s, params=params, rng=jax.random.PRNGKey(s))]
    assert saved == [2, 4, 6, 8]
    assert ckpt.all_steps() == [6, 8]
    out = ckpt.restore(6, params=params)
  assert out["opt_state"] is None
  np.testing.assert_array_equal(out["rng"], jax.random.PRNGKey(6))
  np.testing.assert_array_equal(out["params"]["w"], params["w"])
  with checkpoint.Checkpointer(tmp_path) as ckpt, pytest.raises(FileNotFoundError):
    ckpt.restore(2, params=params)


def test_time_based_save(tmp_path):
  params = {"w": np.zeros(3, np.float32)}
  with checkpoint.Checkpointer(tmp_path, save_every_seconds=0.0, async_save=False) as ckpt:
    assert ckpt.maybe_save(1, params=params)
  with checkpoint.Checkpointer(tmp_path, save_every_seconds=3600) as ckpt:
    assert not ckpt.maybe_save(2, params=params)
    assert ckpt.maybe_save(2, params=params, force=True)


def test_sigterm_triggers_final_save(tmp_path):
  params = {"w": np.ones(4, np.float32)}
  with pytest.raises(checkpoint.Preempted) as stop, checkpoint.Checkpointer(tmp_path, save_every_steps=100) as ckpt:
    assert not ckpt.maybe_save(1, params=params)
    os.kill(os.getpid(), signal.SIGTERM)  # handled: sets a flag, does not kill us
    assert ckpt.maybe_save(2, params=params) and ckpt.preempted
    assert ckpt.latest_step() == 2
  assert stop.value.signum == signal.SIGTERM  # Closing stops the program: what follows never runs on a partial model.
  signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _run(workdir, out, *extra):
  return subprocess.run([sys.executable, TRAINEE, "--workdir", str(workdir), "--out", str(out), *extra],
                        capture_output=True, text=True, timeout=300, check=True, cwd=REPO)


def _load(path):
  with np.load(path) as f:
    return {k: f[k] for k in f.files}


def _kill_after(workdir, marker, sig, *extra):
  """Starts a slow trainee, sends `sig` once `marker` is printed; returns the remaining stdout."""
  proc = subprocess.Popen([sys.executable, TRAINEE, "--workdir", str(workdir), "--out", str(workdir / "x.npz"),
                           "--slow", *extra], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO)
  try:
    for line in proc.stdout:
      if line.strip() == marker:
        proc.send_signal(sig)
        break
    rest = proc.stdout.read()
    proc.wait(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
  return proc.returncode, rest


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
  """Final params of 10 uninterrupted steps."""
  tmp = tmp_path_factory.mktemp("straight")
  _run(tmp / "work", tmp / "straight.npz")
  return _load(tmp / "straight.npz")


def _assert_same_params(a, b):
  assert a.keys() == b.keys() and len(a) > 5
  for k in a:
    np.testing.assert_allclose(b[k], a[k], rtol=0, atol=1e-7, err_msg=k)


@pytest.mark.slow
def test_exact_resume_after_sigkill(tmp_path, straight_run):
  code, _ = _kill_after(tmp_path / "killed", "CHECKPOINTED 5", signal.SIGKILL)
  assert code == -signal.SIGKILL
  assert not (tmp_path / "killed" / "x.npz").exists()
  resumed = _run(tmp_path / "killed", tmp_path / "resumed.npz")
  assert "RESUMED 5" in resumed.stdout
  _assert_same_params(straight_run, _load(tmp_path / "resumed.npz"))


@pytest.mark.slow
def test_resume_after_sigterm_preemption(tmp_path, straight_run):
  # Checkpoints every 3 steps; SIGTERM after the first one: the trainee saves where it is (not a multiple of 3)
  # and exits with 128 + SIGTERM; the resumed run continues from that step.
  code, rest = _kill_after(tmp_path / "pre", "CHECKPOINTED 3", signal.SIGTERM, "--save_every", "3")
  assert code == 128 + signal.SIGTERM and "PREEMPTED" in rest
  resumed = _run(tmp_path / "pre", tmp_path / "resumed.npz", "--save_every", "100")
  assert "RESUMED" in resumed.stdout and "RESUMED 3\n" not in resumed.stdout
  _assert_same_params(straight_run, _load(tmp_path / "resumed.npz"))


def _cut_short(step_dir):
  """Truncates the larger files of a checkpoint's params, as a full disk or a failed copy leaves them."""
  damaged = 0
  for root, _, files in os.walk(step_dir / "params"):
    for name in files:
      path = os.path.join(root, name)
      if os.path.getsize(path) > 100:
        with open(path, "r+b") as f:
          f.truncate(os.path.getsize(path) // 2)
        damaged += 1
  assert damaged


def test_an_unreadable_latest_checkpoint_is_set_aside_and_an_earlier_one_restored(tmp_path):
  params = {"w": np.arange(600, dtype=np.float32).reshape(20, 30)}
  with checkpoint.Checkpointer(tmp_path, save_every_steps=2, keep=3, async_save=False) as ckpt:
    for s in (2, 4):
      ckpt.maybe_save(s, params={"w": params["w"] + s}, rng=jax.random.PRNGKey(s))
  _cut_short(tmp_path / "checkpoints" / "4")
  with checkpoint.Checkpointer(tmp_path, save_every_steps=2, async_save=False) as ckpt:
    out = ckpt.restore_latest(params=params)
    assert out["step"] == 2 and ckpt.all_steps() == [2]
    np.testing.assert_array_equal(out["params"]["w"], params["w"] + 2)
    assert ckpt.maybe_save(4, params=params, rng=jax.random.PRNGKey(4)) and ckpt.all_steps() == [2, 4]
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4", "4.unreadable"]
  # When no checkpoint can be read, the latest's error is raised and nothing is set aside.
  _cut_short(tmp_path / "checkpoints" / "2")
  _cut_short(tmp_path / "checkpoints" / "4")
  with checkpoint.Checkpointer(tmp_path) as ckpt, pytest.raises(ValueError, match="checkpoint 4 does not fit"):
    ckpt.restore_latest(params=params)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4", "4.unreadable"]
