"""The `procedural` generator: captions -> images, edit commands on images, typed per-item errors."""
import numpy as np
import pytest

from auditdm_jax.worlds.shapes import scenes as shapes
from auditdm_jax.imagegen import errors
from auditdm_jax.worlds.shapes import procedural


@pytest.fixture(name="gen")
def _gen():
  return procedural.ProceduralGenerator(image_size=64)


def test_generate_renders_captions_and_errors_per_item(gen):
  out = gen.generate(["A large red circle in the top left and a small blue star in the center.", "a dog",
                      "a circle in the center and a star in the middle"], seeds=[0, 1, 2])
  assert out[0].shape == (64, 64, 3) and out[0].dtype == np.uint8
  assert gen.scene_of(out[0]) == shapes.Scene((shapes.Obj("circle", "red", "large", 0, 0),
                                               shapes.Obj("star", "blue", "small", 1, 1)))
  assert isinstance(out[1], procedural.SceneTextError) and out[1].kind == "parse"
  assert isinstance(out[2], errors.GenerationError) and out[2].kind == "conflict"


def test_generate_seeds_fill_unspecified_attributes(gen):
  a = gen.generate(["a star"] * 2, seeds=[5, 5])
  b = gen.generate(["a star"], seeds=[6])
  np.testing.assert_array_equal(a[0], a[1])
  assert gen.scene_of(a[0]).objects[0].shape == "star"
  assert len(gen.generate(["a star", "a circle"], seeds=3)) == 2
  with pytest.raises(ValueError):
    gen.generate(["a star"], seeds=[1, 2])
  assert isinstance(b[0], np.ndarray)


def test_edit_recovers_scene_from_pixels(gen):
  src = gen.render(shapes.Scene((shapes.Obj("circle", "red", "small", 0, 0),
                                 shapes.Obj("square", "green", "large", 2, 2))))
  out = gen.edit([src] * 5, ["make the red circle blue", "remove the triangle", "move the square to the top left",
                             "add a small yellow star in the center", "please fly"])
  assert gen.scene_of(out[0]).at(0, 0).color == "blue"
  assert out[1].kind == "reference" and out[2].kind == "conflict" and out[4].kind == "parse"
  assert gen.scene_of(out[3]).at(1, 1) == shapes.Obj("star", "yellow", "small", 1, 1)
  noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
  bad = gen.edit([noise], ["make the red circle blue"])
  assert isinstance(bad[0], procedural.UnknownSourceImage)
