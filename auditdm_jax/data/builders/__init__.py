"""TFDS builders for benchmarks missing from the TFDS catalog, each reading the officially distributed files from
a manual download directory (layout in each module's docstring). Importing this package registers them:

  vqav2, gqa, okvqa, ai2d, docvqa, chartqa        (this package)
  ref_coco, coco_captions                          (TFDS catalog; see catalog.py)

Build one with `tfds.builder("vqav2", data_dir=D).download_and_prepare(
download_config=tfds.download.DownloadConfig(manual_dir=M))`; the input pipeline imports this package, so a source
`{"name": "vqav2", "data_dir": D}` then reads it.
"""
from auditdm_jax.data.builders import ai2d  # noqa: F401  (registers)
from auditdm_jax.data.builders import chartqa  # noqa: F401
from auditdm_jax.data.builders import docvqa  # noqa: F401
from auditdm_jax.data.builders import gqa  # noqa: F401
from auditdm_jax.data.builders import okvqa  # noqa: F401
from auditdm_jax.data.builders import vqav2  # noqa: F401
