"""A deterministic renderer of small synthetic scenes, their captions, edit pairs and the fixed split.

A scene is a uniform background (one of :data:`BACKGROUNDS`) with one or two objects (the renderer
takes up to three; :data:`MAX_OBJECTS` is what the data and the model use), each a shape from
:data:`SHAPES` in a colour from :data:`COLOURS`, small or large, at a position where it does not
touch another object. Edges are anti-aliased by 4x4 supersampling, so the renders are smooth but
exactly reproducible (pure numpy, no randomness inside :func:`render`).

Captions have a fixed word order and a closed vocabulary, objects listed left to right::

    "a large red circle and a small blue square on a gray background"

Split: scenes are drawn from integer seeds (:func:`scene_from_seed`). Training uses seeds from 0
upwards, skipping every scene whose caption is a held-out caption (:func:`is_held_out_caption`:
one two-object caption in eight, by a fixed hash); held-out scenes come from seeds at
:data:`HELD_OUT_SEED_START` and up, which training never reaches.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "EDIT_KINDS",
    "HELD_OUT_SEED_START",
    "IMAGE_SIZE",
    "MAX_OBJECTS",
    "SHAPES",
    "SIZES",
    "EditPair",
    "Scene",
    "SceneObject",
    "caption",
    "footprint",
    "held_out_edit_pairs",
    "held_out_scenes",
    "is_held_out_caption",
    "make_edit",
    "render",
    "render_batch",
    "scene_from_seed",
    "training_scenes",
]

IMAGE_SIZE = 32
MAX_OBJECTS = 2  # the data the model learns from: 1 or 2 objects (see docs/scenes.md for why not 3)
RENDER_MAX_OBJECTS = 3  # what render() and caption() accept
HELD_OUT_SEED_START = 1_000_000_000

# Saturated object colours, pairwise far apart and far from every background (the judge segments by colour).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (255, 140, 0),
    "yellow": (240, 230, 30),
    "green": (30, 180, 40),
    "blue": (30, 80, 240),
    "purple": (160, 40, 200),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "gray": (128, 128, 128),
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "navy": (10, 20, 80),
}
SHAPES = ("circle", "square", "triangle")
SIZES: dict[str, float] = {"small": 4.0, "large": 7.0}  # half-extent in pixels
GAP = 2.0  # minimum distance in pixels between two objects' bounding boxes
EDIT_KINDS = ("colour", "shape", "size", "background", "add", "remove")
_SUPER = 4  # supersampling factor per axis


@dataclass(frozen=True)
class SceneObject:
    """One object: shape, colour and size names, centre (x, y) in pixels."""

    shape: str
    colour: str
    size: str
    x: float
    y: float

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("shape", self.shape, SHAPES),
            ("colour", self.colour, tuple(COLOURS)),
            ("size", self.size, tuple(SIZES)),
        ):
            if value not in allowed:
                raise ValueError(f"object {name} must be one of {', '.join(allowed)}; got {value!r}")

    @property
    def half(self) -> float:
        return SIZES[self.size]

    def box(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1): the bounding box of the shape."""
        h = self.half
        return self.x - h, self.y - h, self.x + h, self.y + h

    def words(self) -> tuple[str, str, str]:
        return self.size, self.colour, self.shape


@dataclass(frozen=True)
class Scene:
    """A background colour name and objects, kept sorted left to right (the caption's order)."""

    background: str
    objects: tuple[SceneObject, ...] = field(default_factory=tuple)
    size: int = IMAGE_SIZE

    def __post_init__(self) -> None:
        if self.background not in BACKGROUNDS:
            raise ValueError(f"background must be one of {', '.join(BACKGROUNDS)}; got {self.background!r}")
        if not 1 <= len(self.objects) <= RENDER_MAX_OBJECTS:
            raise ValueError(f"a scene has 1 to {RENDER_MAX_OBJECTS} objects, got {len(self.objects)}")
        object.__setattr__(self, "objects", tuple(sorted(self.objects, key=lambda o: (o.x, o.y))))
        for o in self.objects:
            x0, y0, x1, y1 = o.box()
            if x0 < 0 or y0 < 0 or x1 > self.size or y1 > self.size:
                raise ValueError(f"object {o} does not fit inside the {self.size}x{self.size} image")
        for i, a in enumerate(self.objects):
            for b in self.objects[i + 1 :]:
                if _too_close(a, b):
                    raise ValueError(f"objects {a} and {b} are closer than {GAP} pixels")


def _too_close(a: SceneObject, b: SceneObject) -> bool:
    ax0, ay0, ax1, ay1 = a.box()
    bx0, by0, bx1, by1 = b.box()
    return not (ax1 + GAP <= bx0 or bx1 + GAP <= ax0 or ay1 + GAP <= by0 or by1 + GAP <= ay0)


def caption(scene: Scene) -> str:
    """The scene's caption: objects left to right, then the background."""
    parts = [" ".join(("a",) + o.words()) for o in scene.objects]
    return " and ".join(parts) + f" on a {scene.background} background"


# ----- rendering ---------------------------------------------------------------------------------------
def _inside(shape: str, dx: np.ndarray, dy: np.ndarray, h: float) -> np.ndarray:
    """Which sub-pixel offsets (dx, dy) from the centre fall inside ``shape`` of half-extent ``h``."""
    if shape == "circle":
        return dx * dx + dy * dy <= h * h
    if shape == "square":
        s = 0.86 * h  # about the circle's area, so sizes look alike across shapes
        return (np.abs(dx) <= s) & (np.abs(dy) <= s)
    # An upright isosceles triangle filling the bounding box: apex at the top, base at the bottom.
    return (dy <= h) & (np.abs(dx) <= (dy + h) / 2)


def coverage(obj: SceneObject, size: int = IMAGE_SIZE) -> np.ndarray:
    """The fraction (0..1) of each pixel the object covers, (size, size) float64."""
    sub = (np.arange(size * _SUPER) + 0.5) / _SUPER
    dy, dx = np.meshgrid(sub - obj.y, sub - obj.x, indexing="ij")
    inside = _inside(obj.shape, dx, dy, obj.half).astype(np.float64)
    return inside.reshape(size, _SUPER, size, _SUPER).mean(axis=(1, 3))


def footprint(obj: SceneObject, size: int = IMAGE_SIZE) -> np.ndarray:
    """Boolean (size, size): the pixels the object touches at all."""
    return coverage(obj, size) > 0


def render(scene: Scene) -> np.ndarray:
    """The scene as uint8 (H, W, 3): the background with each object blended in by its coverage."""
    img = np.empty((scene.size, scene.size, 3), dtype=np.float64)
    img[:] = BACKGROUNDS[scene.background]
    for o in scene.objects:  # objects never touch, so the order does not matter
        c = coverage(o, scene.size)[..., None]
        img = img * (1 - c) + np.asarray(COLOURS[o.colour], dtype=np.float64) * c
    return np.rint(img).clip(0, 255).astype(np.uint8)


def render_batch(scenes: Sequence[Scene]) -> np.ndarray:
    """uint8 (B, 3, H, W), the layout the model takes."""
    return np.stack([render(s).transpose(2, 0, 1) for s in scenes])


# ----- random scenes and the split ----------------------------------------------------------------------
def _place(
    rng: np.random.Generator,
    shape: str,
    colour: str,
    size: str,
    others: Sequence[SceneObject],
    image_size: int,
    tries: int = 50,
) -> SceneObject | None:
    """An object at a random position that keeps GAP from ``others`` (None if none found in ``tries``)."""
    h = SIZES[size]
    for _ in range(tries):
        x, y = rng.uniform(h + 0.5, image_size - h - 0.5, size=2)
        obj = SceneObject(shape, colour, size, round(float(x), 2), round(float(y), 2))
        if not any(_too_close(obj, o) for o in others):
            return obj
    return None


def random_scene(rng: np.random.Generator, max_objects: int = MAX_OBJECTS, image_size: int = IMAGE_SIZE) -> Scene:
    """A scene with uniformly drawn attributes and 1..``max_objects`` objects."""
    while True:
        background = str(rng.choice(list(BACKGROUNDS)))
        # More scenes with more objects (weights 1:2:3): those are the hard ones to learn.
        counts = np.arange(1, max_objects + 1)
        n = int(rng.choice(counts, p=counts / counts.sum()))
        objects: list[SceneObject] = []
        for _ in range(n):
            obj = _place(
                rng,
                str(rng.choice(SHAPES)),
                str(rng.choice(list(COLOURS))),
                str(rng.choice(list(SIZES))),
                objects,
                image_size,
            )
            if obj is None:
                break
            objects.append(obj)
        if len(objects) == n:
            return Scene(background, tuple(objects), image_size)


def scene_from_seed(seed: int, max_objects: int = MAX_OBJECTS) -> Scene:
    """The scene of integer ``seed`` (the same on every machine: numpy's PCG64)."""
    return random_scene(np.random.default_rng(int(seed)), max_objects)


def is_held_out_caption(text: str) -> bool:
    """Held-out captions: one two-object caption in eight (by CRC-32); training never sees them."""
    return " and " in text and zlib.crc32(text.encode()) % 8 == 0


def training_scenes(n: int, start: int = 0) -> list[Scene]:
    """``n`` training scenes: seeds ``start``, ``start + 1``... skipping held-out captions."""
    out: list[Scene] = []
    seed = start
    while len(out) < n:
        if seed >= HELD_OUT_SEED_START:
            raise ValueError("training seeds ran into the held-out seed range")
        s = scene_from_seed(seed)
        if not is_held_out_caption(caption(s)):
            out.append(s)
        seed += 1
    return out


def held_out_scenes(n: int, unseen_only: bool = False) -> list[Scene]:
    """``n`` held-out scenes from seeds HELD_OUT_SEED_START, ...; ``unseen_only``: only held-out captions."""
    out: list[Scene] = []
    seed = HELD_OUT_SEED_START
    while len(out) < n:
        s = scene_from_seed(seed)
        if not unseen_only or is_held_out_caption(caption(s)):
            out.append(s)
        seed += 1
    return out


# ----- edit pairs ---------------------------------------------------------------------------------------
@dataclass
class EditPair:
    """A source scene and its edited target, rendered, with captions, changed words and the edit mask.

    ``changed_words`` is (source words, target words): the caption words the edit replaces, e.g.
    (("red",), ("blue",)), or ((), ("small", "blue", "square")) for an added object. ``mask`` is
    True exactly where the two renders differ; ``region`` is the union of the footprints of what
    changed (the whole background for a background edit).
    """

    kind: str
    source: Scene
    target: Scene
    source_image: np.ndarray
    target_image: np.ndarray
    source_caption: str
    target_caption: str
    changed_words: tuple[tuple[str, ...], tuple[str, ...]]
    mask: np.ndarray
    region: np.ndarray


def _other(rng: np.random.Generator, options: Sequence[str], current: str) -> str:
    return str(rng.choice([o for o in options if o != current]))


def make_edit(scene: Scene, kind: str, rng: np.random.Generator) -> EditPair:
    """An edit of ``kind`` (one of :data:`EDIT_KINDS`) of ``scene``, choices drawn from ``rng``.

    Raises ValueError when the scene admits no such edit (no room to grow or add an object, a single
    object to remove, an unknown kind).
    """
    if kind not in EDIT_KINDS:
        raise ValueError(f"edit kind must be one of {', '.join(EDIT_KINDS)}; got {kind!r}")
    objs = list(scene.objects)
    changed_objs: list[SceneObject] = []
    if kind == "background":
        new_bg = _other(rng, list(BACKGROUNDS), scene.background)
        target = replace(scene, background=new_bg)
        words: tuple[tuple[str, ...], tuple[str, ...]] = ((scene.background,), (new_bg,))
    elif kind in ("colour", "shape", "size"):
        order = [int(i) for i in rng.permutation(len(objs))]
        found: Scene | None = None
        for i in order:
            o = objs[i]
            if kind == "colour":
                new = replace(o, colour=_other(rng, list(COLOURS), o.colour))
            elif kind == "shape":
                new = replace(o, shape=_other(rng, SHAPES, o.shape))
            else:
                new = replace(o, size="large" if o.size == "small" else "small")
            rest = objs[:i] + objs[i + 1 :]
            h = new.half
            fits = h <= new.x <= scene.size - h and h <= new.y <= scene.size - h
            if fits and not any(_too_close(new, r) for r in rest):
                found = replace(scene, objects=tuple(rest + [new]))
                changed_objs = [o, new]
                attr = {"colour": "colour", "shape": "shape", "size": "size"}[kind]
                words = ((getattr(o, attr),), (getattr(new, attr),))
                break
        if found is None:
            raise ValueError(f"no object of this scene can change {kind} without touching another or the border")
        target = found
    elif kind == "add":
        if len(objs) >= MAX_OBJECTS:
            raise ValueError(f"the scene already has {len(objs)} objects (at most {MAX_OBJECTS})")
        new_obj = _place(
            rng,
            str(rng.choice(SHAPES)),
            str(rng.choice(list(COLOURS))),
            str(rng.choice(list(SIZES))),
            objs,
            scene.size,
            tries=200,
        )
        if new_obj is None:
            raise ValueError("no room to add an object to this scene")
        target = replace(scene, objects=tuple(objs + [new_obj]))
        changed_objs = [new_obj]
        words = ((), new_obj.words())
    else:  # remove
        if len(objs) < 2:
            raise ValueError("cannot remove the only object of a scene")
        i = int(rng.integers(len(objs)))
        target = replace(scene, objects=tuple(objs[:i] + objs[i + 1 :]))
        changed_objs = [objs[i]]
        words = (objs[i].words(), ())
    src_img, tgt_img = render(scene), render(target)
    if kind == "background":
        region = ~np.logical_or.reduce([footprint(o, scene.size) for o in objs])
        region |= (src_img != tgt_img).any(-1)  # anti-aliased object edges show the background too
    else:
        region = np.logical_or.reduce([footprint(o, scene.size) for o in changed_objs])
    return EditPair(
        kind,
        scene,
        target,
        src_img,
        tgt_img,
        caption(scene),
        caption(target),
        words,
        (src_img != tgt_img).any(-1),
        region,
    )


def held_out_edit_pairs(n: int, kinds: Sequence[str] = EDIT_KINDS) -> list[EditPair]:
    """``n`` edit pairs of held-out scenes, cycling through ``kinds`` (scenes that admit no such edit are skipped)."""
    out: list[EditPair] = []
    seed = HELD_OUT_SEED_START
    k = 0
    while len(out) < n:
        scene = scene_from_seed(seed)
        rng = np.random.default_rng([seed, k])
        try:
            out.append(make_edit(scene, kinds[k % len(kinds)], rng))
            k += 1
        except ValueError:
            pass
        seed += 1
    return out


def iter_training_scenes(start: int = 0) -> Iterator[Scene]:
    """Training scenes from seed ``start`` on, without end."""
    seed = start
    while seed < HELD_OUT_SEED_START:
        s = scene_from_seed(seed)
        if not is_held_out_caption(caption(s)):
            yield s
        seed += 1
