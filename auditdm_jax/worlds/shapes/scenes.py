"""The shapes world: scene grammar, seeded scene sampler and an anti-aliased renderer.

A scene is a few objects on a 3x3 grid; every object has a shape, a colour, a size, a texture and a cell. Each cell
holds at most one object (the overlap rule), so a scene is fully described by its list of objects and every
caption, edit command and question in the world's language (`shapes_language.py`) has exact ground truth.

Scenes are plain frozen dataclasses; `Scene.to_json()` / `Scene.from_json()` round-trip them losslessly.
"""
import dataclasses
import functools
import json

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star")
COLORS = ("red", "green", "blue", "yellow", "purple", "orange")
SIZES = ("small", "large")
TEXTURES = ("plain", "striped")
ROWS = ("top", "center", "bottom")
COLS = ("left", "center", "right")
GRID = 3
ATTRIBUTES = ("shape", "color", "size", "texture")

RGB = {
    "red": (220, 40, 40),
    "green": (30, 160, 60),
    "blue": (40, 80, 225),
    "yellow": (240, 205, 20),
    "purple": (140, 50, 190),
    "orange": (250, 130, 10),
}
BACKGROUND = (235, 235, 235)
# Radius of an object's bounding circle as a fraction of the cell side.
RADIUS = {"small": 0.24, "large": 0.44}


def position_name(row, col):
  """Canonical cell name: "top left", "center", "bottom center", ..."""
  if row == 1 and col == 1:
    return "center"
  return f"{ROWS[row]} {COLS[col]}"


POSITIONS = tuple(position_name(r, c) for r in range(GRID) for c in range(GRID))


@dataclasses.dataclass(frozen=True)
class Obj:
  """One object. `row`, `col` index the 3x3 grid from the top left (row 0 = top, col 0 = left)."""
  shape: str
  color: str
  size: str
  row: int
  col: int
  texture: str = "plain"

  def __post_init__(self):
    for name, allowed in (("shape", SHAPES), ("color", COLORS), ("size", SIZES), ("texture", TEXTURES)):
      if getattr(self, name) not in allowed:
        raise ValueError(f"Obj.{name}={getattr(self, name)!r} is not one of {allowed}")
    for name in ("row", "col"):
      if not (isinstance(getattr(self, name), int) and 0 <= getattr(self, name) < GRID):
        raise ValueError(f"Obj.{name}={getattr(self, name)!r} must be an int in [0, {GRID})")

  @property
  def cell(self):
    return (self.row, self.col)

  @property
  def position(self):
    return position_name(self.row, self.col)

  def replace(self, **kw):
    return dataclasses.replace(self, **kw)


@dataclasses.dataclass(frozen=True)
class Scene:
  """An ordered tuple of objects in distinct cells (objects are kept sorted by cell, reading order)."""
  objects: tuple = ()

  def __post_init__(self):
    objs = tuple(sorted(self.objects, key=lambda o: o.cell))
    cells = [o.cell for o in objs]
    if len(set(cells)) != len(cells):
      raise ValueError(f"two objects share a cell: {cells}")
    object.__setattr__(self, "objects", objs)

  def __len__(self):
    return len(self.objects)

  def at(self, row, col):
    """The object in cell (row, col) or None."""
    for o in self.objects:
      if o.cell == (row, col):
        return o
    return None

  def free_cells(self):
    used = {o.cell for o in self.objects}
    return [(r, c) for r in range(GRID) for c in range(GRID) if (r, c) not in used]

  def to_dict(self):
    return {"objects": [dataclasses.asdict(o) for o in self.objects]}

  @classmethod
  def from_dict(cls, d):
    return cls(tuple(Obj(**o) for o in d["objects"]))

  def to_json(self):
    return json.dumps(self.to_dict(), sort_keys=True)

  @classmethod
  def from_json(cls, s):
    return cls.from_dict(json.loads(s))


def check_object_counts(min_objects, max_objects):
  if not 0 <= min_objects <= max_objects <= GRID * GRID:
    raise ValueError(f"need 0 <= min_objects <= max_objects <= {GRID * GRID}, got {min_objects}, {max_objects}")


def sample_scene(rng, min_objects=1, max_objects=4, texture_prob=0.0):
  """A random scene. `rng`: np.random.Generator or int seed. Attributes are uniform, cells distinct."""
  rng = np.random.default_rng(rng)
  check_object_counts(min_objects, max_objects)
  n = int(rng.integers(min_objects, max_objects + 1))
  cells = rng.choice(GRID * GRID, size=n, replace=False)
  objs = []
  for cell in cells:
    objs.append(Obj(shape=SHAPES[rng.integers(len(SHAPES))], color=COLORS[rng.integers(len(COLORS))],
                    size=SIZES[rng.integers(len(SIZES))], row=int(cell) // GRID, col=int(cell) % GRID,
                    texture="striped" if rng.random() < texture_prob else "plain"))
  return Scene(tuple(objs))


def _polygon(shape, cx, cy, r):
  """Vertices of a polygonal shape with bounding radius r centred at (cx, cy) (pixel units, y down)."""
  if shape == "square":
    h = r * 0.8  # Side 1.6 r: a square of radius r would look much heavier than the circle.
    return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
  if shape == "triangle":
    # Equilateral, pointing up, centred on its bounding box so it sits mid-cell.
    h = r * 1.75
    return [(cx, cy - h / 2), (cx + h / np.sqrt(3), cy + h / 2), (cx - h / np.sqrt(3), cy + h / 2)]
  if shape == "star":
    pts = []
    for k in range(10):
      rad = r if k % 2 == 0 else r * 0.45
      a = -np.pi / 2 + k * np.pi / 5
      pts.append((cx + rad * np.cos(a), cy + rad * np.sin(a)))
    return pts
  raise ValueError(f"not a polygon shape: {shape}")


def _draw_shape(draw, shape, cx, cy, r, fill):
  if shape == "circle":
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
  else:
    draw.polygon(_polygon(shape, cx, cy, r), fill=fill)


def render(scene, size=64, supersample=4, background=BACKGROUND):
  """Renders `scene` to an RGB image uint8 [size, size, 3], anti-aliased by drawing at `supersample`x and
  downsampling with a box filter."""
  if not 16 <= size <= 512:
    raise ValueError(f"image size must be in [16, 512], got {size}")
  big = size * supersample
  img = Image.new("RGB", (big, big), tuple(background))
  cell = big / GRID
  for o in scene.objects:
    cx, cy, r = (o.col + 0.5) * cell, (o.row + 0.5) * cell, RADIUS[o.size] * cell
    if o.texture == "plain":
      _draw_shape(ImageDraw.Draw(img), o.shape, cx, cy, r, RGB[o.color])
      continue
    # Striped: the shape's mask, minus horizontal bands of background colour.
    mask = Image.new("L", (big, big), 0)
    _draw_shape(ImageDraw.Draw(mask), o.shape, cx, cy, r, 255)
    period = max(2.0, 2 * r / 4.5)
    ys = np.arange(big)[:, None]
    bands = ((ys - (cy - r)) % period) < period / 2
    m = np.asarray(mask) * np.broadcast_to(bands, (big, big))
    layer = Image.new("RGB", (big, big), RGB[o.color])
    img.paste(layer, (0, 0), Image.fromarray(m.astype(np.uint8)))
  img = img.resize((size, size), Image.Resampling.BOX)
  return np.asarray(img, dtype=np.uint8)


_CANDIDATES = tuple((s, c, z, t) for s in SHAPES for c in COLORS for z in SIZES for t in TEXTURES)


def _cell_box(row, col, size):
  """Pixel box [y0, y1, x0, x1) of a cell, shrunk by a pixel so partial border pixels are left out."""
  y0, y1 = int(np.ceil(row * size / GRID)) + 1, int(np.floor((row + 1) * size / GRID)) - 1
  x0, x1 = int(np.ceil(col * size / GRID)) + 1, int(np.floor((col + 1) * size / GRID)) - 1
  return y0, y1, x0, x1


@functools.lru_cache(maxsize=4)
def _templates(size, supersample, background):
  """Every candidate object rendered in every cell: float32 [len(_CANDIDATES) + 1, 9, h, w, 3] (last = empty)."""
  crops = []
  for cand in _CANDIDATES + (None,):
    objs = () if cand is None else tuple(Obj(*cand[:3], r, c, cand[3]) for r in range(GRID) for c in range(GRID))
    img = render(Scene(objs), size, supersample, background).astype(np.float32)
    per_cell = []
    for r in range(GRID):
      for c in range(GRID):
        y0, y1, x0, x1 = _cell_box(r, c, size)
        per_cell.append(img[y0:y1, x0:x1])
    h = min(p.shape[0] for p in per_cell)
    w = min(p.shape[1] for p in per_cell)
    crops.append(np.stack([p[:h, :w] for p in per_cell]))
  return np.stack(crops)


def parse_image(image, supersample=4, background=BACKGROUND, tolerance=3.0):
  """Recovers the scene of an image this renderer drew (the inverse of `render`).

  Objects never cross cell borders, so each cell is matched on its own against every candidate object rendered
  in that cell. Lossless copies (PNG) of rendered images are recovered exactly; anything else raises ValueError.

  Args:
    image: uint8 [H, H, 3] from `render(scene, H, supersample, background)`.
    tolerance: largest mean absolute pixel difference accepted for a cell.
  """
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] != image.shape[1]:
    raise ValueError(f"expected a square RGB image [H, H, 3], got shape {image.shape}")
  size = image.shape[0]
  templates = _templates(size, supersample, tuple(background))
  h, w = templates.shape[2:4]
  objs = []
  for k in range(GRID * GRID):
    r, c = divmod(k, GRID)
    y0, _, x0, _ = _cell_box(r, c, size)
    crop = image[y0:y0 + h, x0:x0 + w].astype(np.float32)
    dist = np.abs(templates[:, k] - crop).mean(axis=(1, 2, 3))
    best = int(np.argmin(dist))
    if dist[best] > tolerance:
      raise ValueError(f"the {position_name(r, c)} cell does not look like a rendered shapes-world cell "
                       f"(distance {dist[best]:.1f})")
    if best < len(_CANDIDATES):
      shape, color, sz, tex = _CANDIDATES[best]
      objs.append(Obj(shape, color, sz, r, c, tex))
  return Scene(tuple(objs))
