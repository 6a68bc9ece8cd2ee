"""End to end on CPU: tiny PaliGemma2 fine-tuned on a tiny VQAv2 builder dataset (+ mixed JSONL), evaluated,
resumed, and re-evaluated from its checkpoint with `auditdm evaluate`."""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

import data_fixtures
from auditdm_jax import main as main_lib
from auditdm_jax import metrics as metrics_lib
from auditdm_jax.models import tokenizer as tokenizer_lib
from auditdm_jax.train import sft

CONFIG = "configs/paligemma2/transfers/tiny.py"


def test_prefix_lm_loss_hand_computed():
  logits = jnp.log(jnp.array([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [1 / 3, 1 / 3, 1 / 3]]]))
  targets = jnp.array([[0, 1, 2]])
  weights = jnp.array([[0, 1, 1]])  # the first position is prefix: no loss
  want = (-np.log(0.8) - np.log(1 / 3)) / 2
  np.testing.assert_allclose(sft.prefix_lm_loss(logits, targets, weights), [want], rtol=1e-6)
  # Label smoothing = cross-entropy against (1 - ls) * onehot + ls / V.
  ls = 0.3
  soft = optax.smooth_labels(jax.nn.one_hot(targets, 3), ls)
  per_token = optax.softmax_cross_entropy(logits, soft)
  want = float(jnp.sum(per_token * weights) / 2)
  np.testing.assert_allclose(sft.prefix_lm_loss(logits, targets, weights, ls), [want], rtol=1e-6)
  assert float(sft.prefix_lm_loss(logits, targets, jnp.zeros_like(weights))[0]) == 0.0


def test_transfer_configs_have_table1_values():
  from auditdm_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  want = {"vqav2": (14, 1e-5, 1e-7, 0.0, 0.0), "gqa": (4, 1e-5, 1e-7, 0.0, 0.0), "okvqa": (10, 5e-6, 0.0, 0.0, 0.0),
          "ai2d": (16, 1e-5, 1e-6, 0.0, 0.0), "docvqa": (10, 1e-5, 1e-6, 0.0, 0.0),
          "chartqa": (40, 1e-5, 1e-6, 0.1, 0.2), "refcoco": (120, 1e-5, 0.0, 0.0, 0.3),
          "cococap": (8, 1e-5, 1e-6, 0.0, 0.0)}
  for task, (epochs, lr, wd, dropout, ls) in want.items():
    c = config_lib.load(f"configs/paligemma2/transfers/{task}.py:res=224,tokenizer=/t.model")
    assert (c.total_epochs, c.lr, c.wd, c.llm_dropout, c.label_smoothing) == (epochs, lr, wd, dropout, ls), task
    assert c.input.batch_size == 256 and c.model.res == 224 and c.evals
    # big_vision's PaliGemma2 transfers drop the final logit softcap (Gemma2 pretrained with 30).
    assert sft.model_config(c).llm.final_softcap is None, task
    # Both towers train scanned (compile time independent of depth).
    assert sft.model_config(c).llm.scan_layers and sft.model_config(c).img.scan, task
    assert config_lib.load(f"configs/paligemma2/transfers/{task}.py").model.res == 448
  c = config_lib.load("configs/paligemma2/transfers/vqav2.py:extra_jsonl=/g.jsonl,extra_weight=0.5")
  assert [d.get("weight") for d in c.input.data] == [1.0, 0.5] and c.input.data[1]["jsonl"] == "/g.jsonl"
  for task in ("cococap", "refcoco"):  # Generated {question, answer} rows do not fit them: refused, not ignored.
    with pytest.raises(config_lib.ConfigError, match="unknown config argument 'extra_jsonl'"):
      config_lib.load(f"configs/paligemma2/transfers/{task}.py:extra_jsonl=/g.jsonl")


def test_chartqa_llm_dropout_tiny_train_step():
  """ChartQA's Table 1 LLM dropout (0.1) on a tiny PaliGemma2: the training loss depends on the dropout rng, the
  deterministic (eval) loss equals the dropout-free model's, and a sharded train step runs."""
  from auditdm_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from auditdm_jax import sharding  # pylint: disable=g-import-not-at-top
  from auditdm_jax.models import vlm  # pylint: disable=g-import-not-at-top
  from auditdm_jax.train import optim  # pylint: disable=g-import-not-at-top
  from auditdm_jax.train import step as step_lib  # pylint: disable=g-import-not-at-top
  c = config_lib.load("configs/paligemma2/transfers/chartqa.py:res=32,variant=paligemma2_tiny,tokenizer=/t.model")
  assert c.llm_dropout == 0.1
  cfg = sft.model_config(c)
  assert cfg.llm.dropout == 0.1
  model = vlm.get_model(cfg)
  mesh = sharding.make_mesh(c.mesh)
  params, shardings = sft.load_params(c, cfg, model, mesh, jax.random.key(0))
  rng = np.random.default_rng(0)
  b, t = 8, 12
  mask_ar = np.zeros((b, t), np.int32)
  mask_ar[:, 5:] = 1  # 5-token prefix, 7-token suffix.
  mask_input = np.ones((b, t), np.int32)
  mask_input[0, 10:] = 0
  batch = dict(image=rng.uniform(-1, 1, (b, 32, 32, 3)).astype(np.float32),
               text=rng.integers(1, cfg.llm.vocab_size, (b, t)).astype(np.int32), mask_ar=mask_ar,
               mask_loss=mask_ar.copy(), mask_input=mask_input)
  ls = c.label_smoothing
  train_loss = jax.jit(lambda p, r: sft.make_loss_fn(model, ls)(p, batch, r)[0])
  eval_loss = jax.jit(lambda p, r: sft.make_loss_fn(model, ls, deterministic=True)(p, batch, r)[0])
  c0 = config_lib.load("configs/paligemma2/transfers/chartqa.py:res=32,variant=paligemma2_tiny,tokenizer=/t.model")
  c0.llm_dropout = 0.0
  model0 = vlm.get_model(sft.model_config(c0))
  plain_loss = jax.jit(lambda p, r: sft.make_loss_fn(model0, ls)(p, batch, r)[0])
  a, a2, other = (float(train_loss(params, jax.random.key(s))) for s in (0, 0, 1))
  assert a == a2 and a != other and np.isfinite([a, other]).all()
  ref = float(plain_loss(params, jax.random.key(0)))
  assert float(eval_loss(params, jax.random.key(0))) == float(eval_loss(params, jax.random.key(1))) == ref
  assert a != ref

  tx, schedule_fn = optim.make_optimizer(c, total_steps=2)
  opt_state = step_lib.init_opt_state(tx, params, mesh, shardings)
  update_fn = step_lib.make_train_step(sft.make_loss_fn(model, ls), tx, mesh=mesh, param_shardings=shardings,
                                       schedule_fn=schedule_fn)
  _, _, m = update_fn(params, opt_state, sharding.shard_batch(batch, mesh), jax.random.key(0))
  np.testing.assert_allclose(float(m["loss"]), a, rtol=1e-4)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("finetune")
  data_fixtures.build("vqav2", str(root / "manual"), str(root / "tfds"))
  texts = [f"answer en what is shown {i}?" for i in range(3)] + ["2", "two", "3", "yes", "red", "blue", "cat"]
  tokenizer_lib.train(str(root / "tok.model"), texts * 10, vocab_size=200, special=("\n",))
  (root / "gen").mkdir()
  rows = []
  for i in range(4):
    Image.fromarray(np.full((10, 10, 3), 60 * i, np.uint8)).save(root / "gen" / f"{i}.png")
    rows.append({"image": f"{i}.png", "question": f"what is shown {i}?", "answer": "cat"})
  (root / "gen" / "gen.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  arg = f"tokenizer={root}/tok.model,data_dir={root}/tfds,vocab=256,extra_jsonl={root}/gen/gen.jsonl,extra_weight=0.5"
  return root, f"{CONFIG}:{arg}"


def test_finetune_evaluate_resume(setup, capsys):
  root, spec = setup
  workdir = str(root / "run")
  assert main_lib.main(["finetune", "--workdir", workdir, "--config", spec, "--config.total_steps=4"]) == 0
  rows = metrics_lib.read(os.path.join(workdir, "metrics.jsonl"))
  train_rows = [r for r in rows if "loss" in r]
  assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
  assert all(np.isfinite(r["loss"]) for r in train_rows) and train_rows[-1]["loss"] < train_rows[0]["loss"]
  evals = [r for r in rows if "vqav2_val/acc" in r]
  assert [r["step"] for r in evals] == [2, 4] and all(r["vqav2_val/num_examples"] == 3 for r in evals)
  step4 = os.path.join(workdir, "evals", "step_0000004")
  preds = [json.loads(l) for l in open(os.path.join(step4, "vqav2_val.predictions.jsonl"))]
  assert sorted(p["question_id"] for p in preds) == [1000, 2000, 3000]
  assert json.load(open(os.path.join(step4, "vqav2_val.metrics.json")))["vqav2_val/num_examples"] == 3
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]

  # Resume: continues at step 5 with the data iterator where it stopped.
  # More steps is another config: refused unless asked for, then resumed from step 4.
  assert main_lib.main(["finetune", "--workdir", workdir, "--config", spec, "--config.total_steps=6"]) == 2
  assert main_lib.main(["finetune", "--workdir", workdir, "--config", spec, "--config.total_steps=6",
                        "--resume-with-changes"]) == 0
  rows = metrics_lib.read(os.path.join(workdir, "metrics.jsonl"))
  assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5, 6]
  meta = json.load(open(os.path.join(workdir, "checkpoints", "6", "meta", "metadata")))
  assert meta["data_state"] == {"consumed": 48}

  # `auditdm evaluate` on the finetune workdir reproduces the step-6 eval.
  out = str(root / "eval")
  assert main_lib.main(["evaluate", "--workdir", out, "--config", spec, "--checkpoint", workdir]) == 0
  got = json.load(open(os.path.join(out, "vqav2_val.metrics.json")))
  want = json.load(open(os.path.join(workdir, "evals", "step_0000006", "vqav2_val.metrics.json")))
  assert got == want
  read = lambda d: sorted(open(os.path.join(d, "vqav2_val.predictions.jsonl")).read().splitlines())
  assert read(out) == read(os.path.join(workdir, "evals", "step_0000006"))

  # Stopped between checkpoint 6 and its eval, with rows logged past the checkpoint (one torn by the kill): the
  # rerun runs the missing eval, drops those rows and prints the final metrics; a finished rerun prints them too.
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  shutil.rmtree(os.path.join(workdir, "evals", "step_0000006"))
  kept = [r for r in metrics_lib.read(metrics_path) if not (r["step"] == 6 and "vqav2_val/acc" in r)]
  with open(metrics_path, "w") as f:
    f.write("".join(json.dumps(r) + "\n" for r in kept) + json.dumps({"step": 7, "loss": 1.0}) + '\n{"step": 8, "lo')
  capsys.readouterr()
  for _ in range(2):
    assert main_lib.main(["finetune", "--workdir", workdir, "--config", spec, "--config.total_steps=6"]) == 0
    assert json.loads(capsys.readouterr().out) == want
  rows = metrics_lib.read(metrics_path)
  assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5, 6]
  assert [r["step"] for r in rows if "vqav2_val/acc" in r] == [2, 4, 6]
  # Fewer steps than the workdir's checkpoint: refused, not "resumed" to an empty loop.
  assert main_lib.main(["finetune", "--workdir", workdir, "--config", spec, "--config.total_steps=4",
                        "--resume-with-changes"]) == 1
  assert "past this config's 4 steps" in capsys.readouterr().err


@pytest.mark.parametrize("override, message", [
    ("evals.vqav2_val.data.split=validaton", "Unknown split 'validaton'"),
    ("evals.vqav2_val.data.split=validation[:0]", "no data"),
    ("evals.vqav2_val.data.data_dir=/nonexistent/tfds", "evals.vqav2_val: cannot open its data"),
    ("evals.vqav2_val.type=nope", "unknown evaluator type 'nope'"),
    ("evals.vqav2_val.batch_size=0", "config evals.vqav2_val.batch_size must be an int >= 1"),
    ("input.batch_size=0", "config input.batch_size must be an int >= 1"),
    ("grad_accum_steps=3", "grad_accum_steps must divide input.batch_size 8"),
    ("total_steps=-3", "total_steps must be >= 0"),
    ("model.llm.vocab_size=50", "tokenizer has"),
])
def test_bad_finetune_config_fails_before_the_workdir_is_claimed(setup, capsys, override, message):
  root, spec = setup
  workdir = str(root / "never")
  assert main_lib.main(["finetune", "--workdir", workdir, "--config", spec, f"--config.{override}"]) == 2
  err = capsys.readouterr().err
  assert message in err and len(err.strip().splitlines()) == 1, err
  assert not os.path.exists(workdir)
