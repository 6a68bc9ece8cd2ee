"""The demo models shipped with the package are what their config trains (issue #12: a test checks the shipped
files' digest against the config that produced them)."""
import os

import pytest

from auditdm_jax import config as config_lib
from auditdm_jax import io
from auditdm_jax.tools import ship_demo_models
from auditdm_jax.worlds.shapes import pretrain
from auditdm_jax.worlds.shapes import shipped

FAST = ["vqa.num_scenes=40", "auditor_data.num_scenes=12", "tokenizer.num_scenes=150", "base.steps=3",
        "target.steps=3", "auditor.steps=3"]


def _check(folder):
  """Every file of the set as its shipped.json lists it, and each model's digest the one its config gives it."""
  manifest = io.read_json(os.path.join(folder, shipped.MANIFEST))
  assert shipped.file_hashes(folder) == manifest["files"]
  cfg = config_lib.resolve(config_lib.find_spec(manifest["config"]), manifest["overrides"])
  keys = pretrain.digests(cfg)
  assert shipped.folder_digests(folder, keys) == keys
  return cfg


def test_shipped_sets_are_what_their_configs_train():
  assert shipped.sets(), "no shipped demo models"
  for folder in shipped.sets():
    _check(folder)


def test_the_default_demo_finds_every_model_shipped():
  keys = pretrain.digests(config_lib.load(config_lib.find_spec("configs/demo/shapes.py")))
  assert shipped.find_tokenizer(keys.pop("tokenizer"))
  assert all(shipped.find_model(d) for d in keys.values()), keys


def test_ship_copies_a_workdirs_models_and_refuses_another_configs(tmp_path):
  cfg = config_lib.resolve(config_lib.find_spec("configs/demo/shapes.py:fast"), FAST)
  pretrain.pretrain_all(cfg, str(tmp_path / "w"))
  folder = ship_demo_models.ship(str(tmp_path / "w"), "s", "configs/demo/shapes.py:fast", FAST, root=str(tmp_path))
  assert _check(folder).to_dict() == cfg.to_dict()
  assert sorted(os.listdir(folder)) == ["auditor", "base", "ref0", "ref1", "shipped.json", "target",
                                        "tokenizer.json", "tokenizer.model"]
  with open(os.path.join(folder, "ref0", "params.npz"), "ab") as f:
    f.write(b"\0")  # A changed file no longer matches the set's hashes.
  with pytest.raises(AssertionError):
    _check(folder)
  with pytest.raises(ValueError, match=r"\['auditor', 'base', 'ref0', 'ref1', 'target', 'tokenizer'\] not trained"):
    ship_demo_models.ship(str(tmp_path / "w"), "t", "configs/demo/shapes.py:fast", FAST + ["seed=1"],
                          root=str(tmp_path))
  with pytest.raises(FileExistsError):
    ship_demo_models.ship(str(tmp_path / "w"), "s", "configs/demo/shapes.py:fast", FAST, root=str(tmp_path))
