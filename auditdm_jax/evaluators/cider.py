"""CIDEr-D for captioning (COCO captions), computed exactly as the COCO caption toolkit's `Cider` scorer.

Per image: TF-IDF vectors of 1..4-grams (IDF from the references of the evaluated corpus), per n the clipped
cosine similarity to each reference times a Gaussian length penalty (σ = 6, on the toolkit's length count),
averaged over n and references, times 10. Captions are tokenised by `tokenize` (lower case, PTB-style
punctuation removal) instead of the toolkit's Java PTB tokenizer.
"""
import collections
import math
import re

from auditdm_jax.evaluators import common

_PUNCT_TOKENS = {"''", "'", "``", "`", '"', "(", ")", "[", "]", "{", "}", "-lrb-", "-rrb-", "-lcb-", "-rcb-", ".",
                 "?", "!", ",", ":", "-", "--", "...", ";"}


def tokenize(text):
  """Lower-cased words with punctuation split off and dropped (approximating the PTB tokenizer + filter; numbers
  such as 3.5 and 1,000 stay one token, as PTB keeps them)."""
  text = re.sub(r"((?<!\d)[.,]|[.,](?!\d)|[!?;:\"()\[\]{}]|--|-(?=\s|$)|(?<=\s)-)", r" \1 ", text.lower())
  return " ".join(t for t in text.split() if t not in _PUNCT_TOKENS)


def _ngrams(sentence, n=4):
  words = sentence.split()
  return collections.Counter(tuple(words[i:i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


def cider_d(predictions, references, n=4, sigma=6.0):
  """CIDEr-D of tokenised `predictions` [N] (str) against `references` [N] (lists of str).

  Returns (corpus score, per-image scores [N]); equal to pycocoevalcap's `Cider().compute_score`.
  """
  if len(predictions) != len(references) or not predictions:
    raise ValueError(f"cider_d needs as many reference lists as predictions (> 0), got "
                     f"{len(predictions)} and {len(references)}")
  refs = [[_ngrams(r, n) for r in rs] for rs in references]
  if any(not rs for rs in refs):
    raise ValueError("every image needs at least one reference caption")
  df = collections.Counter(g for rs in refs for g in set().union(*rs))
  log_num_docs = math.log(len(refs))

  def vectorise(counts):
    vec = [{} for _ in range(n)]
    for gram, tf in counts.items():
      vec[len(gram) - 1][gram] = tf * (log_num_docs - math.log(max(1.0, df[gram])))
    norms = [math.sqrt(sum(v * v for v in vec[k].values())) for k in range(n)]
    # The toolkit's "length" is the number of bigrams; kept for equality with it.
    length = sum(tf for gram, tf in counts.items() if len(gram) == 2)
    return vec, norms, length

  scores = []
  for pred, rs in zip(predictions, refs):
    vec, norm, length = vectorise(_ngrams(pred, n))
    total = 0.0
    for r in rs:
      vec_r, norm_r, length_r = vectorise(r)
      penalty = math.exp(-((length - length_r) ** 2) / (2 * sigma ** 2))
      for k in range(n):
        val = sum(min(v, vec_r[k].get(g, 0.0)) * vec_r[k].get(g, 0.0) for g, v in vec[k].items())
        if norm[k] and norm_r[k]:
          val /= norm[k] * norm_r[k]
        total += val * penalty
    scores.append(total / n / len(rs) * 10.0)
  return sum(scores) / len(scores), scores


class Evaluator(common.BaseEvaluator):
  """COCO captions. The pp_fn must keep `captions` (the reference captions) and `image/id`."""
  fields = ("image/id", "captions")

  def per_example(self, record, extra):
    return {}

  def aggregate(self, records):
    score, _ = cider_d([tokenize(r["prediction"]) for r in records],
                       [[tokenize(c) for c in r["captions"]] for r in records])
    return {"cider": score}
