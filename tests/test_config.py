"""Config loading, `:arg` parsing, `--config.*` overrides, errors and JSON dumps."""
import json
import os

import ml_collections
import pytest

from auditdm_jax import config as config_lib

TOY = os.path.join(os.path.dirname(__file__), "..", "configs", "examples", "toy.py")


def test_parse_arg_types_and_defaults():
  arg = config_lib.parse_arg("res=448,final", res=224, final=False, name="x", sizes=(1, 2))
  assert arg.res == 448 and isinstance(arg.res, int)
  assert arg.final is True
  assert arg.name == "x"
  assert config_lib.parse_arg("sizes=(3,4,5)", sizes=(1, 2)).sizes == (3, 4, 5)


def test_parse_arg_unknown_key_names_it():
  with pytest.raises(config_lib.ConfigError, match="'resolution'"):
    config_lib.parse_arg("resolution=448", res=224)


def test_parse_arg_bad_type():
  with pytest.raises(config_lib.ConfigError, match="res: expected int"):
    config_lib.parse_arg("res=big", res=224)


def test_load_with_arg_and_overrides():
  c = config_lib.resolve(TOY + ":res=448,final=True", ["lr=3e-6", "input.batch_size=32", "schedule.warmup_percent=0.2"])
  assert c.res == 448 and c.input.split == "train"
  assert c.lr == pytest.approx(3e-6) and isinstance(c.lr, float)
  assert c.input.batch_size == 32 and isinstance(c.input.batch_size, int)
  assert c.schedule.warmup_percent == pytest.approx(0.2)
  c = config_lib.resolve(TOY, ["input.batch_size=1e3", "lr=1"])
  assert c.input.batch_size == 1000 and type(c.input.batch_size) is int and c.lr == 1.0


@pytest.mark.parametrize("item, pattern", [
    ("lrr=1", "unknown config key 'lrr'"),
    ("input.bs=1", "unknown config key 'input.bs'"),
    ("input.batch_size=many", "input.batch_size: expected int"),
    ("input.batch_size=2.5", "input.batch_size: expected int"),  # Not truncated to 2.
    ("input.batch_size=True", "input.batch_size: expected int"),
    ("input=3", "is a config block"),
    ("lr", "not of the form key=value"),
    ("tags=5", "expected a tuple"),
])
def test_override_errors_name_the_key(item, pattern):
  with pytest.raises(config_lib.ConfigError, match=pattern):
    config_lib.resolve(TOY, [item])


def test_missing_file_and_missing_get_config(tmp_path):
  with pytest.raises(config_lib.ConfigError, match="not found"):
    config_lib.load(str(tmp_path / "nope.py"))
  bad = tmp_path / "bad.py"
  bad.write_text("X = 1\n")
  with pytest.raises(config_lib.ConfigError, match="get_config"):
    config_lib.load(str(bad))


def test_dump_round_trip(tmp_path):
  c = config_lib.resolve(TOY, ["lr=0.5"])
  path = config_lib.dump(c, str(tmp_path))
  with open(path) as f:
    data = json.load(f)
  assert data["lr"] == 0.5 and data["input"]["batch_size"] == 256 and data["tags"] == ["a", "b"]
  assert ml_collections.ConfigDict(data).schedule.decay_type == "cosine"
