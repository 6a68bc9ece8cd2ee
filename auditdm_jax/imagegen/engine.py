"""The FLUX pipelines behind the image service: loading, and running micro-batches of compatible jobs.

Shared by the local FastAPI service (service.py) and the Ray Serve deployment (ray_serve.py). Text-to-image uses
diffusers' `FluxPipeline` (paper: FLUX.1-dev, regeneration from a caption); editing uses `FluxKontextPipeline`
(FLUX.1-Kontext-dev, an edit command applied to a source image).

Determinism: every item gets its own CPU `torch.Generator` seeded with the request's seed, so an image depends only
on (pipeline, text, source image, seed, params), not on which other requests shared its batch or on the device the
noise is later moved to.
"""
import dataclasses
import json
import logging
import math
import os
import warnings

from PIL import Image

from auditdm_jax import images as images_lib

log = logging.getLogger(__name__)
MODES = ("generate", "edit")


@dataclasses.dataclass
class Job:
  """One image to make. `image` (edits only) is the source, already resized to (width, height)."""
  mode: str
  text: str
  seed: int
  steps: int
  guidance: float
  height: int
  width: int
  image: Image.Image | None = None

  @property
  def batch_key(self):
    """Jobs with equal keys run in one pipeline call."""
    return (self.mode, self.height, self.width, self.steps, self.guidance)


def pipeline_multiple(directory):
  """Pixel multiple the pipeline in `directory` needs for height/width: VAE downsampling x 2 (latent packing).

  16 for FLUX.1 (VAE factor 8), 2 for the one-block test VAE. Read from `vae/config.json` so a front end that does
  not hold the weights (the Ray ingress) validates sizes the same way.
  """
  with open(os.path.join(directory, "vae", "config.json"), encoding="utf-8") as f:
    blocks = json.load(f)["block_out_channels"]
  return 2 ** (len(blocks) - 1) * 2


def edit_size(width, height, area, multiple):
  """(height, width) of an edit's output: the source's aspect ratio at about `area` pixels, each side a multiple
  of `multiple` (Kontext would otherwise default to 1024 x 1024 whatever the source's shape)."""
  scale = math.sqrt(area / (width * height))
  snap = lambda x: max(multiple, int(round(x * scale / multiple)) * multiple)
  return snap(height), snap(width)


def default_device():
  import torch  # pylint: disable=g-import-not-at-top
  return "cuda" if torch.cuda.is_available() else "cpu"


class Engine:
  """Holds one pipeline per mode and runs jobs through them.

  Args:
    pipelines: {"generate": FluxPipeline, "edit": FluxKontextPipeline}; either may be missing.
    max_sequence_length: T5 tokens of the prompt (512 for FLUX.1-dev).
  """

  def __init__(self, pipelines, max_sequence_length=512):
    self.pipelines = dict(pipelines)
    self.max_sequence_length = max_sequence_length
    for pipe in self.pipelines.values():
      pipe.set_progress_bar_config(disable=True)
      for module in pipe.components.values():
        if hasattr(module, "eval"):
          module.eval()  # No dropout: the same seed gives the same image.

  @classmethod
  def load(cls, flux_dir=None, kontext_dir=None, device=None, dtype=None, max_sequence_length=512,
           share_encoders=False):
    """Loads the pipelines from local `save_pretrained` directories (no hub access): bf16 on GPU, fp32 on CPU.

    share_encoders: Kontext reuses FLUX's text encoders, tokenizers and VAE instead of loading its own copies
      (FLUX.1-Kontext-dev ships the same CLIP, T5-XXL and autoencoder as FLUX.1-dev; saves ~10 GB of GPU memory,
      which lets both pipelines fit one 80 GB GPU with room for batches).
    """
    import diffusers  # pylint: disable=g-import-not-at-top
    import torch  # pylint: disable=g-import-not-at-top
    if not flux_dir and not kontext_dir:
      raise ValueError("give at least one of flux_dir (text-to-image) and kontext_dir (editing)")
    device = device or default_device()
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    dtype = dtype or (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    pipelines = {}
    for mode, directory, pipeline_cls in (("generate", flux_dir, diffusers.FluxPipeline),
                                          ("edit", kontext_dir, diffusers.FluxKontextPipeline)):
      if not directory:
        continue
      if not os.path.isfile(os.path.join(directory, "model_index.json")):
        raise FileNotFoundError(f"{directory} is not a diffusers pipeline directory (no model_index.json)")
      log.info("loading %s from %s (%s, %s)", pipeline_cls.__name__, directory, device, dtype)
      shared = {}
      if mode == "edit" and share_encoders and "generate" in pipelines:
        shared = {k: pipelines["generate"].components[k]
                  for k in ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "vae")}
      with warnings.catch_warnings():  # `torch_dtype` is deprecated for `dtype` in new diffusers, absent in old.
        warnings.simplefilter("ignore", FutureWarning)
        pipelines[mode] = pipeline_cls.from_pretrained(directory, torch_dtype=dtype, local_files_only=True,
                                                       **shared).to(device)
    return cls(pipelines, max_sequence_length)

  def run(self, jobs, should_stop=None):
    """Runs jobs sharing one `batch_key` in a single pipeline call; returns their PIL images in order.

    should_stop: `() -> bool` checked after every denoising step; True interrupts the pipeline (its requests were
    abandoned), which then returns unfinished images nobody will read.
    """
    import torch  # pylint: disable=g-import-not-at-top
    mode, height, width, steps, guidance = jobs[0].batch_key
    if any(j.batch_key != jobs[0].batch_key for j in jobs):
      raise ValueError("Engine.run needs jobs with one batch_key; use run_jobs for mixed jobs")
    kwargs = dict(prompt=[j.text for j in jobs], height=height, width=width, num_inference_steps=steps,
                  guidance_scale=guidance, max_sequence_length=self.max_sequence_length, output_type="pil",
                  generator=[torch.Generator("cpu").manual_seed(j.seed) for j in jobs])
    if mode == "edit":
      # max_area = height * width keeps Kontext's aspect-ratio rescaling a no-op; no snapping of the source to
      # Kontext's preferred resolutions, because the source was resized to (width, height) already.
      kwargs.update(image=[j.image for j in jobs], max_area=height * width, _auto_resize=False)
    if should_stop is not None:
      def on_step_end(pipe, step, timestep, tensors):
        del step, timestep
        pipe._interrupt = pipe._interrupt or should_stop()  # pylint: disable=protected-access
        return tensors
      kwargs["callback_on_step_end"] = on_step_end
    with torch.inference_mode():
      return self.pipelines[mode](**kwargs).images

  def run_jobs(self, jobs, should_stop=None):
    """Runs any jobs: groups them by batch_key, one pipeline call per group; a failed group is retried item by item
    so one bad item fails alone. Returns PNG bytes or the exception, per job, in order (see `run` for
    should_stop)."""
    groups = {}
    for i, job in enumerate(jobs):
      groups.setdefault(job.batch_key, []).append(i)
    results = [None] * len(jobs)
    for indices in groups.values():
      try:
        images = self.run([jobs[i] for i in indices], should_stop)
        for i, image in zip(indices, images):
          results[i] = images_lib.png_bytes(image, compress_level=1)  # Level 1: the serving path.
      except Exception as e:  # pylint: disable=broad-except
        if len(indices) == 1:
          log.exception("%s job failed", jobs[indices[0]].mode)
          results[indices[0]] = e
          continue
        log.warning("batch of %d failed (%s); retrying its items one by one", len(indices), e)
        for i in indices:
          results[i] = self.run_jobs([jobs[i]], should_stop)[0]
    return results
