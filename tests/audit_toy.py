"""A toy audit system for the audit-loop tests: a two-token categorical auditor and a target that fails at
counting. Importable as a `config.system.module` (tests/ on sys.path)."""
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from auditdm_jax.audit import answerers
from auditdm_jax.audit import rollout
from auditdm_jax.audit import system as system_lib

WORDS = ("color", "count", "shape", "size")
ENDS = ("?", ".")


class ToyPolicy:
  """Two independent categorical tokens: a question word and its end mark ("what count ?")."""

  def init(self):
    return {"w0": jnp.zeros(len(WORDS)), "w1": jnp.zeros(len(ENDS))}

  def logprobs(self, params, batch):
    t = batch["tokens"]
    return jnp.stack([jax.nn.log_softmax(params["w0"])[t[:, 0]], jax.nn.log_softmax(params["w1"])[t[:, 1]]], -1)

  def sample(self, params, images, instructions, num_samples, rng):
    assert len(instructions) == len(images)
    n = len(images) * num_samples
    k0, k1 = jax.random.split(rng)
    tokens = jnp.stack([jax.random.categorical(k0, params["w0"], shape=(n,)),
                        jax.random.categorical(k1, params["w1"], shape=(n,))], -1).astype(jnp.int32)
    logp = self.logprobs(params, {"tokens": tokens})
    texts = [f"what {WORDS[a]} {ENDS[b]}" for a, b in np.asarray(tokens)]
    return rollout.Completions(texts, {"tokens": np.asarray(tokens), "mask": np.ones((n, 2), np.float32),
                                       "old_logp": np.asarray(logp)})


def _source(k, batch=4):
  # Distinct images per source example so that dedup keys differ across sources.
  images = np.stack([np.full((8, 8, 3), (k * batch + i) % 256, np.uint8) for i in range(batch)])
  return {"image": images, "id": np.array([f"src{k * batch + i}" for i in range(batch)])}


class Pool:
  """`num` source batches; `delay` seconds per batch (lets a test kill a generation run mid-way)."""

  def __init__(self, num, delay=0.0):
    self.num, self.delay = num, delay

  def __len__(self):
    return self.num

  def __getitem__(self, k):
    time.sleep(self.delay)
    return _source(k)


def build(config, workdir):
  del workdir
  policy = ToyPolicy()
  target = answerers.FunctionAnswerer("target", lambda im, qs: ["3" if "count" in q else "ok" for q in qs])
  refs = answerers.Ensemble([answerers.FunctionAnswerer(f"ref{i}", lambda im, qs: ["2" if "count" in q else "ok"
                                                                                   for q in qs]) for i in range(3)])
  return system_lib.System(policy=policy, params=policy.init(), target=target, references=refs, generator=None,
                        data=_source, eval_data=[_source(0)], pool=Pool(config.get("pool_size", 6),
                                                                        config.get("delay", 0.0)),
                        truth_fn=lambda image, q: "2" if "count" in q else "ok")


def get_config(total_steps=10, pool_size=6, delay=0.0):
  c = ml_collections.ConfigDict()
  c.system = dict(module="audit_toy", pool_size=pool_size, delay=delay)
  c.mode, c.group_size, c.max_words, c.seed = "question", 4, 16, 0
  c.total_steps, c.lr, c.wd, c.optimizer = total_steps, 0.3, 0.0, "adamw"
  c.schedule = dict(decay_type="constant")
  c.grad_accum_steps, c.grad_clip_norm = 2, 1.0
  c.ckpt_every, c.log_every = 5, 5
  c.reward = dict(threshold=0.5, soft_agreement=False, partial_credit=0.0, format_penalty=0.5)
  c.loss = dict(algorithm="grpo", beta=0.01, kl_estimator="k3")
  c.mesh = dict(data=-1)
  c.generate = dict(samples_per_source=2, keep="consensus", auditor_workdir="", baseline=False)
  return c
