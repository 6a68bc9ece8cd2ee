"""The image service on Ray Serve: many GPU replicas behind one HTTP front end (paper: 16 H100 with Ray).

  ingress (FastAPI app of service.py: validation, auth, metrics, timeouts)
      -> FluxReplicas x num_replicas (one GPU each): @serve.batch collects concurrent jobs, Engine.run_jobs groups
         the compatible ones into pipeline calls, exactly as the local service's Batcher does.

Ray is optional (`pip install 'auditdm_jax[ray]'`) and imported only here, when this backend is used.
"""
import asyncio
import logging
import time

from auditdm_jax.httpserve import QueueFull
from auditdm_jax.imagegen import engine as engine_lib
from auditdm_jax.imagegen import service

log = logging.getLogger(__name__)
APP_NAME = "auditdm-imagegen"
_replicas = None  # The ingress replica's handle to FluxReplicas (set in its constructor; see RayBackend).


def require_ray():
  """(ray, ray.serve), or ImportError saying how to install them."""
  try:
    import ray  # pylint: disable=g-import-not-at-top
    from ray import serve  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("the Ray backend needs Ray Serve: pip install 'auditdm_jax[ray]' (ray[serve]); "
                      f"or use --backend local ({e})") from None
  return ray, serve


class RayBackend:
  """service.create_app backend that forwards jobs to the FluxReplicas deployment.

  Ray Serve pickles the FastAPI app when the ingress is declared, so the handle cannot be stored on the app object;
  this class reads the module-level handle the ingress replica set at start-up.
  """

  def __init__(self, metrics):
    self.metrics = metrics

  async def submit(self, job):
    from ray.serve.exceptions import BackPressureError  # pylint: disable=g-import-not-at-top
    try:
      png, batch_size, seconds = await _replicas.remote(job)
    except BackPressureError as e:
      raise QueueFull(f"all replicas' queues are full; retry later ({e})") from None
    self.metrics.batch_member(job.mode, batch_size, seconds)
    return png

  def queue_depth(self):
    return None  # Per-replica queues live in Ray; see Ray's own metrics (ray_serve_* on the dashboard).

  def in_flight(self):
    return None

  def close(self):
    pass


def _set_replicas(handle):
  global _replicas
  _replicas = handle


def build_app(settings, flux_dir=None, kontext_dir=None, num_replicas=1, gpus_per_replica=1.0, device=None,
              dtype=None, max_sequence_length=512, share_encoders=False):
  """The Ray Serve application (ingress bound to the GPU replicas), for serve.run."""
  _, serve = require_ray()
  multiples = {mode: engine_lib.pipeline_multiple(d)
               for mode, d in (("generate", flux_dir), ("edit", kontext_dir)) if d}
  if not multiples:
    raise ValueError("give at least one of flux_dir and kontext_dir")

  @serve.deployment(num_replicas=num_replicas, ray_actor_options={"num_gpus": gpus_per_replica},
                    max_ongoing_requests=2 * settings.max_batch_size, max_queued_requests=settings.max_queue)
  class FluxReplicas:
    """One GPU, both pipelines; concurrent calls are micro-batched by @serve.batch."""

    def __init__(self):
      self.engine = engine_lib.Engine.load(flux_dir, kontext_dir, device, dtype, max_sequence_length,
                                           share_encoders)

    @serve.batch(max_batch_size=settings.max_batch_size, batch_wait_timeout_s=settings.batch_wait_ms / 1000)
    async def run_batch(self, jobs):
      # The pipelines block; a thread keeps the replica's event loop collecting the next batch meanwhile.
      start = time.perf_counter()
      results = await asyncio.to_thread(self.engine.run_jobs, jobs)
      seconds = time.perf_counter() - start
      return [r if isinstance(r, BaseException) else (r, len(jobs), seconds) for r in results]

    async def __call__(self, job):
      """-> (PNG bytes, size of the batch it ran in, that batch's seconds)."""
      result = await self.run_batch(job)
      if isinstance(result, BaseException):
        raise result
      return result

  metrics = service.Metrics()

  # The ingress holds every request the replicas run or queue, plus the ones it is about to reject with 429.
  @serve.deployment(max_ongoing_requests=num_replicas * 2 * settings.max_batch_size + settings.max_queue + 32)
  @serve.ingress(service.create_app(settings, multiples, backend=RayBackend(metrics), metrics=metrics))
  class Ingress:

    def __init__(self, replicas):
      _set_replicas(replicas)

  return Ingress.bind(FluxReplicas.bind())


def run(settings, **kwargs):
  """Starts Ray Serve on settings.host:port (joining a running Ray cluster if there is one) and blocks."""
  _, serve = require_ray()
  serve.start(http_options={"host": settings.host, "port": settings.port})
  serve.run(build_app(settings, **kwargs), name=APP_NAME, route_prefix="/")
  log.info("Ray Serve image service on http://%s:%d (Ctrl-C stops it)", settings.host, settings.port)
  try:
    while True:
      time.sleep(3600)
  except KeyboardInterrupt:
    serve.shutdown()
