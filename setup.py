"""auditdm-jax: AuditDM (arXiv 2512.16921) in JAX/Flax."""
import setuptools

CORE = [
    "jax>=0.5",
    "flax>=0.10",
    "optax>=0.2",
    "orbax-checkpoint>=0.11",
    "ml-collections>=1.0",
    "tensorflow-cpu>=2.16",
    "tensorflow-datasets>=4.9",
    "sentencepiece>=0.2",
    "safetensors>=0.4",
    "numpy",
    "pillow",
    "tqdm",
    "httpx",
    "matplotlib",  # plots in the HTML failure report
    "scikit-learn",  # failure types in the report (TF-IDF + k-means)
    "tensorboardX",  # TensorBoard metrics beside metrics.jsonl
    "importlib_resources",  # tfds download_and_prepare imports it
    "filelock",  # JAX's persistent compilation cache keeps its size bound with it (auditdm_jax/compile_cache.py)
]
# torch is pinned: a CPU build of exactly this version is provided; an unpinned torch pulls GBs of CUDA wheels.
TORCH = ["torch==2.13.0"]
SERVICE = TORCH + ["diffusers>=0.32", "transformers>=4.50", "fastapi", "uvicorn"]
RAY = ["ray[serve]>=2.10,<3"]  # `generate --ray` and the Ray Serve image deployment (2.60 is tested).
# Tests run every optional path: the Ray ones too.
TEST = TORCH + RAY + ["pytest", "pytest-xdist", "transformers>=4.50", "tokenizers", "pycocoevalcap"]

setuptools.setup(
    name="auditdm_jax",
    version="0.1.0",
    description="AuditDM: auditing MLLMs for capability gaps, in JAX/Flax",
    packages=setuptools.find_packages(include=["auditdm_jax", "auditdm_jax.*"]),
    python_requires=">=3.10",
    # Trained demo models shipped as the shapes world's default cache (worlds/shapes/shipped.py).
    package_data={"auditdm_jax.worlds.shapes": ["checkpoints/*/*", "checkpoints/*/*/*"]},
    install_requires=CORE,
    extras_require={
        "test": TEST,
        "service": SERVICE,
        "ray": RAY,
    },
    entry_points={"console_scripts": ["auditdm=auditdm_jax.main:main"]},
)
