"""Can the shapes demo's decoder learn spatial relations at all? A symbolic probe: text only, no image, no parsing.

Each example lists 2-4 objects as tokens `<obj> colour shape row col` (random order; colour + shape unique, so
each object has a name), then asks `<q> colourA shapeA relation colourB shapeB <ans>`; the decoder (our Gemma
with the demo's width and depth, trained with the demo's optimizer) answers yes / no at `<ans>`. Relations and
answers are drawn as `worlds/shapes/tasks.py` draws them (yes and no about equally often). `--ground W` adds a
grounding target with weight W: at each name's last token, the named object's cell. `--chain` makes the answer a
chain of three tokens, `cellA cellB yes|no` (trained as language: each token predicted from the ones before it, the
chain attending causally), and scores the answer the decoder reaches when it writes its own chain (greedy).
`--one_token` gives each object one position, the sum of its five tokens' embeddings (as the demo's image tokens
hold one cell each), instead of five.

  python -m auditdm_jax.tools.relation_probe                          # the demo decoder (width 128, depth 3)
  python -m auditdm_jax.tools.relation_probe --ground 0.5 --seeds 0,1
  python -m auditdm_jax.tools.relation_probe --chain --seeds 0,1
  python -m auditdm_jax.tools.relation_probe --one_token --ground 0.5 --seeds 0,1,2
  python -m auditdm_jax.tools.relation_probe --depth 6          # or --lr 5e-4, --heads 8 --kv_heads 8

Prints one JSON line: per seed, held-out accuracy and answer loss every `--eval_every` steps; chance is 50%
(and ln 2 = 0.693).
"""
import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax

from auditdm_jax import progress
from auditdm_jax.models import gemma
from auditdm_jax.tools import machine
from auditdm_jax.worlds.shapes import language as lang
from auditdm_jax.worlds.shapes import pretrain
from auditdm_jax.worlds.shapes import scenes as shapes

NUM_COLORS, NUM_SHAPES, GRID, MAX_OBJECTS = len(shapes.COLORS), len(shapes.SHAPES), shapes.GRID, 4
RELATIONS = lang.RELATIONS  # Relation k is token REL0 + k.
# Token ids: 0 pad, then colours, shapes, rows, columns, relations, the markers, answers and cells.
COLOR0 = 1
SHAPE0 = COLOR0 + NUM_COLORS
ROW0 = SHAPE0 + NUM_SHAPES
COL0 = ROW0 + GRID
REL0 = COL0 + GRID
OBJ, QUESTION, ANSWER, YES, NO = range(REL0 + len(RELATIONS), REL0 + len(RELATIONS) + 5)
CELL0 = NO + 1
VOCAB = CELL0 + GRID * GRID
OBJ_LEN, Q_LEN = 5, 7
NAME_ENDS = (-5, -2)  # Positions of shapeA and shapeB from the end of a sequence.


def sample(rng, n):
  """n examples -> tokens int32 [n, MAX_OBJECTS * OBJ_LEN + Q_LEN] (objects, padding, question), answer [n]
  (YES / NO), cells [n, 2] (CELL0 + the cell of object A and of object B)."""
  k = rng.integers(2, MAX_OBJECTS + 1, n)
  cells = np.argsort(rng.random((n, GRID * GRID)), 1)[:, :MAX_OBJECTS]
  names = rng.integers(0, NUM_COLORS * NUM_SHAPES, (n, MAX_OBJECTS))
  live = np.arange(MAX_OBJECTS)[None] < k[:, None]
  while True:  # Redraw rows where two live objects share a name.
    dup = ((names[:, :, None] == names[:, None, :]) & live[:, :, None] & live[:, None, :]).sum((1, 2)) > k
    if not dup.any():
      break
    names[dup] = rng.integers(0, NUM_COLORS * NUM_SHAPES, (dup.sum(), MAX_OBJECTS))
  rows, cols = cells // GRID, cells % GRID
  ia = rng.integers(0, k)
  ib = (ia + 1 + rng.integers(0, k - 1)) % k
  at = lambda a, i: np.take_along_axis(a, i[:, None], 1)[:, 0]
  (ra, ca, na), (rb, cb, nb) = [(at(rows, i), at(cols, i), at(names, i)) for i in (ia, ib)]
  holds = lang.relations_hold(ra, ca, rb, cb)
  truth = np.stack([holds[r] for r in RELATIONS], 1)
  want = rng.random(n) < 0.5
  fits = truth == want[:, None]
  fits[~fits.any(1)] = True  # No relation gives the drawn answer: any relation.
  rel = np.argmax(np.where(fits, rng.random((n, len(RELATIONS))), -1), 1)
  answer = np.where(at(truth, rel), YES, NO)
  order = np.argsort(np.where(live, rng.random((n, MAX_OBJECTS)), 2), 1)  # Live objects first, shuffled.
  obj = np.stack([np.full((n, MAX_OBJECTS), OBJ), COLOR0 + names // NUM_SHAPES, SHAPE0 + names % NUM_SHAPES,
                  ROW0 + rows, COL0 + cols], -1)
  obj = np.where(live[..., None], obj, 0)
  obj = np.take_along_axis(obj, order[..., None], 1).reshape(n, -1)
  question = np.stack([np.full(n, QUESTION), COLOR0 + na // NUM_SHAPES, SHAPE0 + na % NUM_SHAPES, REL0 + rel,
                       COLOR0 + nb // NUM_SHAPES, SHAPE0 + nb % NUM_SHAPES, np.full(n, ANSWER)], 1)
  cells_ab = CELL0 + np.stack([ra * GRID + ca, rb * GRID + cb], 1)
  return np.concatenate([obj, question], 1).astype(np.int32), answer.astype(np.int32), cells_ab.astype(np.int32)


def forward(model, params, tokens, causal=False, one_token=False):
  """Logits [B, T, V] of examples [B, T] (a chain may follow the question): objects and question attend to each
  other (or causally), a chain after them causally. With `one_token` each object's five tokens are summed into
  one position, so T shrinks by 4 * MAX_OBJECTS (the question keeps its offsets from the end)."""
  x = model.apply({"params": params}, tokens, method=model.embed_tokens)
  valid = tokens != 0
  if one_token:
    split = MAX_OBJECTS * OBJ_LEN
    objects = x[:, :split].reshape(x.shape[0], MAX_OBJECTS, OBJ_LEN, -1).sum(2)
    x = jnp.concatenate([objects, x[:, split:]], 1)
    valid = jnp.concatenate([valid[:, :split:OBJ_LEN], valid[:, split:]], 1)
  prompt_len = x.shape[1] - tokens.shape[1] + MAX_OBJECTS * OBJ_LEN + Q_LEN
  q, k = np.arange(x.shape[1])[:, None], np.arange(x.shape[1])[None]
  allowed = k <= q if causal else (k <= q) | ((q < prompt_len) & (k < prompt_len))
  mask = valid[:, None, :] & valid[:, :, None] & jnp.asarray(allowed)
  return model.apply({"params": params}, x, jnp.cumsum(valid, 1) - 1, mask)[0]


def run(seed, width=128, depth=3, heads=4, kv_heads=1, steps=3000, batch=64, lr=2e-3, ground=0.0, causal=False,
        chain=False, one_token=False, eval_every=500, eval_size=2000):
  """Trains one decoder; -> [(step, held-out accuracy, held-out answer loss)] every `eval_every` steps and at the
  end."""
  model = gemma.Model(pretrain.model_config(VOCAB, width=width, depth=depth, heads=heads, kv_heads=kv_heads).llm)
  logits = lambda params, tokens: forward(model, params, tokens, causal, one_token)

  def loss_fn(params, tokens, answer, cells):
    if chain:  # Targets cellA, cellB, answer at <ans>, cellA, cellB.
      out = logits(params, jnp.concatenate([tokens, cells], 1))[:, -3:]
      return optax.softmax_cross_entropy_with_integer_labels(out, jnp.concatenate([cells, answer[:, None]], 1)).mean()
    out = logits(params, tokens)
    loss = optax.softmax_cross_entropy_with_integer_labels(out[:, -1], answer).mean()
    grounding = optax.softmax_cross_entropy_with_integer_labels(out[:, jnp.array(NAME_ENDS)], cells).mean()
    return loss + ground * grounding

  def answer_logits(params, tokens):
    """The answer's logits [B, V]; with `chain`, after the decoder wrote cellA and cellB itself (greedy)."""
    for _ in range(2 if chain else 0):
      tokens = jnp.concatenate([tokens, logits(params, tokens)[:, -1:].argmax(-1).astype(tokens.dtype)], 1)
    return logits(params, tokens)[:, -1]

  tx, _ = pretrain.make_optimizer(lr, steps)
  params = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, 1, width)), jnp.zeros((1, 1), jnp.int32),
                      jnp.ones((1, 1, 1), bool))["params"]
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, tokens, answer, cells):
    grads = jax.grad(loss_fn)(params, tokens, answer, cells)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  @jax.jit
  def evaluate(params, tokens, answer):
    out = answer_logits(params, tokens)
    return (out.argmax(-1) == answer).mean(), optax.softmax_cross_entropy_with_integer_labels(out, answer).mean()

  held_tokens, held_answer, _ = sample(np.random.default_rng([seed, 1]), eval_size)
  rng = np.random.default_rng([seed, 0])
  curve = []
  for i in progress.track(range(steps), desc=f"relation probe seed {seed}", unit="step"):
    params, opt_state = step(params, opt_state, *sample(rng, batch))
    if (i + 1) % eval_every == 0 or i + 1 == steps:
      curve.append((i + 1, *(round(float(v), 4) for v in evaluate(params, held_tokens, held_answer))))
  return curve


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--width", type=int, default=128)
  parser.add_argument("--depth", type=int, default=3)
  parser.add_argument("--heads", type=int, default=4, help="query heads")
  parser.add_argument("--kv_heads", type=int, default=1, help="key/value heads (1: multi-query, the demo's)")
  parser.add_argument("--steps", type=int, default=3000)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--lr", type=float, default=2e-3)
  parser.add_argument("--ground", type=float, default=0.0, help="weight of the grounding target (0: none)")
  parser.add_argument("--causal", action="store_true", help="causal attention (default: bidirectional prefix)")
  parser.add_argument("--chain", action="store_true", help="answer as the chain `cellA cellB yes|no`")
  parser.add_argument("--one_token", action="store_true", help="each object one position (summed embeddings)")
  parser.add_argument("--seeds", default="0")
  parser.add_argument("--eval_every", type=int, default=500)
  args = parser.parse_args(argv)
  if min(args.width, args.depth, args.heads, args.kv_heads, args.steps, args.batch, args.eval_every) < 1:
    parser.error("width, depth, heads, kv_heads, steps, batch and eval_every must be positive")
  try:  # The decoder's own check of the head layout.
    pretrain.model_config(VOCAB, width=args.width, depth=args.depth, heads=args.heads, kv_heads=args.kv_heads)
  except ValueError as e:
    parser.error(str(e))
  if args.ground < 0:
    parser.error(f"--ground is a loss weight >= 0, got {args.ground}")
  if args.chain and args.ground:
    parser.error("--chain and --ground are two ways to supervise the cells: give one")
  try:
    seeds = [int(s) for s in args.seeds.split(",")]
  except ValueError:
    parser.error(f"--seeds takes comma-separated integers, got {args.seeds!r}")
  settings = {k: v for k, v in vars(args).items() if k != "seeds"}
  runs = [dict(seed=s, curve=run(s, **settings)) for s in seeds]
  final = [r["curve"][-1][1] for r in runs]
  result = dict(probe="relation", **settings, runs=runs, final_mean=round(float(np.mean(final)), 4),
                final_std=round(float(np.std(final)), 4), machine=machine.load())
  print(json.dumps(result))
  return result


if __name__ == "__main__":
  main()
