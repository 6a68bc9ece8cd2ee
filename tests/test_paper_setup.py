"""The paper's setup end to end at tiny scale, every stage through the CLI (`configs/audit/paper.py:tiny=True`):
a random gemma3_tiny auditor, a random paligemma2_tiny target, one in-process JAX reference and one reference served
by `auditdm serve-answers` in another process, tiny FLUX + Kontext behind `auditdm serve-images` in another process;
train-auditor (every rollout mode) -> generate -> rectify -> iterate (2 iterations) -> report. Both servers are
killed and restarted while `generate` runs: the run goes on, the outage is retried, and no item is lost."""
import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from PIL import Image

import imagegen_fixtures as fx
from auditdm_jax.audit import prompts
from auditdm_jax.audit import rollout
from auditdm_jax.models import tokenizer as tokenizer_lib

# Rollout modes with one auditor action, and with two (image, then question): the shapes of their compilations.
LANES = (("question", "edit", "caption"), ("edit_question", "caption_question"))
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30),
           "white": (250, 250, 250), "black": (5, 5, 5)}


def _port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(tmp_path):
  env = dict(os.environ, PYTHONPATH=REPO, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  env.pop("XLA_FLAGS", None)  # One CPU device per process (the tests' 8 simulated ones would shard tiny models).
  return env


class _Server:
  """An `auditdm serve-*` subprocess that can be killed (SIGKILL) and started again on the same port."""

  def __init__(self, args, port, env, log):
    self.cmd = [sys.executable, "-m", "auditdm_jax.main", *args, "--port", str(port), "--log-level", "WARNING"]
    self.url, self.env, self.log, self.proc = f"http://127.0.0.1:{port}", env, log, None

  def start(self):
    self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=self.log, stderr=self.log)
    return self

  def wait_ready(self, timeout=600):
    deadline = time.time() + timeout
    while time.time() < deadline:
      assert self.proc.poll() is None, f"{self.cmd} exited with {self.proc.returncode}"
      try:
        if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
          return
      except httpx.HTTPError:
        pass
      time.sleep(0.3)
    raise TimeoutError(f"{self.cmd} did not come up")

  def kill(self):
    if self.proc and self.proc.poll() is None:
      self.proc.send_signal(signal.SIGKILL)
      self.proc.wait()


def _start(env, *args, log_level="WARNING", stderr=subprocess.PIPE):
  return subprocess.Popen([sys.executable, "-m", "auditdm_jax.main", *args, "--log-level", log_level], env=env,
                          stdout=subprocess.PIPE, stderr=stderr, text=True)


def _finish(proc, what, timeout=1200):
  try:
    stdout, stderr = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    raise
  assert proc.returncode == 0, f"auditdm {what} failed:\n{(stderr or '')[-4000:]}"
  return stdout


def _auditdm(env, *args):
  return _finish(_start(env, *args), args[0])


def _world(tmp_path):
  """Tokenizer, a 6-image labelled pool (3 shards of 2), tiny FLUX + Kontext pipelines."""
  tok_path = str(tmp_path / "t.model")
  tok = tokenizer_lib.train(tok_path, [prompts.get(k, b) for k in prompts.PROMPTS for b in (0, 1)]
                            + [f"what color is the {c} square?" for c in COLOURS] * 5 + fx.CORPUS, vocab_size=1400)
  rows = []
  os.makedirs(tmp_path / "images")
  for i, (name, rgb) in enumerate(COLOURS.items()):
    image = np.zeros((32, 32, 3), np.uint8)
    image[4 + i:20 + i, 6:22] = rgb
    Image.fromarray(image).save(tmp_path / "images" / f"{i}.png")
    rows.append(json.dumps({"image": f"images/{i}.png", "question": "what color is the square?", "answer": name}))
  (tmp_path / "pool.jsonl").write_text("\n".join(rows) + "\n")
  return tok_path, tok.vocab_size, fx.save_flux(str(tmp_path / "flux")), fx.save_kontext(str(tmp_path / "kontext"))


@pytest.mark.slow  # 13 min measured on 2 cores shared with other jobs (load ~9), mostly XLA compilation.
def test_paper_setup_end_to_end_through_the_cli(tmp_path):
  t0 = time.time()
  tok, vocab, flux_dir, kontext_dir = _world(tmp_path)
  env = _env(tmp_path)
  log = open(tmp_path / "servers.log", "w", encoding="utf-8")  # pylint: disable=consider-using-with
  image_port, answer_port = _port(), _port()
  images = _Server(["serve-images", "--flux-dir", flux_dir, "--kontext-dir", kontext_dir, "--device", "cpu",
                    "--max-sequence-length", str(fx.T5_MAX_LENGTH)], image_port, env, log)
  # The served reference has the in-process reference's weights (seed 2, vlm_system's first reference).
  answers = _Server(["serve-answers", "--variant", "paligemma2_tiny", "--res", "32", "--llm",
                     json.dumps({"vocab_size": vocab}), "--seed", "2", "--tokenizer", tok, "--name",
                     "served", "--prompt-len", "48"], answer_port, env, log)
  spec = (f"configs/audit/paper.py:tiny=True,vocab={vocab},tokenizer={tok},"
          f"images={tmp_path / 'pool.jsonl'},target_train={tmp_path / 'pool.jsonl'},"
          f"target_eval={tmp_path / 'pool.jsonl'},flux_url={images.url},answers_url={answers.url}/v1")
  # generate / rectify / iterate audit in "edit" mode: its question is the pool's, so a random auditor's outputs
  # are well formed (free-form questions from random weights almost never end in "?").
  edit_spec = spec.replace("tiny=True", "mode=edit,tiny=True")
  timings, proc = {}, None
  try:
    images.start(), answers.start()
    # train-auditor in every rollout mode, in two lanes of one process per mode while the servers come up (their
    # clients retry until then); within a lane the modes share shapes, so the later ones reuse the compilations
    # that the persistent cache holds (most of a process is compiling).
    assert {m for lane in LANES for m in lane} == set(rollout.MODES)
    results = {}

    def lane(modes):
      for mode in modes:
        results[mode] = _auditdm(env, "train-auditor", "--config", spec, f"--config.mode={mode}", "--workdir",
                                 str(tmp_path / f"auditor_{mode}"))
        timings[f"train-auditor {mode}"] = time.time() - t0

    with concurrent.futures.ThreadPoolExecutor(len(LANES)) as pool:
      runs = [pool.submit(lane, modes) for modes in LANES]
      images.wait_ready(), answers.wait_ready()
      timings["servers"] = time.time() - t0
      for run in runs:
        run.result()
    for mode, out in results.items():
      out = json.loads(out)
      assert out["trained"]["num_samples"] == out["baseline"]["num_samples"] == 4, (mode, out)
      metrics = json.loads((tmp_path / f"auditor_{mode}" / "metrics.jsonl").read_text().splitlines()[-1])
      assert metrics["step"] == 1 and np.isfinite(metrics["loss"]), (mode, metrics)

    # generate, with both servers killed after the first shard and restarted at once.
    gen_dir = tmp_path / "generate"
    gen_log = open(tmp_path / "generate.log", "w", encoding="utf-8")  # pylint: disable=consider-using-with
    proc = _start(env, "generate", "--config", edit_spec, "--workdir", str(gen_dir),
                  f"--config.generate.auditor_workdir={tmp_path / 'auditor_edit'}", "--config.generate.keep=all",
                  log_level="INFO", stderr=gen_log)
    deadline = time.time() + 300
    while not (gen_dir / "dataset" / "shard-00000.jsonl").exists():
      assert proc.poll() is None and time.time() < deadline, (tmp_path / "generate.log").read_text()[-4000:]
      time.sleep(0.05)
    images.kill(), answers.kill()
    images.start(), answers.start()
    result = json.loads(_finish(proc, "generate"))
    gen_log.close()
    timings["generate"] = time.time() - t0
    assert result["shards"] == 3 and result["records"] > 0
    nothing_lost = {"image_failures": 0, "answer_failures": 0, "reference_failures": 0, "malformed": 0,
                    "ill_posed": 0}
    assert result["failures"] == nothing_lost  # Nothing lost.
    assert "retry" in (tmp_path / "generate.log").read_text()  # The outage was seen, and ridden out by retries.
    records = [json.loads(line) for line in open(gen_dir / "dataset" / "data.jsonl", encoding="utf-8")]
    assert all(set(r["reference_answers"]) == {"paligemma2_tiny", "served"} for r in records)
    # Every answered pair is kept (keep=all, so none is filtered out on agreement): the served reference answered
    # each one exactly as the same weights do in process.
    assert len(records) >= 4 and all(len(set(r["reference_answers"].values())) == 1 for r in records)

    _auditdm(env, "rectify", "--config", edit_spec, "--workdir", str(tmp_path / "rectify"),
             f"--config.rectify.dataset={gen_dir / 'dataset' / 'data.jsonl'}")
    rect = json.loads((tmp_path / "rectify" / "rectify_results.json").read_text())
    assert rect["generated_pairs"] == len(records) and rect["before"]["num"] == rect["after"]["num"] == 6
    assert os.path.exists(rect["target_npz"])
    timings["rectify"] = time.time() - t0

    _auditdm(env, "iterate", "--config", edit_spec, "--workdir", str(tmp_path / "iterate"))
    history = json.loads((tmp_path / "iterate" / "iterate_results.json").read_text())
    assert [h["iteration"] for h in history] == [0, 1] and all(h["after"]["num"] == 6 for h in history)
    timings["iterate"] = time.time() - t0

    report = tmp_path / "report.html"
    _auditdm(env, "report", "--records", str(gen_dir / "dataset" / "data.jsonl"), "--metrics",
             str(tmp_path / "auditor_edit_question" / "metrics.jsonl"), "--out", str(report), "--clusters", "2")
    assert report.stat().st_size > 1000 and records[0]["question"][:20] in report.read_text()
    timings["report"] = time.time() - t0
  finally:
    images.kill(), answers.kill()
    if proc is not None and proc.poll() is None:
      proc.kill()
    log.close()
    print(json.dumps({k: round(v, 1) for k, v in timings.items()}))
