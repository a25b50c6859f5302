"""The Toy World: procedurally drawn scenes with known objects, masks, labels and prompts.

A scene is 1-2 objects (shape x colour, varying size, free position chosen by the sampler's
rng) on a grey background with one global style. Object colours are saturated and the
background is neutral grey, so the detector (training/toyworld/detect.py) can judge images on the renderer's
own terms. Every label word is an ordinary English word (GloVe has them all).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...sae_core.errors import ConfigError

IMAGE_SIZE = 48
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.12, 0.12),
    "green": (0.10, 0.68, 0.18),
    "blue": (0.12, 0.28, 0.92),
    "yellow": (0.96, 0.84, 0.08),
}
SHAPES = ("circle", "square", "triangle")
STYLES = ("plain", "striped", "checkered", "dotted")
# Background greys: the light base and the darker pattern ink (neutral: zero saturation).
BACKGROUND_LIGHT = 0.80
BACKGROUND_DARK = 0.50
PATTERN_PERIOD = 6          # px, stripes / checks / dots repeat every 6 px
SIZE_RANGE = (12, 20)       # px, side of an object's bounding box
MIN_GAP = 3                 # px between two objects' bounding boxes
MAX_OBJECTS = 2
MAX_ATTEMPTS = 1000          # placements tried for one object before the scene starts over

# Prompt vocabulary. Word order carries the binding: a colour word belongs to the shape after it.
PAD = "<pad>"
FILLER_WORDS = frozenset({"a", "an", "the", "on", "with", ","})
VOCAB: tuple[str, ...] = (PAD, *COLOURS, *SHAPES, "and", *STYLES, "background")
TOKEN_ID = {w: i for i, w in enumerate(VOCAB)}
CONTEXT_LENGTH = 8


@dataclass(frozen=True)
class ToyObject:
    colour: str
    shape: str
    size: int               # bounding-box side, px
    top: int                # bounding-box top-left corner, px
    left: int

    @property
    def label(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def centre(self) -> tuple[float, float]:
        """(row, col) of the bounding-box centre, px."""
        return (self.top + self.size / 2, self.left + self.size / 2)


@dataclass(frozen=True)
class Scene:
    objects: tuple[ToyObject, ...]
    style: str
    name_style: bool = True     # False: the prompt leaves the style unnamed (the model picks one)

    @property
    def prompt(self) -> str:
        return scene_prompt(self.objects, self.style if self.name_style else None)


@dataclass
class Rendered:
    image: np.ndarray                     # [H, W, 3] float32 in [0, 1]
    masks: np.ndarray                     # [n_objects, H, W] bool, one per object
    labels: list[str] = field(default_factory=list)   # "red circle", ... per mask
    style: str = "plain"


def scene_prompt(objects, style: str | None) -> str:
    text = " and ".join(f"{o.colour} {o.shape}" for o in objects)
    return f"{text} on {style} background" if style else text


def sample_scene(rng: np.random.Generator, n_objects: int | None = None, style: str | None = None,
                 name_style_p: float = 1.0) -> Scene:
    """A random scene. n_objects None: 1 or 2 with equal probability (balanced)."""
    n = int(rng.integers(1, MAX_OBJECTS + 1)) if n_objects is None else n_objects
    if not 1 <= n <= MAX_OBJECTS:
        raise ConfigError(f"n_objects must be 1..{MAX_OBJECTS}, got {n}")
    style = STYLES[int(rng.integers(len(STYLES)))] if style is None else style
    colours, shapes = list(COLOURS), list(SHAPES)

    def any_new_object(rng, placed):
        colour = colours[int(rng.integers(len(colours)))]
        shape = shapes[int(rng.integers(len(shapes)))]
        if any(o.colour == colour and o.shape == shape for o in placed):
            return None   # two identical objects would make "red circle and red circle" prompts
        return colour, shape
    objects = _place_objects(rng, n, any_new_object)
    name_style = bool(rng.random() < name_style_p)
    return Scene(tuple(objects), style, name_style)


def scene_from_prompt(prompt: str, rng: np.random.Generator) -> Scene:
    """A ground-truth scene for a prompt: its objects and style, sizes and free positions drawn
    from rng (an unnamed style is drawn too). Render it with `render`."""
    wanted, style = parse_prompt(prompt)
    if not 1 <= len(wanted) <= MAX_OBJECTS:
        raise ConfigError(f"toy prompt {prompt!r} names {len(wanted)} objects; expected 1..{MAX_OBJECTS}")
    named = style is not None
    style = style or STYLES[int(rng.integers(len(STYLES)))]
    objects = _place_objects(rng, len(wanted), lambda rng, placed: wanted[len(placed)])
    return Scene(tuple(objects), style, named)


def _place_objects(rng: np.random.Generator, n: int, choose) -> list[ToyObject]:
    """n objects at free, non-overlapping positions. For each try: size and position are drawn,
    then `choose(rng, placed)` gives (colour, shape) or None to reject the try; a try too close to
    a placed object is redrawn whole (keeps positions uniform). After MAX_ATTEMPTS tries for one
    object (a large first object near the centre can leave no room) the scene starts over; rare,
    so earlier draws keep. The rng is drawn in this order on purpose: scenes are part of the
    training recipe and of the held-out evaluation prompts."""
    objects: list[ToyObject] = []
    attempts = 0
    while len(objects) < n:
        attempts += 1
        if attempts > MAX_ATTEMPTS:
            objects, attempts = [], 0
        size, top, left = _draw_box(rng)
        picked = choose(rng, objects)
        if any(_too_close(top, left, size, o) for o in objects) or picked is None:
            continue
        objects.append(ToyObject(picked[0], picked[1], size, top, left))
    return objects


def free_object(rng: np.random.Generator, placed, tries: int = 100) -> ToyObject | None:
    """One more object, of any colour and shape (a copy of a placed one, too), at a position clear
    of `placed` by the world's own rule; None if `tries` positions are all taken. For training
    strays (objects a prompt does not ask for), not for the world's scenes."""
    colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    for _ in range(tries):
        size, top, left = _draw_box(rng)
        if not any(_too_close(top, left, size, o) for o in placed):
            return ToyObject(colour, shape, size, top, left)
    return None


def misbound(rng: np.random.Generator, objects) -> tuple[ToyObject, ...]:
    """The objects drawn with a binding error of the kinds sampling makes, same sizes and places:
    for two objects, their colours swapped, or one given the other's colour, or one given the
    other's shape (a third each); for one object, another colour or another shape (half each).
    The objects unchanged where that changes nothing the prompt says (two objects of one colour or
    shape). For training (objects a prompt asks for, drawn wrong), not for the world's scenes."""
    objects = tuple(objects)
    i = int(rng.integers(len(objects)))
    kind = int(rng.integers(3 if len(objects) == 2 else 2))
    o = objects[i]
    if len(objects) == 2:
        other = objects[1 - i]
        if kind == 0:      # colours swapped
            swapped = [ToyObject(other.colour, o.shape, o.size, o.top, o.left),
                       ToyObject(o.colour, other.shape, other.size, other.top, other.left)]
            swapped = tuple(swapped if i == 0 else swapped[::-1])
            return objects if sorted(w.label for w in swapped) == sorted(w.label for w in objects) else swapped
        colour, shape = (other.colour, o.shape) if kind == 1 else (o.colour, other.shape)
    else:
        wrong_colours = [c for c in COLOURS if c != o.colour]
        wrong_shapes = [s for s in SHAPES if s != o.shape]
        pick = int(rng.integers(len(wrong_colours) if kind == 0 else len(wrong_shapes)))
        colour, shape = (wrong_colours[pick], o.shape) if kind == 0 else (o.colour, wrong_shapes[pick])
    return tuple(ToyObject(colour, shape, o.size, o.top, o.left) if j == i else p
                 for j, p in enumerate(objects))


def _draw_box(rng: np.random.Generator) -> tuple[int, int, int]:
    """(size, top, left) of an object's bounding box, uniform over the image (this draw order is
    part of the recipe: see _place_objects)."""
    size = int(rng.integers(SIZE_RANGE[0], SIZE_RANGE[1] + 1))
    return size, int(rng.integers(0, IMAGE_SIZE - size + 1)), int(rng.integers(0, IMAGE_SIZE - size + 1))


def _too_close(top, left, size, o: ToyObject) -> bool:
    return not (top + size + MIN_GAP <= o.top or o.top + o.size + MIN_GAP <= top
                or left + size + MIN_GAP <= o.left or o.left + o.size + MIN_GAP <= left)


_YY, _XX = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE]


def background(style: str) -> np.ndarray:
    """[H, W] grey levels of a style's background (fixed phase)."""
    p = PATTERN_PERIOD
    if style == "plain":
        ink = np.zeros_like(_XX, dtype=bool)
    elif style == "striped":
        ink = (_XX % p) < p // 2
    elif style == "checkered":
        ink = ((_XX // (p // 2)) + (_YY // (p // 2))) % 2 == 0
    elif style == "dotted":
        cy, cx = _YY % p - (p - 1) / 2, _XX % p - (p - 1) / 2
        ink = cy * cy + cx * cx <= 1.6
    else:
        raise ConfigError(f"unknown style {style!r}; expected one of {STYLES}")
    return np.where(ink, BACKGROUND_DARK, BACKGROUND_LIGHT).astype(np.float32)


def object_mask(o: ToyObject) -> np.ndarray:
    """[H, W] bool: the pixels of one object (hard edges, no anti-aliasing)."""
    y = _YY - o.top + 0.5
    x = _XX - o.left + 0.5
    s = o.size
    inside_box = (y >= 0) & (y <= s) & (x >= 0) & (x <= s)
    if o.shape == "square":
        return inside_box
    if o.shape == "circle":
        r = s / 2
        return (y - r) ** 2 + (x - r) ** 2 <= r * r
    if o.shape == "triangle":   # upright isosceles: apex at top centre, base at the bottom
        half_width = (y / s) * (s / 2)
        return inside_box & (np.abs(x - s / 2) <= half_width)
    raise ConfigError(f"unknown shape {o.shape!r}; expected one of {SHAPES}")


def render(scene: Scene) -> Rendered:
    grey = background(scene.style)
    image = np.repeat(grey[..., None], 3, axis=2)
    masks = np.zeros((len(scene.objects), IMAGE_SIZE, IMAGE_SIZE), dtype=bool)
    for i, o in enumerate(scene.objects):
        masks[i] = object_mask(o)
        image[masks[i]] = COLOURS[o.colour]
    return Rendered(image.astype(np.float32), masks, [o.label for o in scene.objects], scene.style)


def tokenize(text: str) -> list[int]:
    """Prompt -> token ids, padded to CONTEXT_LENGTH. Filler words are dropped; "" is the empty
    (unconditional) prompt. Unknown words are an error (the vocabulary is closed)."""
    words = [w for w in text.lower().replace(",", " , ").split() if w not in FILLER_WORDS]
    unknown = [w for w in words if w not in TOKEN_ID]
    if unknown:
        raise ConfigError(f"toy prompt {text!r}: unknown word(s) {unknown}; vocabulary: {VOCAB[1:]}")
    if len(words) > CONTEXT_LENGTH:
        raise ConfigError(f"toy prompt {text!r} has {len(words)} words; at most {CONTEXT_LENGTH}")
    return [TOKEN_ID[w] for w in words] + [TOKEN_ID[PAD]] * (CONTEXT_LENGTH - len(words))


def parse_prompt(text: str) -> tuple[list[tuple[str, str]], str | None]:
    """Prompt -> ([(colour, shape), ...], style or None): what an image for it must show."""
    ids = tokenize(text)
    words = [VOCAB[i] for i in ids if i != TOKEN_ID[PAD]]
    objects, style, colour = [], None, None
    for w in words:
        if w in COLOURS:
            colour = w
        elif w in SHAPES:
            if colour is None:
                raise ConfigError(f"toy prompt {text!r}: shape {w!r} has no colour before it")
            objects.append((colour, w))
            colour = None
        elif w in STYLES:
            style = w
    return objects, style
