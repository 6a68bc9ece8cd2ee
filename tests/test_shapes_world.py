"""Shapes world: scene grammar, sampler, renderer and its inverse."""
import io

import numpy as np
import pytest
from PIL import Image

from auditdm_jax.worlds.shapes import scenes as shapes


def test_obj_and_scene_validation():
  with pytest.raises(ValueError, match="shape"):
    shapes.Obj("hexagon", "red", "small", 0, 0)
  with pytest.raises(ValueError, match="row"):
    shapes.Obj("circle", "red", "small", 3, 0)
  a = shapes.Obj("circle", "red", "small", 1, 1)
  with pytest.raises(ValueError, match="share a cell"):
    shapes.Scene((a, a.replace(color="blue")))


def test_scene_sorted_and_json_roundtrip():
  s = shapes.Scene((shapes.Obj("star", "blue", "large", 2, 2, "striped"), shapes.Obj("circle", "red", "small", 0, 1)))
  assert [o.cell for o in s.objects] == [(0, 1), (2, 2)]
  assert shapes.Scene.from_json(s.to_json()) == s
  assert s.objects[0].position == "top center" and s.objects[1].position == "bottom right"
  assert shapes.position_name(1, 1) == "center" and len(shapes.POSITIONS) == 9
  assert s.at(0, 1).shape == "circle" and s.at(1, 1) is None and len(s.free_cells()) == 7


def test_sampler_seeded_and_in_range():
  a = [shapes.sample_scene(np.random.default_rng(7), 1, 4) for _ in range(2)]
  assert a[0] == a[1]
  rng = np.random.default_rng(0)
  counts = [len(shapes.sample_scene(rng, 1, 4)) for _ in range(300)]
  assert min(counts) == 1 and max(counts) == 4
  with pytest.raises(ValueError):
    shapes.sample_scene(0, 5, 2)


def test_render_shape_dtype_and_colours():
  s = shapes.Scene((shapes.Obj("square", "red", "large", 1, 1),))
  img = shapes.render(s, 96)
  assert img.shape == (96, 96, 3) and img.dtype == np.uint8
  assert tuple(img[48, 48]) == shapes.RGB["red"]
  assert tuple(img[2, 2]) == shapes.BACKGROUND
  # Anti-aliased: the square's edge has intermediate values.
  row = img[48, :, 1].astype(int)
  assert len(set(row.tolist())) > 2
  with pytest.raises(ValueError):
    shapes.render(s, 8)


@pytest.mark.parametrize("size", [48, 64, 96, 128])
def test_parse_image_inverts_render_through_png(size):
  rng = np.random.default_rng(size)
  for _ in range(15):
    s = shapes.sample_scene(rng, 0, 9, texture_prob=0.3)
    buf = io.BytesIO()
    Image.fromarray(shapes.render(s, size)).save(buf, format="PNG")
    assert shapes.parse_image(np.asarray(Image.open(buf))) == s


def test_parse_image_rejects_other_images():
  with pytest.raises(ValueError):
    shapes.parse_image(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
  with pytest.raises(ValueError):
    shapes.parse_image(np.zeros((64, 32, 3), np.uint8))
