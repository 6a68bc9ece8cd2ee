"""Input pipelines: JSONL / folder / TFDS sources, weighted mixing, per-process sharding, exact resume, eval."""
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import data_fixtures
from auditdm_jax.data import jsonl_source
from auditdm_jax.data import tfds_input
from auditdm_jax.models import tokenizer as tokenizer_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PP = ('decode|resize(4)|value_range(-1, 1)|strfmt("answer en {question}", outkey="prefix")'
      '|choice(inkey="answers", outkey="suffix")|keep("image", "prefix", "suffix")')


def _write_jsonl(root, name, n, tag):
  (root / "imgs").mkdir(exist_ok=True)
  rows = []
  for i in range(n):
    Image.fromarray(np.full((6, 6, 3), 10 * i, np.uint8)).save(root / "imgs" / f"{tag}{i}.png")
    rows.append({"image": f"imgs/{tag}{i}.png", "question": f"{tag}{i}", "answers": [f"a{i}", f"b{i}"], "id": i})
  path = root / name
  path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
  return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  root = tmp_path_factory.mktemp("input")
  out = {"a": _write_jsonl(root, "a.jsonl", 10, "A"), "b": _write_jsonl(root, "b.jsonl", 7, "B"),
         "folder": str(root / "imgs"), "data_dir": str(root / "tfds")}
  data_fixtures.build("vqav2", str(root / "manual"), out["data_dir"])
  return out


def _take(inp, n):
  return [next(inp) for _ in range(n)]


def _same(xs, ys):
  return all(set(x) == set(y) and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(xs, ys))


def test_jsonl_source_reads_images_and_fields(files):
  ds, n = jsonl_source.jsonl_dataset(files["a"])
  ex = next(iter(ds.as_numpy_iterator()))
  assert n == 10 and ex["question"] == b"A0" and ex["id"] == 0
  assert ex["image"][:4] == b"\x89PNG" and list(ex["answers"]) == [b"a0", b"b0"]
  _, n1 = jsonl_source.jsonl_dataset(files["a"], process_index=1, process_count=3)
  assert n1 == 3  # rows 1, 4, 7


def test_jsonl_errors_name_file_and_line(tmp_path):
  for name in ("x.png", "y.png"):
    (tmp_path / name).write_bytes(b"png")
  bad = tmp_path / "bad.jsonl"
  cases = [('{"image": "x.png", "q": "a"}\n\n{"image": "y.png"}\n', "row has keys", 3),
           ('{"image": "x.png", "q": {"nested": 1}}\n', "unsupported value", 1),
           ('{"image": "x.png", "q": "a"}\n{"image": "y.png", "q": "b"', "invalid JSON", 2),
           ('{"image": "x.png", "q": "a"}\n[1, 2]\n', "must be a JSON object", 2),
           ('{"q": "a"}\n', "no 'image' path", 1),
           ('{"image": "", "q": "a"}\n', "no 'image' path", 1),
           ('{"image": "x.png", "q": [1]}\n{"image": "y.png", "q": ["b"]}\n', r"is list\[str\], the first row", 2),
           ('{"image": "x.png", "n": 1}\n{"image": "y.png", "n": 1180591620717411303424}\n', "unsupported value", 2)]
  for text, message, line in cases:
    bad.write_text(text)
    with pytest.raises(jsonl_source.SourceError, match=message) as e:
      jsonl_source.jsonl_dataset(str(bad))
    assert (e.value.path, e.value.line) == (str(bad), line), text
  with pytest.raises(jsonl_source.SourceError, match="not found"):
    jsonl_source.jsonl_dataset(str(tmp_path / "missing.jsonl"))


def test_jsonl_rows_with_missing_images_are_counted_and_skipped(files, caplog):
  rows = [json.loads(line) for line in open(files["a"])]
  rows[2]["image"] = "gone/2.png"
  rows[5]["image"] = "gone/5.png"
  path = os.path.join(os.path.dirname(files["a"]), "some_missing.jsonl")
  with open(path, "w") as f:
    f.write("".join(json.dumps(r) + "\n" for r in rows))
  with caplog.at_level(logging.INFO, logger=jsonl_source.__name__):
    ds, n = jsonl_source.jsonl_dataset(path)
  assert n == 8 and [e["id"] for e in ds.as_numpy_iterator()] == [0, 1, 3, 4, 6, 7, 8, 9]
  assert "skipped 2 of 10 rows whose image file is missing (lines 3, 6)" in caplog.text
  with pytest.raises(jsonl_source.SourceError, match="image file not found") as e:
    jsonl_source.jsonl_dataset(path, on_missing_image="error")
  assert e.value.line == 3
  # A training mixture reads the policy from its source dict.
  with pytest.raises(jsonl_source.SourceError, match="image file not found"):
    tfds_input.raw_dataset(dict(jsonl=path, on_missing_image="error"))


def test_folder_source(files):
  ds, n = jsonl_source.folder_dataset(files["folder"])
  ids = [e["image/id"] for e in ds.as_numpy_iterator()]
  assert n == 17 and ids == sorted(ids) and ids[0] == b"A0.png"


def test_train_input_deterministic_and_resumes_exactly_with_mixing(files):
  sources = [{"jsonl": files["a"], "weight": 1.0}, {"jsonl": files["b"], "weight": 3.0}]
  make = lambda state=None: tfds_input.TrainInput(sources, PP, batch_size=4, seed=3, state=state,
                                                   process_index=0, process_count=1)
  inp = make()
  first = _take(inp, 12)
  assert first[0]["image"].shape == (4, 4, 4, 3) and first[0]["image"].dtype == np.float32
  assert inp.state() == {"consumed": 48}
  assert _same(first, _take(make(), 12))  # deterministic in the seed
  resumed = make({"consumed": 20})
  assert _same(first[5:], _take(resumed, 7))  # exact resume mid-epoch
  # Mixing proportions follow the weights (1:3) and repeated epochs reshuffle.
  prefixes = [p.decode() for b in first for p in b["prefix"]]
  frac_b = np.mean([p.startswith("answer en B") for p in prefixes])
  assert 0.6 < frac_b < 0.9
  other_seed = _take(tfds_input.TrainInput(sources, PP, 4, seed=4, process_index=0, process_count=1), 12)
  assert not _same(first, other_seed)


def test_a_running_input_does_not_hang_the_exit(files, tmp_path):
  """A mixture whose pp calls Python (the tok op), still running at exit, hung the interpreter (2 runs of 3)."""
  tok = str(tmp_path / "tok.model")
  tokenizer_lib.train(tok, [f"A{i} B{i}" for i in range(10)] * 20, vocab_size=40, special=())
  pp = f'decode|tok(key="question", model="{tok}")|keep("image", "question")'
  script = (f"from auditdm_jax.data import tfds_input\n"
            f"inp = tfds_input.TrainInput([dict(jsonl={files['a']!r}), dict(jsonl={files['b']!r})], {pp!r}, 64)\n"
            f"print(sum(next(inp)['question'].shape[0] for _ in range(3)))\n")
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO] + sys.path))
  out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env,
                       check=True)
  assert out.stdout.split() == ["192"]


def test_mix_counts_match_the_stream(files):
  sources = [{"jsonl": files["a"], "weight": 1.0}, {"jsonl": files["b"], "weight": 1.0}]
  inp = tfds_input.TrainInput(sources, PP, 8, seed=0, process_index=0, process_count=1)
  prefixes = [p.decode() for b in _take(inp, 4) for p in b["prefix"]]
  counts = tfds_input.mix_counts(32, [1.0, 1.0], seed=0)
  assert counts.tolist() == [sum(p.startswith("answer en A") for p in prefixes),
                             sum(p.startswith("answer en B") for p in prefixes)]


def test_tfds_source_sharded_per_process(files):
  src = {"name": "vqav2", "split": "train", "data_dir": files["data_dir"]}
  pp_ = 'keep("question_id")'
  seen = []
  for p in range(2):
    ds, n = tfds_input.raw_dataset(src, process_index=p, process_count=2)
    ids = [int(e["question_id"]) for e in ds.as_numpy_iterator()]
    assert len(ids) == n
    seen.append(set(ids))
  assert not seen[0] & seen[1] and seen[0] | seen[1] == {1000, 2000, 3000}
  inp = tfds_input.TrainInput([src], pp_, batch_size=2, seed=0, process_index=0, process_count=2)
  assert all(int(q) in seen[0] for b in _take(inp, 3) for q in b["question_id"])
  inp = tfds_input.TrainInput([src], PP, batch_size=2, seed=1,
                              process_index=0, process_count=1)
  batches = _take(inp, 3)
  resumed = tfds_input.TrainInput([src], PP, batch_size=2, seed=1, state={"consumed": 2},
                                  process_index=0, process_count=1)
  assert _same(batches[1:], _take(resumed, 2))


def test_eval_batches_pad_and_mark_valid(files):
  src = {"name": "vqav2", "split": "validation", "data_dir": files["data_dir"]}
  out = list(tfds_input.eval_batches(src, 'decode|keep("question_id", "answers", "image")', 2, 0, 1))
  assert [v for _, v in out] == [2, 1]
  last = out[-1][0]
  assert last["_valid"].tolist() == [True, False] and last["question_id"].shape == (2,)
  assert sorted(int(q) for b, v in out for q in b["question_id"][:v]) == [1000, 2000, 3000]
  assert out[0][0]["answers"].shape == (2, 10)


def test_bad_sources():
  with pytest.raises(ValueError, match="exactly one of name/jsonl/folder"):
    tfds_input.TrainInput([{"jsonl": "a", "name": "b"}], "", 2, process_index=0, process_count=1).dataset()
  with pytest.raises(ValueError, match="not divisible"):
    tfds_input.TrainInput([{"jsonl": "a"}], "", 3, process_index=0, process_count=2)
  for weights in ([0], [float("nan"), 1.0], [float("inf"), 1.0], ["abc"], [-1.0, 2.0]):
    with pytest.raises(ValueError, match="weights must be"):
      tfds_input.TrainInput([{"jsonl": "a", "weight": w} for w in weights], "", 2, process_index=0, process_count=1)


def test_jsonl_empty_lists_bom_and_remote_paths(tmp_path):
  (tmp_path / "x.png").write_bytes(b"png")
  path = tmp_path / "rows.jsonl"
  path.write_text('\ufeff{"image": "x.png", "tags": []}\n{"image": "x.png", "tags": [1, 2]}\n', encoding="utf-8")
  ds, n = jsonl_source.jsonl_dataset(str(path))  # A BOM, and [] beside a list of numbers: one list[num] column.
  rows = list(ds)
  assert n == 2 and rows[1]["tags"].numpy().tolist() == [1.0, 2.0] and rows[0]["tags"].shape == (0,)
  # A file on another filesystem: images relative to it, not to the working directory.
  tf.io.gfile.makedirs("ram://remote/imgs")
  with tf.io.gfile.GFile("ram://remote/imgs/0.png", "wb") as f:
    f.write(b"png")
  with tf.io.gfile.GFile("ram://remote/x.jsonl", "w") as f:
    f.write('{"image": "imgs/0.png", "q": "a"}\n')
  ds, n = jsonl_source.jsonl_dataset("ram://remote/x.jsonl")
  assert n == 1 and next(iter(ds))["image"].numpy() == b"png"  # The bytes of ram://remote/imgs/0.png.
