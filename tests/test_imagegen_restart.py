"""A service process killed mid-request: the client retries until a restarted service answers, and the image is
the one the pipeline makes for that seed. Runs `serve-images` in real subprocesses."""
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
import torch

import diffusers
import imagegen_fixtures as fx
from auditdm_jax.imagegen import get_generator

RUN_COMMAND = ("import argparse, sys; from auditdm_jax.commands import serve_images as c; "
               "p = argparse.ArgumentParser(); c.add_arguments(p); c.run(p.parse_args(sys.argv[1:]))")


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(flux_dir, port, log_path):
  with open(log_path, "ab") as log:  # The child keeps its own descriptor.
    return subprocess.Popen([sys.executable, "-c", RUN_COMMAND, "--flux-dir", flux_dir, "--port", str(port),
                             "--max-sequence-length", str(fx.T5_MAX_LENGTH), "--batch-wait-ms", "0"],
                            stdout=log, stderr=subprocess.STDOUT)


def _wait_until(predicate, process, timeout=180):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    assert process.poll() is None, "the service process exited"
    try:
      if predicate():
        return
    except httpx.HTTPError:
      pass
    time.sleep(0.02)
  raise AssertionError("timed out waiting for the service")


@pytest.mark.slow  # Two service processes start (torch + diffusers imports): ~15 s idle, more on a busy box.
def test_killed_service_is_retried_by_the_client_and_the_restart_answers(tmp_path):
  flux_dir = fx.tiny_dirs()[0]
  port = _free_port()
  url = f"http://127.0.0.1:{port}"
  first = _start(flux_dir, port, tmp_path / "first.log")
  second = None
  try:
    _wait_until(lambda: httpx.get(url + "/healthz").json()["status"] == "ok", first)
    gen = get_generator("flux-http", url=url, height=32, width=32, steps=20, max_retries=12, backoff_s=0.5,
                        max_backoff_s=4.0)
    result = []
    worker = threading.Thread(target=lambda: result.extend(gen.generate(["a small yellow star"], [11])))
    worker.start()
    metrics = lambda: httpx.get(url + "/metrics", params={"format": "json"}).json()
    _wait_until(lambda: metrics()["in_flight"] == 1, first)
    first.kill()  # SIGKILL while the pipeline runs the request.
    first.wait()
    second = _start(flux_dir, port, tmp_path / "second.log")
    worker.join(timeout=240)
    assert not worker.is_alive()
    assert gen.stats["retries"] >= 1 and metrics()["requests"] == {"generate/200": 1}
  finally:
    for process in (first, second):
      if process is not None and process.poll() is None:
        process.terminate()
        process.wait(timeout=30)
  pipe = diffusers.FluxPipeline.from_pretrained(flux_dir)
  pipe.set_progress_bar_config(disable=True)
  ref = pipe(prompt="a small yellow star", height=32, width=32, num_inference_steps=20, guidance_scale=3.5,
             max_sequence_length=fx.T5_MAX_LENGTH, generator=torch.Generator().manual_seed(11)).images[0]
  np.testing.assert_array_equal(result[0], np.asarray(ref))
