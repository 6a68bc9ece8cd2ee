"""`auditdm serve-images`: the FLUX image service (text-to-image + Kontext editing) over HTTP.

  auditdm serve-images --flux-dir /models/FLUX.1-dev --kontext-dir /models/FLUX.1-Kontext-dev --port 8000
  auditdm serve-images --backend ray --num-replicas 16 --flux-dir ... --kontext-dir ...

The bearer token, when wanted, comes from $AUDITDM_IMAGEGEN_TOKEN (not a flag: flags show up in `ps`).
"""
import logging
import os

from auditdm_jax import httpserve
from auditdm_jax.imagegen import client
from auditdm_jax.imagegen import ray_serve
from auditdm_jax.imagegen import service

HELP = "serve FLUX text-to-image and FLUX-Kontext editing over HTTP (one process, or Ray Serve replicas)"
log = logging.getLogger(__name__)


def add_arguments(parser):
  d = service.Settings()
  parser.add_argument("--flux-dir", help="local diffusers FluxPipeline directory (enables /v1/generate)")
  parser.add_argument("--kontext-dir", help="local diffusers FluxKontextPipeline directory (enables /v1/edit)")
  parser.add_argument("--backend", choices=("local", "ray"), default="local")
  parser.add_argument("--host", default=d.host, help="bind address (default loopback)")
  parser.add_argument("--port", type=int, default=d.port)
  parser.add_argument("--device", help="torch device (default cuda if available, else cpu)")
  parser.add_argument("--dtype", choices=("bfloat16", "float16", "float32"),
                      help="default bfloat16 on GPU, float32 on CPU")
  parser.add_argument("--max-sequence-length", type=int, default=512, help="T5 prompt tokens (FLUX.1-dev: 512)")
  parser.add_argument("--max-batch-size", type=int, default=d.max_batch_size)
  parser.add_argument("--batch-wait-ms", type=float, default=d.batch_wait_ms)
  parser.add_argument("--max-queue", type=int, default=d.max_queue, help="queued requests before 429")
  parser.add_argument("--timeout-s", type=float, default=d.request_timeout_s, help="per-request timeout (504)")
  parser.add_argument("--max-side", type=int, default=d.max_side)
  parser.add_argument("--max-steps", type=int, default=d.max_steps)
  parser.add_argument("--edit-area", type=int, default=d.edit_area, help="default output pixels of an edit")
  parser.add_argument("--share-encoders", action="store_true",
                      help="Kontext reuses FLUX's text encoders and VAE (same weights in FLUX.1-dev/Kontext-dev)")
  parser.add_argument("--num-replicas", type=int, default=1, help="Ray: GPU replicas")
  parser.add_argument("--gpus-per-replica", type=float, default=1.0, help="Ray: GPUs per replica")


def settings_from_args(args):
  return service.Settings(
      host=args.host, port=args.port, token=os.environ.get(client.TOKEN_ENV) or None, max_queue=args.max_queue,
      max_batch_size=args.max_batch_size, batch_wait_ms=args.batch_wait_ms, request_timeout_s=args.timeout_s,
      max_side=args.max_side, max_pixels=max(args.max_side, 1) ** 2, max_steps=args.max_steps,
      edit_area=args.edit_area)


def run(args):
  if not args.flux_dir and not args.kontext_dir:
    raise ValueError("give --flux-dir and/or --kontext-dir (local diffusers directories)")
  settings = settings_from_args(args)
  pipelines = dict(flux_dir=args.flux_dir, kontext_dir=args.kontext_dir, device=args.device, dtype=args.dtype,
                   max_sequence_length=args.max_sequence_length, share_encoders=args.share_encoders)
  sock = httpserve.bind(settings.host, settings.port)  # A busy port fails now, not after loading the pipelines.
  if args.backend == "ray":
    sock.close()  # Ray Serve binds its own.
    ray_serve.require_ray()
    ray_serve.run(settings, num_replicas=args.num_replicas, gpus_per_replica=args.gpus_per_replica, **pipelines)
  else:
    app = service.build_local_app(settings, **pipelines)
    httpserve.serve(app, settings.host, settings.port, settings.token, "the image service", sock=sock,
                    on_exit=app.state.backend.close)
