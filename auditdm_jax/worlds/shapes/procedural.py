"""`procedural`: the shapes world's embedded image generator (no model, no service, deterministic).

- `generate(prompts, seeds)`: each prompt is a caption in the world's language, parsed to a scene (attributes the
  caption leaves out are drawn from the seed) and rendered.
- `edit(images, instructions, seeds)`: the source scene is recovered from the image's pixels
  (`shapes.parse_image`, exact for any lossless copy of a rendered image, e.g. a PNG from a dataset), the edit
  command is applied to it and the result is rendered. So the images stay plain uint8 arrays that can travel
  through caches, datasets and HTTP without side-channel metadata.

Every item is an image uint8 [H, W, 3] or a `SceneTextError` / `UnknownSourceImage` (both `GenerationError`) in
its place; nothing raises for one bad item.
"""
import numpy as np

from auditdm_jax import imagegen
from auditdm_jax.worlds.shapes import scenes as shapes
from auditdm_jax.worlds.shapes import language as lang
from auditdm_jax.imagegen import errors


class SceneTextError(errors.GenerationError):
  """A caption or edit command the world cannot render. `kind`: "parse" (not in the language), "reference" (names
  no single object) or "conflict" (two objects in one cell, full grid); `cause` is the LanguageError. The text is
  at fault (`ill_posed`)."""

  ill_posed = True
  KINDS = {lang.ParseError: "parse", lang.ReferenceError_: "reference", lang.ConflictError: "conflict"}

  def __init__(self, cause):
    super().__init__(str(cause))
    self.cause = cause
    self.kind = next((k for cls, k in self.KINDS.items() if isinstance(cause, cls)), "parse")


class UnknownSourceImage(errors.GenerationError):
  """An edit's source image is not a (lossless) shapes-world rendering at this generator's settings."""


class ProceduralGenerator:
  """Renders captions and edits of the shapes world at `image_size` px (anti-aliased by `supersample`)."""

  name = "procedural"

  def __init__(self, image_size=64, supersample=4):
    self.image_size = int(image_size)
    self.supersample = int(supersample)

  def render(self, scene):
    return shapes.render(scene, self.image_size, self.supersample)

  def scene_of(self, image):
    """The scene of an image this generator drew; UnknownSourceImage otherwise."""
    try:
      return shapes.parse_image(np.asarray(image), self.supersample)
    except ValueError as e:
      raise UnknownSourceImage(f"not a shapes-world image: {e}") from None

  def generate_scene(self, prompt, seed=0):
    """Caption -> Scene, or raises SceneTextError."""
    try:
      return lang.parse_caption(prompt, seed)
    except lang.LanguageError as e:
      raise SceneTextError(e) from None

  def edit_scene(self, scene, instruction, seed=0):
    """(Scene, edit command) -> edited Scene, or raises SceneTextError."""
    try:
      return lang.parse_edit(instruction).apply(scene, seed)
    except lang.LanguageError as e:
      raise SceneTextError(e) from None

  def generate(self, prompts, seeds=None):
    """Captions -> list of uint8 [H, W, 3] images or GenerationError items."""
    out = []
    for prompt, seed in zip(prompts, imagegen.normalize_seeds(seeds, len(prompts))):
      try:
        out.append(self.render(self.generate_scene(prompt, seed)))
      except errors.GenerationError as e:
        out.append(e)
    return out

  def edit(self, images, instructions, seeds=None):
    """(images [H, W, 3] of this world, edit commands) -> list of edited images or GenerationError items."""
    if len(images) != len(instructions):
      raise ValueError(f"got {len(images)} images for {len(instructions)} instructions")
    out = []
    for image, instruction, seed in zip(images, instructions, imagegen.normalize_seeds(seeds, len(images))):
      try:
        out.append(self.render(self.edit_scene(self.scene_of(image), instruction, seed)))
      except errors.GenerationError as e:
        out.append(e)
    return out
