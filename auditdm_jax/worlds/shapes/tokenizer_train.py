"""A sentencepiece tokenizer for the shapes world, trained on all of the world's text.

The corpus covers every kind of text the demo models read or write: sampled questions and answers of every
skill, captions (canonical and paraphrased), edit commands, the parser's vocabulary (synonyms) and the auditor's
instruction prompts (p_c, p_e, p_q and the baselines p^b).
"""
import numpy as np

from auditdm_jax.audit import prompts
from auditdm_jax.worlds.shapes import scenes as shapes
from auditdm_jax.worlds.shapes import language as lang
from auditdm_jax.worlds.shapes import tasks
from auditdm_jax.models import tokenizer as tokenizer_lib


def world_corpus(num_scenes=1500, seed=0):
  """List of sentences of the world's language (deterministic in `seed`)."""
  rng = np.random.default_rng(seed)
  texts = [p for pair in prompts.PROMPTS.values() for p in pair]
  texts += [tokenizer_lib.paligemma_prompt("answer", "x"), tokenizer_lib.paligemma_prompt("caption")]
  vocab = (list(lang.SHAPE_WORDS) + list(lang.SHAPE_PLURALS) + sorted(lang.GENERIC | lang.GENERIC_PLURALS) +
           list(lang.COLOR_WORDS) + list(lang.SIZE_WORDS) + list(lang.TEXTURE_WORDS) + list(lang.NUMBERS) +
           list(shapes.POSITIONS))
  texts.append(" ".join(vocab))
  # Answers are whole suffixes: repeated as lines of their own so each becomes one piece (no leading "▁").
  answers = list(shapes.SHAPES) + list(shapes.COLORS) + list(shapes.SIZES) + ["yes", "no"] + [str(i) for i in range(10)]
  texts += answers * 50
  for _ in range(num_scenes):
    scene = shapes.sample_scene(rng, 0, 6, texture_prob=0.2)
    texts.append(lang.caption(scene))
    texts.append(lang.caption(scene, rng))
    for kind in tasks.AUDITOR_KINDS:
      texts.append(tasks.auditor_example(scene, rng, kind))
    if scene.objects:
      q, a, _ = tasks.sample_question(scene, rng)
      texts.append(f"{q} {a}")
  return texts


def train_tokenizer(model_path, vocab_size=600, num_scenes=1500, seed=0):
  """Trains and writes the world's tokenizer to `model_path` (*.model); returns a `models.tokenizer.Tokenizer`."""
  return tokenizer_lib.train(model_path, world_corpus(num_scenes, seed), vocab_size=vocab_size, special=("\n",))
