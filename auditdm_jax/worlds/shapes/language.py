"""The shapes world's language: captions, edit commands and questions, generated and parsed.

Three kinds of text, each with a generator (seeded, with paraphrase templates) and a parser that accepts any
paraphrase within the grammar (synonyms, adjective order, plurals, "a"/"one"/"the", number words, lead-ins such
as "an image of" or "please"):

- captions -> `parse_caption(text, seed) -> Scene` (attributes the caption leaves out are drawn from `seed`);
- edit commands -> `parse_edit(text) -> Edit`, `Edit.apply(scene, seed) -> Scene` (recolour, resize, retexture,
  remove, add, move, replace);
- questions -> `parse_question(text) -> Question`, `Question.answer(scene) -> str` (short canonical answers:
  "3", "red", "yes", "circle", "small"), with `Question.skill` one of `SKILLS`.

A question about an object that is not in the scene has a defined answer: counting "0", existence "no",
comparison counts it as 0, colour / shape / size `ABSENT` ("none": "What color is the star?" with no star), and a
spatial relation "no" ("Is the star left of the circle?" with no star). Only a "the ..." that matches several
objects ("the circle" among two) leaves a question without an answer (ill-posed), and so does a question whose
words give its answer away ("Are there fewer stars than stars?", "What color is the red star?":
`Question.given_away`); the world's own questions are never either.

Text outside the language raises `ParseError`; a referring expression that matches several objects where one is
needed (or, in an edit command, no object) raises `ReferenceError_`; a given-away question `GivenAwayError`; an
edit that breaks the one-object-per-cell rule raises `ConflictError`.
All are `LanguageError` (a ValueError), never another exception.
"""
import dataclasses
import re

import numpy as np

from auditdm_jax.worlds.shapes import scenes as shapes

SKILLS = ("counting", "color", "existence", "spatial", "comparison", "binding")
RELATIONS = ("left", "right", "above", "below")
COMPARISONS = ("more", "fewer", "same")
ABSENT = "none"  # The answer of a colour / shape / size question about an object the scene does not have.
EDIT_OPS = ("recolor", "resize", "retexture", "remove", "add", "move", "replace")


def relations_hold(row_a, col_a, row_b, col_b):
  """{relation: whether "A <relation> B" holds} for A at (row_a, col_a), B at (row_b, col_b); scalars or arrays."""
  return {"left": col_a < col_b, "right": col_a > col_b, "above": row_a < row_b, "below": row_a > row_b}


class LanguageError(ValueError):
  """Base of every error about text in the shapes world's language."""


class ParseError(LanguageError):
  """The text is not in the world's language."""


class ReferenceError_(LanguageError):  # pylint: disable=invalid-name
  """A referring expression matches no object, or several where exactly one is needed."""


class GivenAwayError(LanguageError):
  """The question's own words fix or name its answer, so it asks nothing about the image (ill-posed)."""


class ConflictError(LanguageError):
  """The text describes an impossible scene (two objects in a cell, more than nine objects)."""


# ---------------------------------------------------------------------------------------------------- lexicon
def _forms(table):
  return {w: k for k, words in table.items() for w in words}


SHAPE_WORDS = _forms({
    "circle": ("circle", "disc", "disk", "dot", "round"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle",),
    "star": ("star",),
})
SHAPE_PLURALS = _forms({"circle": ("circles", "discs", "disks", "dots"), "square": ("squares", "boxes", "blocks"),
                        "triangle": ("triangles",), "star": ("stars",)})
GENERIC = {"object", "shape", "thing", "item", "figure", "one"}
GENERIC_PLURALS = {"objects", "shapes", "things", "items", "figures", "ones"}
COLOR_WORDS = dict({c: c for c in shapes.COLORS}, violet="purple")
SIZE_WORDS = _forms({"small": ("small", "little", "tiny", "smaller"), "large": ("large", "big", "huge", "larger",
                                                                               "bigger")})
TEXTURE_WORDS = _forms({"plain": ("plain", "solid", "filled", "unstriped"), "striped": ("striped", "stripy",
                                                                                       "stripey")})
NUMBERS = {w: i for i, w in enumerate(("zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                                        "nine"))}
NUMBERS.update({str(i): i for i in range(10)})
NUMBERS.update({"a": 1, "an": 1, "single": 1})
ROW_WORDS = {"top": 0, "upper": 0, "bottom": 2, "lower": 2}
COL_WORDS = {"left": 0, "right": 2}
MID_WORDS = {"center", "middle", "central", "centre"}
POSITION_FILLER = {"corner", "side", "cell", "part", "area", "edge", "of", "the", "image", "picture", "grid",
                   "scene", "canvas", "row"}
LOCATION_PREPS = {"in", "at", "on", "to", "into", "towards"}
DETERMINERS = {"the", "a", "an", "any", "some", "all"}


def normalize(text):
  """Lower-cases, unifies spellings and spaces out punctuation: "Top-left, colour." -> "top left , color ."."""
  if not isinstance(text, str):
    raise ParseError(f"expected a string, got {type(text).__name__}")
  t = text.lower().strip()
  t = re.sub(r"colou?r(s|ed)?", lambda m: "color" + (m.group(1) or ""), t)
  t = t.replace("centre", "center").replace("grey", "gray").replace("there's", "there is")
  t = re.sub(r"[\-_/]", " ", t)
  t = re.sub(r"([,;.?!:])", r" \1 ", t)
  t = re.sub(r"[\"'`()\[\]]", " ", t)
  return re.sub(r"\s+", " ", t).strip()


# --------------------------------------------------------------------------------------------- referring exprs
@dataclasses.dataclass(frozen=True)
class Ref:
  """A referring expression: every attribute that is not None must match. [row, col] name a grid cell."""
  shape: str = None
  color: str = None
  size: str = None
  texture: str = None
  row: int = None
  col: int = None

  def matches(self, o):
    return all(getattr(self, k) is None or getattr(self, k) == getattr(o, k) for k in
               ("shape", "color", "size", "texture", "row", "col"))

  def select(self, scene):
    return [o for o in scene.objects if self.matches(o)]

  def resolve(self, scene):
    """The one object this expression names; ReferenceError_ when none or several match."""
    found = self.select(scene)
    if len(found) != 1:
      raise ReferenceError_(f"{'no' if not found else len(found)} objects match '{self.phrase()}'")
    return found[0]

  def attrs(self):
    return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

  def phrase(self, plural=False, det="the"):
    """English for this expression: e.g. "the small red circle in the top left", "red objects"."""
    words = [w for w in (self.size, self.texture, self.color) if w]
    noun = self.shape or "object"
    words.append(noun + "s" if plural else noun)
    text = " ".join(([det] if det else []) + words)
    if self.row is not None and self.col is not None:
      text += " in the " + shapes.position_name(self.row, self.col)
    return text


def _parse_position(words):
  """Position words (no filler) -> (row, col). ["top", "left"] -> (0, 0); ["left"] -> (1, 0)."""
  row = col = None
  mids = 0
  for w in words:
    if w in ROW_WORDS:
      if row is not None:
        raise ParseError(f"two vertical positions in '{' '.join(words)}'")
      row = ROW_WORDS[w]
    elif w in COL_WORDS:
      if col is not None:
        raise ParseError(f"two horizontal positions in '{' '.join(words)}'")
      col = COL_WORDS[w]
    elif w in MID_WORDS:
      mids += 1
    else:
      raise ParseError(f"'{w}' is not a position word")
  if not words or mids > 2 or (mids == 2 and (row is not None or col is not None)) or (
      mids == 1 and row is not None and col is not None):
    raise ParseError(f"'{' '.join(words)}' is not a position")
  return (1 if row is None else row), (1 if col is None else col)


def _read_location(toks, i, need_prep=True):
  """Reads one location ("in the top left corner of the image") at toks[i:]; returns ((row, col), next i)."""
  has_prep = i < len(toks) and toks[i] in LOCATION_PREPS
  if need_prep and not has_prep:
    raise ParseError("expected a location")
  j = i + 1 if has_prep else i
  words = []
  while j < len(toks) and (toks[j] in POSITION_FILLER or toks[j] in ROW_WORDS or toks[j] in COL_WORDS or
                           toks[j] in MID_WORDS):
    if toks[j] not in POSITION_FILLER:
      words.append(toks[j])
    j += 1
  return _parse_position(words), j


@dataclasses.dataclass
class NounPhrase:
  ref: Ref
  count: int = None  # From a number word or "a"/"an"; None when absent.
  plural: bool = False
  det: str = None
  cells: tuple = ()  # Extra locations of a counted phrase: "two circles in the top left and the center".


def _read_np(toks, i, allow_list=False):
  """Reads a noun phrase at toks[i:]: [det|number] adjective* noun [location ("and" location)*]."""
  det, count = None, None
  if i < len(toks) and toks[i] in NUMBERS and not (toks[i] == "one" and (i + 1 >= len(toks) or
                                                                        toks[i + 1] in LOCATION_PREPS)):
    det, count = toks[i], NUMBERS[toks[i]]
    i += 1
  elif i < len(toks) and toks[i] in DETERMINERS:
    det = toks[i]
    i += 1
  attrs = {}
  while i < len(toks):
    w = toks[i]
    for key, table in (("size", SIZE_WORDS), ("color", COLOR_WORDS), ("texture", TEXTURE_WORDS)):
      if w in table:
        if key in attrs and attrs[key] != table[w]:
          raise ParseError(f"conflicting {key} words near '{w}'")
        attrs[key] = table[w]
        break
    else:
      if w == "colored":  # "red colored circle"
        i += 1
        continue
      break
    i += 1
  if i >= len(toks):
    raise ParseError("expected a shape or 'object'")
  w = toks[i]
  if w in SHAPE_WORDS:
    attrs["shape"], plural = SHAPE_WORDS[w], False
  elif w in SHAPE_PLURALS:
    attrs["shape"], plural = SHAPE_PLURALS[w], True
  elif w in GENERIC:
    plural = False
  elif w in GENERIC_PLURALS:
    plural = True
  else:
    raise ParseError(f"expected a shape or 'object', got '{w}'")
  i += 1
  if i < len(toks) and toks[i] in ("that", "which") and i + 1 < len(toks) and toks[i + 1] in ("is", "are"):
    i += 2  # "the circle that is in the top left"
  cells = []
  if i < len(toks) and toks[i] in LOCATION_PREPS:
    try:
      cell, i2 = _read_location(toks, i)
      cells.append(cell)
      i = i2
    except ParseError:
      pass
    while allow_list and cells and i + 1 < len(toks) and toks[i] in ("and", ","):
      try:  # "in the top left and (in) the center"
        cell, i = _read_location(toks, i + 1, need_prep=False)
        cells.append(cell)
      except ParseError:
        break
  ref = Ref(**attrs)
  if len(cells) == 1 or (cells and not allow_list):
    ref = dataclasses.replace(ref, row=cells[0][0], col=cells[0][1])
  return NounPhrase(ref=ref, count=count, plural=plural, det=det, cells=tuple(cells)), i


def parse_ref(text):
  """Parses a whole referring expression ("the red circle in the top left") -> Ref. Number agreement is not
  enforced ("how many circle" is understood)."""
  toks = normalize(text).split()
  np_, i = _read_np(toks, 0)
  if i != len(toks):
    raise ParseError(f"unexpected words '{' '.join(toks[i:])}' after '{' '.join(toks[:i])}'")
  return np_.ref


# ------------------------------------------------------------------------------------------------- captions
_LEAD_INS = (
    r"^(here is |this is |it is |it s )?(an? |the |this )?(simple |synthetic )?(image|picture|photo|photograph|scene|"
    r"drawing|illustration|canvas|grid|rendering)( that)?( of| with| showing| shows| that shows| contains| containing|"
    r" depicting| depicts| has| featuring| features| where)?( there (is|are))?\b",
    r"^(there (is|are)|we see|you can see|i see|showing|with|it shows|it contains)\b",
)
_BACKGROUND = r"\b(on|against|over|with) (a |an |the )?([a-z]+ )?(background|backdrop)\b"
_EMPTY = r"^(an? |the )?(empty|blank) (image|picture|scene|grid|canvas)$|^(nothing|no objects|empty)$"


def _strip_lead_in(t):
  for pattern in _LEAD_INS:
    t = re.sub(pattern, "", t).strip()
  return t


def parse_caption(text, seed=0):
  """Caption -> Scene. Objects must be in distinct cells; what the caption leaves out (size, position, colour,
  shape) is drawn from `seed`; an unmentioned texture is plain."""
  t = normalize(text)
  t = re.sub(_BACKGROUND, " ", t)
  t = re.sub(r"\b(in|of|on|from) (the|this) (image|picture|scene|canvas|photo)\b", " ", t)
  t = re.sub(r"\s+", " ", t).strip(" .!")
  if re.match(_EMPTY, t):
    return shapes.Scene(())
  t = _strip_lead_in(t)
  if not t:
    raise ParseError(f"caption names no objects: {text!r}")
  chunks = re.split(r" [,;.] (?:and )?| and (?=(?:a|an|one|two|three|four|five|six|seven|eight|nine|\d)\b)", t)
  specs = []
  for chunk in chunks:
    toks = _strip_lead_in(chunk.strip()).split()
    while toks and toks[0] in ("and", "also", "plus", "with", "then"):
      toks = _strip_lead_in(" ".join(toks[1:])).split()
    if not toks:
      continue
    np_, i = _read_np(toks, 0, allow_list=True)
    if i != len(toks):
      raise ParseError(f"unexpected words '{' '.join(toks[i:])}' in caption part '{chunk}'")
    count = np_.count if np_.count is not None else (len(np_.cells) if np_.plural and np_.cells else 1)
    if np_.plural and np_.count is None and not np_.cells:
      raise ParseError(f"'{chunk}': how many? plural objects need a number")
    if np_.cells and len(np_.cells) != count:
      raise ParseError(f"'{chunk}': {count} objects but {len(np_.cells)} locations")
    if count == 0:
      continue
    base = {k: v for k, v in np_.ref.attrs().items() if k not in ("row", "col")}
    cells = list(np_.cells) or [None] * count
    specs.extend((base, cell) for cell in cells)
  if not specs:
    raise ParseError(f"caption names no objects: {text!r}")
  return _build_scene(specs, np.random.default_rng(seed))


def _build_scene(specs, rng):
  """[(attrs, cell or None)] -> Scene, placing explicit cells first and filling gaps from rng."""
  if len(specs) > shapes.GRID * shapes.GRID:
    raise ConflictError(f"{len(specs)} objects do not fit the {shapes.GRID}x{shapes.GRID} grid")
  taken = [cell for _, cell in specs if cell is not None]
  if len(set(taken)) != len(taken):
    dup = next(c for c in taken if taken.count(c) > 1)
    raise ConflictError(f"two objects in the {shapes.position_name(*dup)} cell")
  free = [c for c in ((r, c) for r in range(shapes.GRID) for c in range(shapes.GRID)) if c not in taken]
  rng.shuffle(free)
  objs = []
  for attrs, cell in specs:
    cell = cell if cell is not None else free.pop()
    objs.append(_fill(attrs, cell, rng))
  return shapes.Scene(tuple(objs))


def _fill(attrs, cell, rng):
  pick = lambda seq: seq[int(rng.integers(len(seq)))]
  return shapes.Obj(shape=attrs.get("shape") or pick(shapes.SHAPES), color=attrs.get("color") or
                    pick(shapes.COLORS), size=attrs.get("size") or pick(shapes.SIZES),
                    texture=attrs.get("texture", "plain"), row=cell[0], col=cell[1])


def object_phrase(o, det="a"):
  """ "a large striped red circle in the top left" (plain texture is left implicit)."""
  words = [det, o.size] + (["striped"] if o.texture == "striped" else []) + [o.color, o.shape]
  return " ".join(w for w in words if w) + " in the " + o.position


def caption(scene, rng=None):
  """A caption that fully describes `scene`. With `rng`, a random paraphrase (lead-in, object order, adjective
  order, "one"/"a"); without, the canonical form "A large red circle in the top left and a small blue star in the
  center." """
  if not scene.objects:
    return "An empty image." if rng is None else str(rng.choice(["An empty image.", "A blank canvas.",
                                                                  "An empty scene."]))
  if rng is None:
    parts = [object_phrase(o) for o in scene.objects]
    lead = ""
  else:
    objs = list(scene.objects)
    rng.shuffle(objs)
    parts = []
    for o in objs:
      adjs = [o.size] + (["striped"] if o.texture == "striped" else []) + [o.color]
      if rng.random() < 0.3:
        rng.shuffle(adjs)
      det = "one" if rng.random() < 0.15 else ("an" if adjs[0][0] in "aeiou" else "a")
      prep = str(rng.choice(["in the", "at the", "in the", "on the"]))
      corner = " corner" if o.row != 1 and o.col != 1 and rng.random() < 0.3 else ""
      parts.append(f"{det} {' '.join(adjs)} {o.shape} {prep} {o.position}{corner}")
    lead = str(rng.choice(["", "", "an image of ", "a picture with ", "there is ", "a scene showing "]))
  body = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
  text = lead + body
  return text[0].upper() + text[1:] + "."


# --------------------------------------------------------------------------------------------- edit commands
@dataclasses.dataclass(frozen=True)
class Edit:
  """A parsed edit command. `ref` names the edited object(s) (None for add); `value` is the new colour / size /
  texture, the target cell (move), or the attributes of the new object (add, replace) as a dict."""
  op: str
  ref: Ref = None
  value: object = None
  every: bool = False  # A plural reference ("make the circles blue") edits every match.
  text: str = ""

  def apply(self, scene, seed=0):
    """The edited scene. Attributes an added object leaves out are drawn from `seed`."""
    rng = np.random.default_rng(seed)
    objs = list(scene.objects)
    if self.op == "add":
      attrs, cell = self.value
      if cell is None:
        if not scene.free_cells():
          raise ConflictError("the grid is full: nothing can be added")
        cell = scene.free_cells()[int(rng.integers(len(scene.free_cells())))]
      elif scene.at(*cell) is not None:
        raise ConflictError(f"the {shapes.position_name(*cell)} cell is already taken")
      return shapes.Scene(tuple(objs) + (_fill(attrs, cell, rng),))
    targets = self.ref.select(scene) if self.every else [self.ref.resolve(scene)]
    if not targets:
      raise ReferenceError_(f"no objects match '{self.ref.phrase(plural=True)}'")
    keep = [o for o in objs if o not in targets]
    if self.op == "remove":
      return shapes.Scene(tuple(keep))
    if self.op == "move":
      if len(targets) != 1:
        raise ReferenceError_("only one object can be moved to a cell")
      occupant = scene.at(*self.value)
      if occupant is not None and occupant != targets[0]:
        raise ConflictError(f"the {shapes.position_name(*self.value)} cell is already taken")
      return shapes.Scene(tuple(keep) + (targets[0].replace(row=self.value[0], col=self.value[1]),))
    key = {"recolor": "color", "resize": "size", "retexture": "texture"}.get(self.op)
    new = [o.replace(**({key: self.value} if key else self.value)) for o in targets]
    return shapes.Scene(tuple(keep + new))


_COLOR_RE = "|".join(sorted(COLOR_WORDS, key=len, reverse=True))
_SIZE_RE = "|".join(sorted(SIZE_WORDS, key=len, reverse=True))
_TEXTURE_RE = "|".join(sorted(TEXTURE_WORDS, key=len, reverse=True))
_EDIT_LEAD = r"^(please |can you |could you |now |then )*"
_EDIT_TAIL = r"( please| instead| so that it is \w+)?$"


def _edit_target(text):
  """Referring part of an edit: returns (Ref, every)."""
  toks = text.split()
  every = bool(toks) and toks[0] in ("all", "every", "each")
  if every:
    toks = toks[1:] if len(toks) < 2 or toks[1] != "the" else toks[2:]
  np_, i = _read_np(toks, 0)
  if i != len(toks):
    raise ParseError(f"unexpected words '{' '.join(toks[i:])}' in '{text}'")
  if np_.det in ("a", "an") or np_.count not in (None, 1):
    raise ParseError(f"'{text}': say which object ('the ...')")
  return np_.ref, every or np_.plural


def _new_object(text, allow_cell=True):
  """The described new object of an add / replace: returns (attrs, cell or None)."""
  toks = text.split()
  np_, i = _read_np(toks, 0)
  if i != len(toks):
    raise ParseError(f"unexpected words '{' '.join(toks[i:])}' in '{text}'")
  if np_.plural or np_.count not in (None, 1) or np_.det not in (None, "a", "an", "one"):
    raise ParseError(f"'{text}': describe one new object ('a ...')")
  attrs = {k: v for k, v in np_.ref.attrs().items() if k not in ("row", "col")}
  cell = np_.cells[0] if np_.cells else None
  if cell is not None and not allow_cell:
    raise ParseError(f"'{text}': a replacement keeps the old object's cell")
  return attrs, cell


def _edit_patterns():
  """(regex, builder(match) -> Edit fields) in priority order."""
  pos = r"(?P<pos>(?:the )?(?:(?:top|upper|bottom|lower|left|right|center|middle|central|corner|side|cell) ?)+)"
  return [
      (r"^(?:remove|take away|get rid of|delete|erase) the stripes (?:from|of|on) (?P<a>.+)$",
       lambda m: ("retexture", m["a"], "plain")),
      (r"^add stripes to (?P<a>.+)$", lambda m: ("retexture", m["a"], "striped")),
      (r"^(?:change|set|switch) the colou?r of (?P<a>.+) to (?P<v>" + _COLOR_RE + ")$",
       lambda m: ("recolor", m["a"], COLOR_WORDS[m["v"]])),
      (r"^(?:make|turn|paint|color|recolor|change|set|switch) (?P<a>.+?) (?:to |into |in )?(?P<v>" + _COLOR_RE +
       r")(?: color)?$", lambda m: ("recolor", m["a"], COLOR_WORDS[m["v"]])),
      (r"^(?:change|set) the size of (?P<a>.+) to (?P<v>" + _SIZE_RE + ")$",
       lambda m: ("resize", m["a"], SIZE_WORDS[m["v"]])),
      (r"^(?:make|turn|change|resize|scale|set) (?P<a>.+?) (?:to |into |down to |up to )?(?:be )?(?P<v>" +
       _SIZE_RE + r")(?: size)?$", lambda m: ("resize", m["a"], SIZE_WORDS[m["v"]])),
      (r"^(?:enlarge|grow|expand|magnify|scale up|make bigger) (?P<a>.+)$", lambda m: ("resize", m["a"], "large")),
      (r"^(?:shrink|reduce|scale down|make smaller) (?P<a>.+)$", lambda m: ("resize", m["a"], "small")),
      (r"^(?:make|turn|change) (?P<a>.+?) (?:to |into )?(?P<v>" + _TEXTURE_RE + ")$",
       lambda m: ("retexture", m["a"], TEXTURE_WORDS[m["v"]])),
      (r"^(?:remove|delete|erase|take away|take out|get rid of|eliminate) (?P<a>.+)$",
       lambda m: ("remove", m["a"], None)),
      (r"^(?:replace|swap|substitute) (?P<a>.+?) (?:with|by|for) (?P<b>.+)$", lambda m: ("replace", m["a"], m["b"])),
      (r"^(?:move|shift|relocate|slide|drag|put|place) (?P<a>the .+|all .+|every .+) (?:to|into|in|at|towards|"
       r"over to) " + pos + "$", lambda m: ("move", m["a"], m["pos"])),
      (r"^(?:add|put|place|draw|insert|include|paint|create) (?P<b>.+)$", lambda m: ("add", None, m["b"])),
  ]


_EDIT_PATTERNS = _edit_patterns()


def parse_edit(text):
  """Edit command -> Edit. Raises ParseError if no construction of the language reads the whole command."""
  t = normalize(text)
  t = re.sub(r"\b(in|of|on|from|to) (the|this) (image|picture|scene|canvas|photo)\b", " ", t)
  t = re.sub(r"\s+", " ", t).strip(" .!")
  t = re.sub(_EDIT_TAIL, "", re.sub(_EDIT_LEAD, "", t)).strip()
  first_error = None
  for pattern, build in _EDIT_PATTERNS:
    m = re.match(pattern, t)
    if not m:
      continue
    op, target, value = build(m)
    try:
      ref, every = _edit_target(target) if target is not None else (None, False)
      if op == "move":
        value = _parse_position([w for w in value.split() if w not in POSITION_FILLER])
      elif op == "add":
        value = _new_object(value)
      elif op == "replace":
        value = _new_object(value, allow_cell=False)[0]
      return Edit(op=op, ref=ref, value=value, every=every, text=text)
    except ParseError as e:
      first_error = first_error or e
  raise ParseError(f"not an edit command: {text!r}" + (f" ({first_error})" if first_error else ""))


def edit_text(edit_op, ref, value, rng=None):
  """English for an edit: `ref` is the referring phrase ("the red circle"; unused for add), `value` the new
  colour / size / texture, the target cell (move), the new Obj (add) or the changed attributes (replace).
  Canonical without `rng`, a random paraphrase with it."""
  choose = (lambda options: options[0]) if rng is None else (lambda options: str(rng.choice(options)))
  if edit_op == "recolor":
    return choose([f"Make {ref} {value}.", f"Change the color of {ref} to {value}.", f"Paint {ref} {value}.",
                   f"Turn {ref} {value}."])
  if edit_op == "resize":
    return choose([f"Make {ref} {value}.", f"Change the size of {ref} to {value}.",
                   ("Enlarge " if value == "large" else "Shrink ") + ref + "."])
  if edit_op == "retexture":
    return f"Make {ref} {value}."
  if edit_op == "remove":
    return choose([f"Remove {ref}.", f"Delete {ref}.", f"Erase {ref}."])
  if edit_op == "move":
    where = shapes.position_name(*value)
    return choose([f"Move {ref} to the {where}.", f"Shift {ref} to the {where}."])
  if edit_op == "add":
    return choose(["Add ", "Put ", "Draw "]) + object_phrase(value) + "."
  if edit_op == "replace":
    return f"Replace {ref} with {Ref(**value).phrase(det='a')}."
  raise ValueError(f"unknown edit op {edit_op!r}")


def sample_edit(scene, rng, ops=("recolor", "resize", "remove", "add", "move", "replace")):
  """A random applicable edit of `scene`: returns (command text, edited scene)."""
  rng = np.random.default_rng(rng)
  free = scene.free_cells()
  ops = [op for op in ops if (free if op in ("add", "move") else True) and
         (scene.objects if op != "add" else True) and (op != "remove" or len(scene) > 1)]
  if not ops:
    raise ValueError("no edit applies to this scene")
  op = str(rng.choice(ops))
  if op == "add":
    o = _fill({}, free[int(rng.integers(len(free)))], rng)
    return edit_text("add", None, o, rng), shapes.Scene(scene.objects + (o,))
  o = scene.objects[int(rng.integers(len(scene)))]
  value = None
  if op == "recolor":
    value = str(rng.choice([c for c in shapes.COLORS if c != o.color]))
  elif op == "resize":
    value = "small" if o.size == "large" else "large"
  elif op == "move":
    value = free[int(rng.integers(len(free)))]
  elif op == "replace":
    value = {"shape": str(rng.choice([s for s in shapes.SHAPES if s != o.shape]))}
  text = edit_text(op, unique_phrase(o, scene, rng), value, rng)
  return text, parse_edit(text).apply(scene)


def unique_phrase(o, scene, rng=None):
  """The shortest "the ..." phrase naming `o` alone in `scene` (a random one of the shortest with `rng`),
  falling back to its shape and cell."""
  options = [("shape",), ("color", "shape"), ("size", "shape"), ("size", "color", "shape")]
  if rng is not None:
    options = [options[0]] + [options[k] for k in 1 + rng.permutation(len(options) - 1)]
  for keys in options:
    ref = Ref(**{k: getattr(o, k) for k in keys})
    if len(ref.select(scene)) == 1:
      return ref.phrase()
  return Ref(shape=o.shape, row=o.row, col=o.col).phrase()


# --------------------------------------------------------------------------------------------------- questions
def _within(a, b):
  """Whether every object `a` selects, `b` selects too, by the words alone (`a` has every attribute `b` has: `b`
  matches `a` as it would match an object)."""
  return b.matches(a)


@dataclasses.dataclass(frozen=True)
class Question:
  """A parsed question. `op`: count | exists | color | shape | size | relation | compare; `refs`: the referring
  expressions it is about; `arg`: the relation (left/right/above/below) or comparison (more/fewer/same)."""
  skill: str
  op: str
  refs: tuple
  arg: str = None
  text: str = ""

  def answer(self, scene):
    """Ground truth on `scene` as a short canonical string (`ABSENT` rules in the module docstring).
    ReferenceError_ if a "the ..." matches several objects, GivenAwayError if the words alone answer it
    (`given_away`): either way the question is ill-posed."""
    why = self.given_away()
    if why:
      raise GivenAwayError(f"{self.text or self.op!r}: {why}")
    if self.op == "count":
      return str(len(self.refs[0].select(scene)))
    if self.op == "exists":
      return "yes" if self.refs[0].select(scene) else "no"
    if self.op == "compare":
      a, b = (len(r.select(scene)) for r in self.refs)
      return "yes" if {"more": a > b, "fewer": a < b, "same": a == b}[self.arg] else "no"
    if self.op in ("color", "shape", "size"):
      if not self.refs[0].select(scene):
        return ABSENT
      return getattr(self.refs[0].resolve(scene), self.op)
    if self.op == "relation":
      if not all(r.select(scene) for r in self.refs):
        return "no"  # A relation with an absent object does not hold.
      a, b = (r.resolve(scene) for r in self.refs)
      if a == b:
        raise ReferenceError_("a spatial relation needs two different objects")
      return "yes" if relations_hold(a.row, a.col, b.row, b.col)[self.arg] else "no"
    raise ValueError(f"unknown question op {self.op!r}")

  def given_away(self):
    """Why the words alone fix or name the answer on every scene, or "" when the image decides it: a comparison of
    a set with itself, or of a subset "more" than its superset ("more red stars than stars": always no); a
    relation of an expression with itself; a colour / shape / size question whose expression names it ("What
    color is the red star?": red or none)."""
    if self.op == "compare":
      a, b = self.refs
      if _within(a, b) and _within(b, a):
        return "it compares a set with itself"
      if (self.arg == "more" and _within(a, b)) or (self.arg == "fewer" and _within(b, a)):
        return "a subset is never more than its superset"
    if self.op == "relation" and self.refs[0] == self.refs[1]:
      return "a spatial relation needs two different objects"
    if self.op in ("color", "shape", "size") and getattr(self.refs[0], self.op) is not None:
      return f"the question names the {self.op} it asks for"
    return ""

  def to_dict(self):
    return {"skill": self.skill, "op": self.op, "arg": self.arg, "text": self.text,
            "refs": [r.attrs() for r in self.refs]}


_REL_WORDS = {"to the left of": "left", "on the left of": "left", "left of": "left", "to the right of": "right",
              "on the right of": "right", "right of": "right", "above": "above", "over": "above",
              "on top of": "above", "higher than": "above", "below": "below", "under": "below",
              "beneath": "below", "underneath": "below", "lower than": "below"}
_REL_RE = "|".join(sorted(_REL_WORDS, key=len, reverse=True))
_MORE = {"more": "more", "greater": "more", "larger": "more", "bigger": "more", "higher": "more",
         "fewer": "fewer", "less": "fewer", "smaller": "fewer", "lower": "fewer"}
_MORE_RE = "|".join(_MORE)
_Q_LEAD = r"^(please |can you tell me |could you tell me |tell me |in the image , |in this image , |question : )*"


def _question_patterns():
  """(regex, op, arg-or-None) in priority order; named groups a, b are referring expressions."""
  return [
      (r"^how many (?P<a>.+?)(?: are there| is there| are in| are visible| can you see| do you see| can be seen|"
       r" are shown| are present| exist| in total| there are| are)?$", "count", None),
      (r"^(?:count|count the number of|what is the number of|what number of) (?P<a>.+?)(?: are there)?$", "count",
       None),
      (r"^(?:are|is) there (?P<arg>" + _MORE_RE + r") (?P<a>.+) than (?P<b>.+)$", "compare", None),
      (r"^(?:do|does) (?P<a>.+?) outnumber (?P<b>.+)$", "compare", "more"),
      (r"^(?:are|is) there (?:as many|the same number of) (?P<a>.+) (?:as|and) (?P<b>.+)$", "compare", "same"),
      (r"^(?:are|is) there an equal number of (?P<a>.+) and (?P<b>.+)$", "compare", "same"),
      (r"^is the number of (?P<a>.+) (?P<arg>" + _MORE_RE + r") than (?:the number of )?(?P<b>.+)$", "compare",
       None),
      (r"^is the number of (?P<a>.+) (?:equal to|the same as) (?:the number of )?(?P<b>.+)$", "compare", "same"),
      (r"^(?:is|are) (?P<a>.+?) (?P<arg>" + _REL_RE + r") (?P<b>.+)$", "relation", None),
      (r"^(?:is|are) there (?:a |an |any |some |one )?(?P<a>.+?)(?: present| visible)?$", "exists", None),
      (r"^(?:does|do) (?:the image|the picture|the scene|it|you|this image) (?:contain|have|show|include|see) "
       r"(?:a |an |any |some )?(?P<a>.+)$", "exists", None),
      (r"^(?:can you see|do you see|can i see) (?:a |an |any |some )?(?P<a>.+)$", "exists", None),
      (r"^(?:is|are) (?:a |an |any |some )(?P<a>.+?) (?:present|visible|shown)$", "exists", None),
      (r"^what color (?:is|are) (?P<a>.+)$", "color", None),
      (r"^(?:what|which) is the color of (?P<a>.+)$", "color", None),
      (r"^(?:which|what) color (?:does|do) (?P<a>.+?) have$", "color", None),
      (r"^which color is (?P<a>.+)$", "color", None),
      (r"^(?P<a>.+?) is (?:of )?what color$", "color", None),
      (r"^(?:what|which) (?:shape|kind of shape|type of shape|kind of object|type of object) (?:is|are) "
       r"(?P<a>.+)$", "shape", None),
      (r"^(?:what|which) is the shape of (?P<a>.+)$", "shape", None),
      (r"^what shape does (?P<a>.+?) have$", "shape", None),
      (r"^what (?:is|lies|sits) (?P<loc>(?:in|at|on) .+)$", "shape", None),
      (r"^what size is (?P<a>.+)$", "size", None),
      (r"^(?:what|which) is the size of (?P<a>.+)$", "size", None),
      (r"^(?:is|are) (?P<a>.+?) (?:small or large|large or small|big or small|small or big)$", "size", None),
  ]


_QUESTION_PATTERNS = _question_patterns()
_SKILL_OF = {"count": "counting", "exists": "existence", "compare": "comparison", "relation": "spatial",
             "color": "color", "shape": "binding", "size": "binding"}


def _question_ref(text, quantified):
  """A question's referring expression. `quantified` (count/exists/compare) accepts bare plurals ("circles")."""
  toks = text.split()
  if quantified and toks and toks[0] in ("any", "some", "all"):
    toks = toks[1:]
  np_, i = _read_np(toks, 0)
  if i != len(toks):
    raise ParseError(f"unexpected words '{' '.join(toks[i:])}' in '{text}'")
  if not quantified and np_.count not in (None, 1):
    raise ParseError(f"'{text}': ask about one object")
  return np_.ref


def parse_question(text):
  """Question -> Question (skill, op, refs). ParseError if no construction of the language reads all of it."""
  t = normalize(text)
  t = re.sub(r"\b(in|of|on) (the|this) (image|picture|scene|canvas|photo)\b", " ", t)
  t = re.sub(r"\s+", " ", t).strip(" ?.!")
  t = re.sub(_Q_LEAD, "", t).strip()
  first_error = None
  for pattern, op, arg in _QUESTION_PATTERNS:
    m = re.match(pattern, t)
    if not m:
      continue
    try:
      groups = m.groupdict()
      if "loc" in groups:
        refs = (_question_ref("the object " + groups["loc"], False),)
        if refs[0].row is None:
          raise ParseError(f"'{groups['loc']}' is not a location")
      else:
        quantified = op in ("count", "exists", "compare")
        refs = tuple(_question_ref(groups[k], quantified) for k in ("a", "b") if groups.get(k) is not None)
      if groups.get("arg"):
        arg = _MORE.get(groups["arg"]) or _REL_WORDS[groups["arg"]]
      return Question(skill=_SKILL_OF[op], op=op, refs=refs, arg=arg, text=text)
    except ParseError as e:
      first_error = first_error or e
  raise ParseError(f"not a question of the shapes world: {text!r}" + (f" ({first_error})" if first_error else ""))


def ref_ends(text, question):
  """Where each referring expression of `question` (parsed from `text`) ends in `text`: character offsets, in
  order, None where its phrase is not there as the world's samplers write it (`Ref.phrase`: "the red circle", "red
  circles", "a red circle"). Phrases are searched left to right and must end at a word boundary."""
  lower, start, ends = text.lower(), 0, []
  for ref in question.refs:
    found = None
    for phrase in sorted({ref.phrase(), ref.phrase(det=None), ref.phrase(plural=True, det=None)}, key=len,
                         reverse=True):
      m = re.search(re.escape(phrase) + r"(?![a-z])", lower[start:])
      if m:
        found = start + m.end()
        break
    ends.append(found)
    start = found if found is not None else start
  return ends


def answer(question_text, scene):
  """Ground-truth answer of a question text on a scene (parse + answer)."""
  return parse_question(question_text).answer(scene)
