"""Divergence between the target's answer and the references' consensus, and the auditor's reward.

The paper's reward: an (image, question) pair scores when the references agree on an answer (so the pair is
answerable) and the target's answer differs (so the target fails). Everything here is pure Python/numpy over
strings; every component of the reward is returned separately so it can be logged.
"""
import collections
import dataclasses
import re

import numpy as np

# VQA-eval style normalisation (Antol et al. 2015 evaluation script, abridged).
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12",
}
_ARTICLES = {"a", "an", "the"}
_CONTRACTIONS = {
    "dont": "don't", "doesnt": "doesn't", "isnt": "isn't", "arent": "aren't", "cant": "can't", "wont": "won't",
    "wasnt": "wasn't", "werent": "weren't", "didnt": "didn't", "hasnt": "hasn't", "havent": "haven't",
}
_PUNCT = re.compile(r"[;/\[\]\"{}()=+\\_\-><@`,?!*#%^&$:|~]")
# A period ends a sentence unless it is part of a number ("2.5").
_PERIOD = re.compile(r"\.(?!\d)")
_COMMA_NUMBER = re.compile(r"(\d)(,)(\d)")


def normalize_answer(text):
  """Canonical form of a short answer: lower case, no punctuation/articles, number words as digits.

  >>> normalize_answer("Two red Circles.")
  '2 red circles'
  """
  text = str(text).strip().lower().replace("\n", " ").replace("\t", " ")
  text = _COMMA_NUMBER.sub(r"\1\3", text)  # "1,000" -> "1000" before commas become spaces.
  text = _PUNCT.sub(" ", text)
  text = _PERIOD.sub("", text)
  words = []
  for word in text.split():
    word = _NUMBER_WORDS.get(word, word)
    word = _CONTRACTIONS.get(word, word)
    if word not in _ARTICLES:
      words.append(word)
  return " ".join(words)


def consensus(answers, threshold=0.5):
  """Majority answer of the references after normalisation.

  Args:
    answers: the references' answers to one (image, question) pair (strings).
    threshold: minimal fraction of references that must give the majority answer for a consensus. With 3
      references, 0.5 is "at least 2 agree", 1.0 is "all agree".
  Returns:
    (majority normalised answer, its agreement fraction in [0, 1], whether agreement >= threshold). Ties are broken
    by the first-seen answer so results are deterministic. Empty answers never form a consensus.
  """
  if not answers:
    raise ValueError("consensus needs at least one reference answer")
  normed = [normalize_answer(a) for a in answers]
  counts = collections.Counter(n for n in normed if n)
  if not counts:
    return "", 0.0, False
  best = max(counts.items(), key=lambda kv: (kv[1], -normed.index(kv[0])))[0]
  agreement = counts[best] / len(normed)
  return best, agreement, agreement >= threshold - 1e-9


@dataclasses.dataclass(frozen=True)
class RewardConfig:
  """How divergence becomes reward.

  threshold: reference agreement needed for a consensus (majority fraction).
  soft_agreement: when True a consensus pays its agreement fraction (2/3 agree -> 0.67) instead of 1.
  partial_credit: reward factor (times agreement) when the target differs from the references' plurality answer
    but the agreement threshold is not reached; 0 is the paper's strict rule.
  format_penalty: subtracted from the reward of a malformed auditor output (which gets no divergence reward).
  """
  threshold: float = 0.5
  soft_agreement: bool = False
  partial_credit: float = 0.0
  format_penalty: float = 0.5

  def __post_init__(self):
    if not 0.0 < self.threshold <= 1.0:
      raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
    if not 0.0 <= self.partial_credit <= 1.0:
      raise ValueError(f"partial_credit must be in [0, 1], got {self.partial_credit}")
    if self.format_penalty < 0:
      raise ValueError(f"format_penalty must be >= 0, got {self.format_penalty}")


def reward(target_answer, reference_answers, well_formed=True, config=RewardConfig()):
  """Reward of one audited pair; returns a dict of all components (floats/bools/strings).

  Keys: reward (total), divergence (reward before the format penalty), format_penalty, consensus (bool: the
  references agree), agreement, target_disagrees (bool), failure (bool: consensus AND target disagrees, the
  paper's "failure found"), label (the consensus answer, usable as a training label), target (normalised).
  """
  label, agreement, agreed = consensus(reference_answers, config.threshold)
  target = normalize_answer(target_answer)
  disagrees = bool(label) and target != label
  if not well_formed:
    divergence = 0.0
  elif agreed and disagrees:
    divergence = agreement if config.soft_agreement else 1.0
  elif disagrees:
    divergence = config.partial_credit * agreement
  else:
    divergence = 0.0
  penalty = 0.0 if well_formed else config.format_penalty
  return dict(reward=divergence - penalty, divergence=divergence, format_penalty=penalty, consensus=agreed,
              agreement=agreement, target_disagrees=disagrees, failure=bool(well_formed and agreed and disagrees),
              label=label, target=target)


def batch_rewards(target_answers, reference_answers, well_formed=None, config=RewardConfig()):
  """Vectorised `reward` over N pairs.

  Args:
    target_answers: N strings.
    reference_answers: R lists of N strings (one list per reference model).
    well_formed: N bools (default all True).
  Returns:
    dict of numpy arrays [N] per numeric component plus lists for `label` and `target`.
  """
  n = len(target_answers)
  if any(len(r) != n for r in reference_answers):
    raise ValueError(f"every reference needs {n} answers, got {[len(r) for r in reference_answers]}")
  if not reference_answers:
    raise ValueError("need at least one reference model")
  well_formed = [True] * n if well_formed is None else list(well_formed)
  rows = [reward(target_answers[i], [r[i] for r in reference_answers], well_formed[i], config) for i in range(n)]
  out = {}
  for key in ("reward", "divergence", "format_penalty", "agreement"):
    out[key] = np.array([row[key] for row in rows], np.float32)
  for key in ("consensus", "target_disagrees", "failure"):
    out[key] = np.array([row[key] for row in rows], bool)
  out["label"] = [row["label"] for row in rows]
  out["target"] = [row["target"] for row in rows]
  return out


def check_format(text, kind, max_words=64):
  """Whether an auditor output is well formed for its `kind` ("question", "caption" or "edit").

  Returns (ok, reason). A malformed output is empty, over `max_words`, several lines/sentences where one is
  asked, or (for questions) not a question.
  """
  text = (text or "").strip()
  if not text:
    return False, "empty"
  words = text.split()
  if len(words) > max_words:
    return False, "too_long"
  if "\n" in text:
    return False, "multiline"
  if kind == "question":
    if not text.endswith("?") or text.count("?") > 1:
      return False, "not_a_question"
  elif kind in ("caption", "edit"):
    if "?" in text:
      return False, "contains_question"
  else:
    raise ValueError(f"unknown output kind {kind!r}")
  return True, "ok"
