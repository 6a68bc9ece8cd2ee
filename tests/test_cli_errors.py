"""The CLI's error boundary: every bad input is one line naming the file, the right exit code, no traceback, and
the existing workdirs are byte-identical afterwards. Cases run in-process (one jax import for all of them)."""
import json
import os
import signal
import socket

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from auditdm_jax import config as config_lib
from auditdm_jax import main
from auditdm_jax import workdir as workdir_lib
from auditdm_jax.audit import generate
from auditdm_jax.commands import info
from auditdm_jax.models import checkpoints
from auditdm_jax.models import vlm
from auditdm_jax.train import checkpoint as checkpoint_lib

TOY = "configs/examples/toy.py"
DEMO = "configs/audit/demo.py"
QUIET = ["--log-level", "ERROR"]


def _snapshot(root):
  """{relative path: bytes} of every file under root."""
  out = {}
  for d, _, files in os.walk(root):
    for f in files:
      path = os.path.join(d, f)
      with open(path, "rb") as fh:
        out[os.path.relpath(path, root)] = fh.read()
  return out


def _record(path, line, **kw):
  rec = dict(image="a.png", question="is there a star?", answer="yes", id=str(line))
  rec.update(kw)
  return json.dumps(rec)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  """Bad inputs of every kind, and two existing workdirs with data: `toy` (show-config) and `aud` (train-auditor
  with the demo config, which fails for want of models after claiming the workdir)."""
  root = tmp_path_factory.mktemp("bad")
  p = {k: str(root / k) for k in ("toy", "aud", "fast")}
  assert main.main(["show-config", "--config", TOY, "--workdir", p["toy"], *QUIET]) == 0
  assert main.main(["train-auditor", "--config", DEMO, "--workdir", p["aud"], *QUIET]) == 1
  workdir_lib.claim(p["fast"], config_lib.load(os.path.join(main.REPO_ROOT, DEMO + ":fast")), "demo")
  for k in ("toy", "aud", "fast"):  # Data a rerun must not touch.
    with open(os.path.join(p[k], "data.bin"), "wb") as f:
      f.write(os.urandom(64))
  (root / "syntax.py").write_text("import ml_collections\n\ndef get_config(arg=None:\n  return None\n")
  (root / "raises.py").write_text("def get_config(arg=None):\n  return {}['missing']\n")
  (root / "bad.jsonl").write_text(_record(0, 1) + "\n\n" + _record(0, 3)[:-1] + ' "x": 1,}\n')
  (root / "fields.jsonl").write_text(_record(0, 1) + "\n" + json.dumps(dict(image="a.png", id="2")) + "\n")
  (root / "records.jsonl").write_text('{"question": "q", "failure": true}\nnot json\n')
  (root / "truncated.npz").write_bytes(b"PK\x03\x04" + b"\0" * 20)
  (root / "truncated.npz.json").write_text(vlm.get_config("paligemma2_tiny").to_json())
  cfg = vlm.get_config("paligemma2_tiny")
  rng = np.random.RandomState(0)
  params = {k: rng.normal(size=v.shape).astype(np.float32) * 0.1
            for k, v in checkpoints.flatten(vlm.abstract_params(cfg)).items()}
  checkpoints.export_vlm_hf(str(root / "garbage_hf"), cfg, checkpoints.unflatten(params))
  for f in os.listdir(root / "garbage_hf"):
    if f.endswith(".safetensors"):
      (root / "garbage_hf" / f).write_bytes(b"\x10\0\0\0\0\0\0\0{not a header}")
  (root / "a_file").write_text("not a directory")
  p["root"] = str(root)
  return p


# (argv with {placeholders}, exit code, text the message must contain, file the message must name)
CASES = [
    # Configs: a syntax error, a get_config that raises, an unknown override, a missing file.
    (["show-config", "--config", "{root}/syntax.py", "--workdir", "{toy}"], 2, "syntax error", "syntax.py:3"),
    (["show-config", "--config", "{root}/raises.py"], 2, "'missing'", None),
    (["show-config", "--config", TOY, "--config.nope=1", "--workdir", "{toy}"], 2, "unknown config key", None),
    (["show-config", "--config", "{root}/none.py"], 2, "config file not found", "none.py"),
    # The three silent-reuse cases: another config in an existing workdir is refused with the changed keys.
    (["show-config", "--config", TOY + ":res=448", "--workdir", "{toy}"], 2, "res 224 -> 448", "{toy}/config.json"),
    (["train-auditor", "--config", DEMO, "--config.lr=1e-3", "--config.group_size=4", "--workdir", "{aud}"], 2,
     "group_size 8 -> 4, lr 0.0002 -> 0.001", "{aud}/config.json"),
    (["generate", "--config", DEMO, "--config.generate.keep=all", "--workdir", "{aud}"], 2,
     'generate.keep "consensus" -> "all"', "{aud}/config.json"),
    (["demo", "--workdir", "{fast}"], 2, f"ckpt_every 1 -> {config_lib.load(config_lib.find_spec(DEMO)).ckpt_every}",
     "{fast}/config.json"),
    # A config of another command (the pretraining config given to `demo`, an audit config to `finetune`) fails
    # before the workdir is claimed, naming what it lacks and the commands it fits.
    (["demo", "--config", "configs/demo/shapes.py:weakness=counting:shape=star", "--workdir", "{root}/k1"], 2,
     "not a config for `auditdm demo`: it has no mode, reward, loss, system, generate, rectify, pretrain_config "
     "(its default config: configs/audit/demo.py); it fits `auditdm demo-pretrain`, `auditdm skills`", None),
    (["finetune", "--config", DEMO, "--workdir", "{root}/k2"], 2, "it has no model, input, tokenizer", None),
    # A bad value of an audit config fails before the workdir is claimed and before anything trains.
    (["demo", "--config.rectify.mix=2", "--workdir", "{root}/k3"], 2, "config rectify.mix must be in [0, 1]", None),
    (["train-auditor", "--config.group_size=1", "--workdir", "{root}/k4"], 2, "group_size must be an int >= 2", None),
    (["iterate", "--config.iterations=0", "--workdir", "{root}/k6"], 2, "config iterations must be an int >= 1", None),
    (["demo-pretrain", "--config.base.steps=0", "--workdir", "{root}/k5"], 2, "config base.steps must be an int >= 1",
     None),
    (["sweep", "--workdir", "{root}/s0", "--seeds", "0,one"], 2, "a comma-separated list of integers, got '0,one'",
     None),
    (["sweep", "--workdir", "{root}/s0", "--seeds=-1"], 2, "seeds must be >= 0, got [-1]", None),
    (["sweep", "--workdir", "{root}/s0", "--weaknesses", "counting:shape=star,countin:shape=star"], 2,
     "unknown skill 'countin'", None),
    # A weakness spec with a typo fails before the workdir is claimed (so --overwrite deletes nothing).
    (["demo", "--config", "configs/audit/demo.py:weakness=countin:shape=star", "--workdir", "{root}/k7",
      "--overwrite"], 2, "unknown skill 'countin'", None),
    # A bad reward or mode fails before the demo pretrains anything.
    (["demo", "--config", "configs/audit/demo.py:diversity=-1", "--workdir", "{root}/d1"], 2,
     "diversity must be >= 0", None),
    (["sweep", "--config", "configs/audit/demo.py:mode=edits", "--workdir", "{root}/s1", "--seeds", "0",
      "--weaknesses", "counting:shape=star"], 2, "unknown rollout mode 'edits'", None),
    # An auditor trained in another rollout mode (question) than generate's (edit) is refused before the workdir.
    (["generate", "--config", "configs/audit/demo.py:mode=edit", "--config.generate.auditor_workdir={aud}",
      "--workdir", "{root}/g1"], 2, "auditor trained in mode 'question', not this config's mode 'edit'",
     "{aud}/config.json"),
    # README's train-auditor / generate lines without demo models: a clear error, not a tokenizer NOT_FOUND.
    (["train-auditor", "--config", DEMO, "--workdir", "{aud}"], 1, "no shapes-world demo models", "tokenizer.model"),
    (["generate", "--config", DEMO, "--workdir", "{root}/gen"], 1, "no shapes-world demo models", "tokenizer.model"),
    # Data: malformed JSONL (file:line, blank lines skipped), records without the needed fields, no dataset.
    (["rectify", "--config.rectify.dataset={root}/bad.jsonl", "--workdir", "{root}/r1"], 1, "invalid JSON",
     "bad.jsonl:3"),
    (["rectify", "--config.rectify.dataset={root}/fields.jsonl", "--workdir", "{root}/r2"], 1,
     "record has no ['question', 'answer']", "fields.jsonl:2"),
    (["rectify", "--workdir", "{root}/r3"], 1, "generated dataset not found", None),
    (["report", "--records", "{root}/records.jsonl", "--out", "{root}/r.html"], 1, "invalid JSON", "records.jsonl:2"),
    # Checkpoints: a missing directory, a truncated .npz, garbage safetensors.
    (["convert", "--src", "{root}/nope", "--dst", "{root}/x.npz"], 1, "no such checkpoint file or directory",
     "{root}/nope"),
    (["convert", "--src", "{root}/truncated.npz", "--dst", "{root}/x"], 1, "BadZipFile", "truncated.npz"),
    (["convert", "--src", "{root}/garbage_hf", "--dst", "{root}/x.npz"], 1, "SafetensorError", "garbage_hf"),
    # Servers: a port out of range fails before anything loads; so does a missing tokenizer file.
    (["serve-answers", "--variant", "paligemma2_tiny", "--tokenizer", "{root}/none.model", "--port", "99999"], 1,
     "port 99999 is not in 0-65535", None),
    (["serve-answers", "--variant", "paligemma2_tiny", "--tokenizer", "{root}/none.model", "--port", "0"], 1,
     "sentencepiece model not found", "{root}/none.model"),
    (["serve-answers", "--variant", "paligemma2_tiny", "--tokenizer", "{root}/truncated.npz", "--port", "0"], 1,
     "cannot read the sentencepiece model", "truncated.npz"),
    (["serve-answers", "--variant", "paligemma2_tiny", "--tokenizer", "{root}/none.model", "--max-batch-size", "0"],
     1, "max_batch_size >= 1", None),
    # A workdir that cannot be made; a command that needs one.
    (["show-config", "--config", TOY, "--workdir", "{root}/a_file/run"], 2, "Not a directory", "a_file"),
    (["finetune"], 2, "--workdir is required", None),
    (["show-config"], 1, "--config is required", None),
]


def test_bad_inputs_give_one_line_errors_and_leave_workdirs_untouched(inputs, capsys):
  before = {k: _snapshot(inputs[k]) for k in ("toy", "aud", "fast")}
  capsys.readouterr()
  for argv, code, text, path in CASES:
    argv = [a.format(**inputs) for a in argv]
    rc = main.main(argv + QUIET)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == code, (argv, err)
    assert "Traceback" not in err, (argv, err)
    assert len(lines) == 1 and lines[0].startswith(f"auditdm {argv[0]}: error: "), (argv, err)
    assert text in lines[0], (argv, lines[0])
    if path:
      assert path.format(**inputs) in lines[0], (argv, lines[0])
    assert {k: _snapshot(inputs[k]) for k in before} == before, argv
  assert not os.path.exists(os.path.join(inputs["root"], "x"))
  never_claimed = ("k1", "k2", "k3", "k4", "k5", "k6", "k7", "d1", "s0", "s1", "g1")
  assert not any(os.path.exists(os.path.join(inputs["root"], k)) for k in never_claimed)


def test_resume_with_changes_keeps_data_and_overwrite_starts_over(tmp_path, capsys):
  run = str(tmp_path / "run")
  assert main.main(["show-config", "--config", TOY, "--workdir", run, *QUIET]) == 0
  (tmp_path / "run" / "data.bin").write_bytes(b"kept")
  assert main.main(["show-config", "--config", TOY + ":res=448", "--workdir", run, "--resume-with-changes",
                    *QUIET]) == 0
  assert (tmp_path / "run" / "data.bin").read_bytes() == b"kept"
  assert json.load(open(tmp_path / "run" / "config.json"))["res"] == 448
  ident = json.load(open(tmp_path / "run" / "workdir.json"))
  assert ident["config_digest"] == workdir_lib.digest(config_lib.load(os.path.join(main.REPO_ROOT, TOY) + ":res=448"))
  assert ident["command"] == "show-config" and (ident["commit"] is None or len(ident["commit"]) >= 40)
  assert main.main(["show-config", "--config", TOY, "--workdir", run, "--overwrite", *QUIET]) == 0
  assert sorted(os.listdir(run)) == ["config.json", "workdir.json"]
  assert json.load(open(tmp_path / "run" / "config.json"))["res"] == 224
  capsys.readouterr()


def test_unexpected_errors_are_one_line_unless_debug(monkeypatch, capsys):
  def broken(args):
    raise TypeError("a bug")
  monkeypatch.setattr(info, "run", broken)
  assert main.main(["info"]) == 1
  assert capsys.readouterr().err.strip() == "auditdm info: error: TypeError: a bug (--debug shows the traceback)"
  with pytest.raises(TypeError, match="a bug"):
    main.main(["info", "--debug"])


def test_ctrl_c_saves_a_checkpoint_then_exits_130(monkeypatch, tmp_path, capsys):
  """Ctrl-C during a checkpointing loop: the loop saves at the end of its step and stops; the CLI exits 130."""
  steps_run = []

  def loop(args):
    ckpt = checkpoint_lib.Checkpointer(str(tmp_path), async_save=False)
    for step in range(1, 100):
      steps_run.append(step)
      if step == 3:
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of step 3.
      ckpt.maybe_save(step, params={"w": np.full(2, step, np.float32)})
      if ckpt.preempted:
        break
    ckpt.close()
    return 0
  monkeypatch.setattr(info, "run", loop)
  # Not SIG_DFL once another test started Ray in this process; SIGINT is SIG_IGN in a background job.
  sigint_before, sigterm_before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
  assert main.main(["info"]) == 130
  assert steps_run == [1, 2, 3]
  assert checkpoint_lib.Checkpointer(str(tmp_path), handle_sigterm=False).all_steps() == [3]
  assert "interrupted; finished work is saved" in capsys.readouterr().err
  assert signal.getsignal(signal.SIGINT) == sigint_before  # Handlers restored.
  assert signal.getsignal(signal.SIGTERM) == sigterm_before

  def interrupted(args):
    raise KeyboardInterrupt
  monkeypatch.setattr(info, "run", interrupted)
  assert main.main(["info"]) == 130


def test_sigterm_in_a_stage_saves_stops_and_leaves_the_stage_undone(monkeypatch, tmp_path, capsys):
  """A SIGTERM (a preempted job) during a pipeline stage's training loop: the loop saves and the command exits 143;
  the stage is not recorded as done and the next stage never runs on the partly trained model."""
  later = []

  def pipeline(args):
    def train():
      ckpt = checkpoint_lib.Checkpointer(str(tmp_path / "ckpt"), async_save=False)
      for step in range(1, 100):
        if step == 2:
          os.kill(os.getpid(), signal.SIGTERM)
        ckpt.maybe_save(step, params={"w": np.full(2, step, np.float32)})
        if ckpt.preempted:
          break
      ckpt.close()
      return dict(steps=step)
    workdir_lib.stage(str(tmp_path / "train"), ml_collections.ConfigDict(dict(a=1)), train)
    later.append(workdir_lib.stage(str(tmp_path / "next"), ml_collections.ConfigDict(dict(a=1)), dict))
    return 0
  monkeypatch.setattr(info, "run", pipeline)
  sigterm_before = signal.getsignal(signal.SIGTERM)
  assert main.main(["info"]) == 128 + signal.SIGTERM
  assert "stopped by SIGTERM; finished work is saved" in capsys.readouterr().err
  assert checkpoint_lib.Checkpointer(str(tmp_path / "ckpt"), handle_sigterm=False).all_steps() == [2]
  assert not (tmp_path / "train" / workdir_lib.DONE).exists() and later == []
  assert signal.getsignal(signal.SIGTERM) == sigterm_before


def test_a_full_disk_names_the_file(monkeypatch, tmp_path, capsys):
  def no_space(fd):
    raise OSError(28, "No space left on device")
  monkeypatch.setattr(os, "fsync", no_space)
  assert main.main(["show-config", "--config", TOY, "--workdir", str(tmp_path), *QUIET]) == 2
  err = capsys.readouterr().err
  assert err == f"auditdm show-config: error: No space left on device ({tmp_path}/workdir.json)\n"
  assert os.listdir(tmp_path) == []  # No half-written file left behind.


def test_resuming_a_model_of_another_shape_is_one_line(monkeypatch, tmp_path, capsys):
  def resume(args):
    with checkpoint_lib.Checkpointer(str(tmp_path), async_save=False) as ckpt:
      ckpt.save(1, params={"w": jnp.zeros((2, 3))})
      ckpt.restore(1, params=checkpoint_lib.abstract({"w": jnp.zeros((4, 3))}))
  monkeypatch.setattr(info, "run", resume)
  assert main.main(["info", *QUIET]) == 1
  err = capsys.readouterr().err
  assert len(err.splitlines()) == 1 and "checkpoint 1 does not fit" in err and "(4, 3)" in err
  assert err.rstrip().endswith(f"({tmp_path}/checkpoints/1)")


def test_serve_images_checks_the_port_before_loading_pipelines(capsys):
  with socket.create_server(("127.0.0.1", 0)) as busy:
    port = busy.getsockname()[1]
    # The pipeline directory does not exist either: the port is what must fail first.
    rc = main.main(["serve-images", "--flux-dir", "/nonexistent/flux", "--port", str(port), *QUIET])
  assert rc == 1
  assert capsys.readouterr().err.startswith(f"auditdm serve-images: error: cannot listen on 127.0.0.1:{port}: ")


def test_generate_refuses_a_missing_auditor_workdir_without_creating_it(tmp_path):
  with pytest.raises(FileNotFoundError, match="no auditor checkpoints"):
    generate.load_auditor(None, str(tmp_path / "nope"))
  assert not os.path.exists(tmp_path / "nope")
