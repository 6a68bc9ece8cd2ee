"""Throughput of the image service (micro-batching) against sequential direct pipeline calls, in one run.

  python -m auditdm_jax.tools.bench_imagegen                       # tiny random FLUX (built in a temp dir)
  python -m auditdm_jax.tools.bench_imagegen --flux-dir /models/FLUX.1-dev --size 512 --steps 28 --n 64

Three timings on the same loaded pipeline and the same prompts/seeds: (1) `pipe(...)` called once per image,
(2) the HTTP service with micro-batching (client concurrency >= batch size), (3) the service with
max_batch_size=1; the three alternate for --rounds rounds. Prints ONE JSON line (images/s, ratios, mean batch size, and the largest pixel difference
between service and direct images, which should be <= 1).
"""
import argparse
import collections
import contextlib
import importlib.util
import json
import os
import tempfile
import time

import numpy as np

from auditdm_jax import httpserve
from auditdm_jax.imagegen import client as client_lib
from auditdm_jax.imagegen import engine as engine_lib
from auditdm_jax.imagegen import service

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROMPTS = ["a red circle above a blue square", "a photo of two cats on a sofa", "a small yellow star in a corner",
           "three people walking on a beach at sunset", "a large white car parked outside", "a green triangle"]


def tiny_flux_dir(directory):
  """Saves the tests' tiny random FluxPipeline (tests/imagegen_fixtures.py; a source checkout is needed)."""
  path = os.path.join(REPO_ROOT, "tests", "imagegen_fixtures.py")
  if not os.path.isfile(path):
    raise SystemExit(f"{path} not found: run from a source checkout or pass --flux-dir")
  spec = importlib.util.spec_from_file_location("imagegen_fixtures", path)
  fixtures = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(fixtures)
  return fixtures.save_flux(os.path.join(directory, "flux")), fixtures.T5_MAX_LENGTH


def bench_direct(pipe, prompts, seeds, args, max_sequence_length):
  import torch  # pylint: disable=g-import-not-at-top
  images, start = [], time.perf_counter()
  with torch.inference_mode():  # As the service's Engine.run: the fastest direct call is the baseline.
    for prompt, seed in zip(prompts, seeds):
      images.append(np.asarray(pipe(
          prompt=prompt, height=args.size, width=args.size, num_inference_steps=args.steps,
          guidance_scale=args.guidance, max_sequence_length=max_sequence_length,
          generator=torch.Generator("cpu").manual_seed(seed)).images[0]))
  return time.perf_counter() - start, images


@contextlib.contextmanager
def serving(engine, args, max_batch_size, n):
  """Yields a client of the service over `engine`, and its Metrics."""
  settings = service.Settings(max_batch_size=max_batch_size, batch_wait_ms=args.batch_wait_ms, max_queue=4 * n,
                              max_side=max(args.size, 16), default_size=args.size)
  metrics = service.Metrics()
  app = service.create_app(settings, {"generate": engine_lib.pipeline_multiple(args.flux_dir)},
                           service.LocalBackend(engine, settings, metrics), metrics)
  with httpserve.serve_in_thread(app) as url:
    yield client_lib.FluxHTTPGenerator(url=url, concurrency=args.concurrency, steps=args.steps,
                                       guidance=args.guidance, height=args.size, width=args.size,
                                       max_retries=0), metrics


def bench_service(gen, prompts, seeds):
  start = time.perf_counter()
  images = gen.generate(prompts, seeds)
  seconds = time.perf_counter() - start
  failed = [im for im in images if not isinstance(im, np.ndarray)]
  if failed:
    raise RuntimeError(f"{len(failed)} service requests failed, first: {failed[0]}")
  return seconds, images


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--flux-dir", help="diffusers FluxPipeline directory (default: tiny random, built here)")
  parser.add_argument("--n", type=int, default=48, help="images per timing")
  parser.add_argument("--size", type=int, default=64)
  parser.add_argument("--steps", type=int, default=4)
  parser.add_argument("--guidance", type=float, default=3.5)
  parser.add_argument("--max-batch-size", type=int, default=8)
  parser.add_argument("--batch-wait-ms", type=float, default=10.0)
  parser.add_argument("--concurrency", type=int, default=16)
  parser.add_argument("--device", help="default cuda if available, else cpu")
  parser.add_argument("--rounds", type=int, default=3,
                      help="the three timings alternate this many times (fair under a drifting machine load)")
  args = parser.parse_args(argv)
  import diffusers  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  diffusers.utils.logging.set_verbosity_error()  # Tiny T5 truncation warnings, once per image otherwise.
  seconds, max_diff = collections.Counter(), 0
  with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
    max_sequence_length = 512
    if not args.flux_dir:
      args.flux_dir, max_sequence_length = tiny_flux_dir(tmp)
    engine = engine_lib.Engine.load(args.flux_dir, device=args.device, max_sequence_length=max_sequence_length)
    pipe = engine.pipelines["generate"]
    batched_gen, metrics = stack.enter_context(serving(engine, args, args.max_batch_size, args.n))
    unbatched_gen, _ = stack.enter_context(serving(engine, args, 1, args.n))
    warm = (["warm-up"], [10**6])
    bench_direct(pipe, *warm, args, max_sequence_length)
    batched_gen.generate(*warm)
    unbatched_gen.generate(*warm)
    for r in range(args.rounds):
      prompts = [PROMPTS[i % len(PROMPTS)] + f" {i}" for i in range(args.n)]
      seeds = [r * args.n + i for i in range(args.n)]
      t, direct = bench_direct(pipe, prompts, seeds, args, max_sequence_length)
      seconds["direct"] += t
      t, batched = bench_service(batched_gen, prompts, seeds)
      seconds["batched"] += t
      seconds["unbatched"] += bench_service(unbatched_gen, prompts, seeds)[0]
      max_diff = max([max_diff] + [int(np.abs(a.astype(int) - b).max()) for a, b in zip(batched, direct)])
    snapshot = metrics.snapshot()
  n = args.n * args.rounds
  print(json.dumps({
      "bench": "imagegen", "device": str(pipe.device), "torch_threads": torch.get_num_threads(),
      "pipeline": "tiny-random" if max_sequence_length != 512 else args.flux_dir, "images": n, "size": args.size,
      "steps": args.steps, "max_batch_size": args.max_batch_size, "concurrency": args.concurrency,
      "direct_sequential_img_s": round(n / seconds["direct"], 2),
      "service_batched_img_s": round(n / seconds["batched"], 2),
      "service_unbatched_img_s": round(n / seconds["unbatched"], 2),
      "batched_vs_direct": round(seconds["direct"] / seconds["batched"], 3),
      "batched_vs_unbatched": round(seconds["unbatched"] / seconds["batched"], 3),
      "mean_batch_size": round((snapshot["images"]["generate"] - 1) / (snapshot["batches"]["generate"] - 1), 2),
      "service_p50_latency_s": round(snapshot["latency_s"]["generate"]["p50"], 4),
      "max_abs_diff_vs_direct": max_diff,
  }))

if __name__ == "__main__":
  main()
