"""Divergence between the target's answer and the references' consensus, and the auditor's reward.

The paper's reward: an (image, question) pair scores when the references agree on an answer (so the pair is
answerable) and the target's answer differs (so the target fails). Everything here is pure Python/numpy over
strings; every component of the reward is returned separately so it can be logged.
"""
import collections
import dataclasses
import numbers
import re
from typing import NamedTuple

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
_WHOLE_DECIMAL = re.compile(r"^(\d+)\.0+$")  # "2.0" -> "2", as the number 2.0.


def normalize_answer(text):
  """Canonical form of a short answer: lower case, no punctuation/articles, number words as digits.

  Numbers are accepted as well as strings (2, 2.0 and "two" are all "2"). A failed answer (None) is not text: it
  raises TypeError, so it can never be mistaken for an answer (`str(None)` would read as the number word "none").

  >>> normalize_answer("Two red Circles.")
  '2 red circles'
  """
  if isinstance(text, bool) or not isinstance(text, (str, numbers.Real)):
    raise TypeError(f"an answer is a string or a number, got {type(text).__name__}: {text!r}")
  if isinstance(text, numbers.Real) and not isinstance(text, str) and float(text).is_integer():
    text = int(text)
  text = str(text).strip().lower().replace("\n", " ").replace("\t", " ")
  text = _COMMA_NUMBER.sub(r"\1\3", text)  # "1,000" -> "1000" before commas become spaces.
  text = _PUNCT.sub(" ", text)
  text = _PERIOD.sub("", text)
  words = []
  for word in text.split():
    word = _NUMBER_WORDS.get(word, word)
    word = _CONTRACTIONS.get(word, word)
    word = _WHOLE_DECIMAL.sub(r"\1", word)
    if word not in _ARTICLES:
      words.append(word)
  return " ".join(words)


def answered(answer):
  """Whether a reference produced an answer: None (a failed request) or an exception object is absent."""
  return answer is not None and not isinstance(answer, BaseException)


class Consensus(NamedTuple):
  """label: the unique most frequent normalised answer ("" on a tie or when nothing non-empty was answered);
  agreement: its count / the number of references that answered; agreed: whether that is a consensus;
  answered: how many references answered (failed ones are absent, never an answer); too_few: fewer than
  `min_references` answered (then `agreed` is False)."""
  label: str
  agreement: float
  agreed: bool
  answered: int
  too_few: bool


def consensus(answers, threshold=0.5, min_references=None):
  """The references' consensus on one (image, question) pair.

  A consensus needs (1) at least `min_references` answers (None = more than half of the references; failed
  references, None or an exception object, are absent and count for nothing), (2) a unique most frequent
  non-empty normalised answer: a tie is never a consensus, whatever the threshold, and (3) that answer given by at
  least `threshold` of the references that answered. With 3 references, 0.5 is "at least 2 agree", 1.0 is "all
  agree"; with 2, 0.5 is "both agree" (1 : 1 is a tie). Too few answers is a value (`agreed` False), never an
  exception.

  Args:
    answers: the references' answers (strings or numbers; None / exception for a failed reference).
    threshold: minimal fraction of the answering references that must give the top answer.
    min_references: minimal number of references that must have answered; None = len(answers) // 2 + 1.
  Returns:
    A `Consensus`.
  """
  if not answers:
    raise ValueError("consensus needs at least one reference answer")
  need = len(answers) // 2 + 1 if min_references is None else min_references
  normed = [normalize_answer(a) for a in answers if answered(a)]
  too_few = len(normed) < need
  counts = collections.Counter(n for n in normed if n).most_common()
  if not counts:
    return Consensus("", 0.0, False, len(normed), too_few)
  (best, top), tied = counts[0], len(counts) > 1 and counts[1][1] == counts[0][1]
  agreement = top / len(normed)
  agreed = not tied and not too_few and agreement >= threshold - 1e-9
  return Consensus("" if tied else best, agreement, agreed, len(normed), too_few)


@dataclasses.dataclass(frozen=True)
class RewardConfig:
  """How divergence becomes reward.

  threshold: fraction of the answering references that must give the (unique) top answer for a consensus.
  min_references: references that must have answered for a consensus (None: more than half of them).
  soft_agreement: when True a consensus pays its agreement fraction (2/3 agree -> 0.67) instead of 1.
  partial_credit: reward factor (times agreement) when the target differs from the references' unique top answer
    but its agreement is under the threshold (enough references answered); 0 is the paper's strict rule.
  format_penalty: subtracted from the reward of a malformed auditor output (which gets no divergence reward).
  diversity: spreads the search over failure types: a scoring pair's divergence is divided by n ** diversity, n
    the scoring pairs of its question type in the rollout batch (`spread`); 0 (default) leaves it as is.
  """
  threshold: float = 0.5
  min_references: int | None = None
  soft_agreement: bool = False
  partial_credit: float = 0.0
  format_penalty: float = 0.5
  diversity: float = 0.0

  def __post_init__(self):
    if not 0.0 < self.threshold <= 1.0:
      raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
    if self.min_references is not None and self.min_references < 1:
      raise ValueError(f"min_references must be >= 1 or None, got {self.min_references}")
    if not 0.0 <= self.partial_credit <= 1.0:
      raise ValueError(f"partial_credit must be in [0, 1], got {self.partial_credit}")
    if self.format_penalty < 0:
      raise ValueError(f"format_penalty must be >= 0, got {self.format_penalty}")
    if self.diversity < 0:
      raise ValueError(f"diversity must be >= 0, got {self.diversity}")


def reward(target_answer, reference_answers, well_formed=True, config=RewardConfig()):
  """Reward of one audited pair; returns a dict of all components (floats/bools/strings/ints).

  Keys: reward (total), divergence (reward before the format penalty), format_penalty, consensus (bool: the
  references agree), agreement, answered (references that answered), too_few_references (bool: fewer than
  `min_references` answered), target_disagrees (bool), failure (bool: consensus AND target disagrees, the paper's
  "failure found"), label (the consensus answer, usable as a training label), target (normalised; "" when the
  target failed, None, which never disagrees).
  """
  c = consensus(reference_answers, config.threshold, config.min_references)
  target = normalize_answer(target_answer) if answered(target_answer) else ""
  disagrees = bool(c.label) and answered(target_answer) and target != c.label
  if not well_formed:
    divergence = 0.0
  elif c.agreed and disagrees:
    divergence = c.agreement if config.soft_agreement else 1.0
  elif disagrees and not c.too_few:
    divergence = config.partial_credit * c.agreement
  else:
    divergence = 0.0
  penalty = 0.0 if well_formed else config.format_penalty
  return dict(reward=divergence - penalty, divergence=divergence, format_penalty=penalty, consensus=c.agreed,
              agreement=c.agreement, answered=c.answered, too_few_references=c.too_few,
              target_disagrees=disagrees, failure=bool(well_formed and c.agreed and disagrees), label=c.label,
              target=target)


def batch_rewards(target_answers, reference_answers, well_formed=None, config=RewardConfig()):
  """Vectorised `reward` over N pairs.

  Args:
    target_answers: N answers (strings or numbers; None where the target failed).
    reference_answers: R lists of N answers (one list per reference model; None where a reference failed).
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
  out["answered"] = np.array([row["answered"] for row in rows], np.int32)
  for key in ("consensus", "too_few_references", "target_disagrees", "failure"):
    out[key] = np.array([row[key] for row in rows], bool)
  out["label"] = [row["label"] for row in rows]
  out["target"] = [row["target"] for row in rows]
  return out


def spread(parts, types, valid, diversity):
  """The diversity term: divides the divergence of each valid scoring pair by n ** diversity, n the valid scoring
  pairs of the same type in the batch, so that a failure type found many times pays less per pair than a rare one
  (one type found n times earns n ** (1 - diversity) in all). Returns a copy of `batch_rewards`' parts with
  divergence and reward rescaled and `type_count` [N] (n; 0 for a pair that does not score).

  Args:
    parts: `batch_rewards` output; types: N hashable question types (e.g. a world's skill of each question);
    valid: N bools (dropped pairs neither score nor count); diversity: the exponent (>= 0).
  """
  if len(types) != len(parts["reward"]):
    raise ValueError(f"need one type per pair: {len(types)} types for {len(parts['reward'])} pairs")
  scoring = (parts["divergence"] > 0) & np.asarray(valid, bool)
  counts = collections.Counter(t for t, s in zip(types, scoring) if s)
  type_count = np.array([counts[t] if s else 0 for t, s in zip(types, scoring)], np.int32)
  scale = np.where(scoring, np.maximum(type_count, 1).astype(np.float32) ** -diversity, 1.0)
  out = dict(parts)
  out["divergence"] = (parts["divergence"] * scale).astype(np.float32)
  out["reward"] = (out["divergence"] - parts["format_penalty"]).astype(np.float32)
  out["type_count"] = type_count
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
