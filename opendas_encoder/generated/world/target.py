"""Target domain of the generated world: cluttered, lit, noisy scenes with instance masks.

A target scene (default 96 x 96 px) shows 4-7 labelled objects from the domain vocabulary on a
textured floor with unlabelled clutter (pebbles, sticks). It differs from the source domain the
way the paper's target domains differ from CLIP's web images:

* rendering: a warm, dim colour cast with a light gradient across the scene, shaded objects,
  viewpoint foreshortening (squash up to 0.6) and rotation, surface grain, lens blur and sensor
  noise; objects and clutter occlude each other (masks keep the visible part only);
* vocabulary: fine-grained, easily confused classes built from the source words, e.g.
  "blue square" (a door) inside "outlined blue square" (its frame), "red circle" vs "striped
  red circle" vs "orange circle"; outlined objects often frame a filled twin (co-occurrence);
* base / novel split: novel classes share every rendering effect and are named with words the
  CLIP learned from source captions, but never occur in the "train" split: train scenes contain
  base-class objects only (novel objects are not drawn at all, not even as clutter), test
  scenes contain both.

Each labelled instance (at least half of it visible and >= ``min_pixels`` pixels) is one
segment of :class:`TargetDomain`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from scipy.ndimage import gaussian_filter

from ...data.registry import register_dataset
from ...data.segments import Segment, SegmentDataset
from .attributes import CONFUSABLE_COLOURS, CONFUSABLE_SHAPES, STYLES, ObjectKind
from .render import default_placement, downsample, new_canvas, owner_masks, paint_object

if TYPE_CHECKING:
    from .domains import DomainSpec

#: Classes seen during adaptation training.
BASE_CLASSES: List[str] = [
    "red circle", "striped red circle", "orange circle",
    "blue square", "outlined blue square", "purple square",
    "yellow star", "outlined green triangle",
    "purple hexagon", "dotted purple hexagon", "outlined yellow hexagon",
    "striped pink cross", "brown crescent", "dotted green diamond",
]
#: Classes only in the test split; each has a confusable base class and most a novel one.
NOVEL_CLASSES: List[str] = [
    "outlined red circle", "striped orange circle",
    "dotted blue square", "blue hexagon",
    "striped yellow star", "green triangle",
    "orange diamond", "outlined orange diamond",
    "pink cross", "outlined pink cross", "dotted brown crescent",
]

SPLITS = ("train", "test")
_SPLIT_CODE = {"train": 0x7A1, "test": 0x7E5}


def world_vocabulary() -> Dict[str, List[str]]:
    """The target domain vocabulary: ``base``, ``novel`` and ``test`` (= base + novel) class names."""
    return {"base": list(BASE_CLASSES), "novel": list(NOVEL_CLASSES), "test": BASE_CLASSES + NOVEL_CLASSES}


def world_negatives() -> Dict[str, List[str]]:
    """Five hard negative queries per base class: ``{class_name: [five negatives]}``.

    Negatives change one attribute of the class to a look-alike value (another style, a
    confusable colour, a confusable shape), in that order of preference, and are never a class
    of the domain vocabulary (base or novel). All words are source-caption words the CLIP knows.
    """
    taken = [ObjectKind.parse(n) for n in BASE_CLASSES + NOVEL_CLASSES]
    return {name: [k.name for k in negatives]
            for name, negatives in zip(BASE_CLASSES, one_attribute_negatives(taken[:len(BASE_CLASSES)], taken))}


def one_attribute_negatives(base: Sequence[ObjectKind], taken: Sequence[ObjectKind],
                            per_class: int = 5) -> List[List[ObjectKind]]:
    """For each base kind, ``per_class`` kinds that change one of its attributes to a look-alike value.

    Candidates interleave another style, a confusable colour and a confusable shape (so each class
    gets a mix) and skip every kind in ``taken`` (the domain's base and novel classes).
    """
    taken_set = set(taken)
    out: List[List[ObjectKind]] = []
    for k in base:
        styles = [ObjectKind(s, k.colour, k.shape) for s in STYLES if s != k.style]
        colours = [ObjectKind(k.style, c, k.shape) for c in CONFUSABLE_COLOURS[k.colour]]
        shapes = [ObjectKind(k.style, k.colour, s) for s in CONFUSABLE_SHAPES[k.shape]]
        picked: List[ObjectKind] = []
        # interleave so each class gets a mix: style, colour, shape, style, colour, ...
        for group in zip(styles, colours, shapes):
            for cand in group:
                if cand not in taken_set and cand not in picked:
                    picked.append(cand)
        out.append(picked[:per_class])
    return out


@dataclass
class TargetRendering:
    """How target scenes look (the domain shift). Colour factors multiply RGB (0-255)."""

    scene_size: int = 96  # square scene side (pixels)
    objects: Tuple[int, int] = (4, 7)  # labelled-object count range (inclusive)
    radius: Tuple[float, float] = (10.0, 17.0)  # object half-size (pixels)
    cast: Tuple[float, float, float] = (1.0, 0.86, 0.62)  # mean light colour (warm, sodium-like)
    cast_jitter: float = 0.06  # per-scene, per-channel jitter of the cast
    brightness: Tuple[float, float] = (0.6, 0.9)  # global light level
    light_gradient: float = 0.25  # max relative change of light across the scene
    shade: Tuple[float, float] = (0.12, 0.3)  # per-object shading gradient magnitude
    rotation_deg: float = 22.0  # max |rotation|
    squash: Tuple[float, float] = (0.6, 1.0)  # viewpoint foreshortening
    colour_jitter: float = 18.0  # per-object RGB jitter
    grain: float = 0.07  # multiplicative surface grain (std)
    blur_sigma: Tuple[float, float] = (0.5, 0.8)  # lens blur (pixels)
    noise_sigma: Tuple[float, float] = (6.0, 12.0)  # sensor noise (0-255 units)
    vignette: float = 0.0  # relative light loss at the scene corners (lens vignetting; 0 = none)
    pixelate: int = 1  # sensor pixel = this many scene pixels square (block mean, a low-resolution camera; 1 = none)
    clutter: Tuple[int, int] = (4, 10)  # unlabelled pebbles and sticks
    frame_fill_prob: float = 0.6  # an outlined object frames its filled twin (if in the split)
    focus_classes: int = 3  # classes a scene concentrates on (co-occurrence of confusable classes)
    min_visible: float = 0.5  # labelled only if this fraction of the object is visible
    min_pixels: int = 30  # ... and at least this many pixels
    supersample: int = 2


_FLOORS = [(92.0, 100.0, 96.0), (168.0, 154.0, 122.0), (138.0, 138.0, 133.0), (96.0, 72.0, 52.0), (70.0, 84.0, 70.0)]
_CLUTTER_RGB = [(120.0, 118.0, 112.0), (90.0, 88.0, 80.0), (150.0, 140.0, 115.0), (105.0, 110.0, 80.0), (60.0, 58.0, 55.0)]


@dataclass
class TargetInstance:
    """An object in a scene. index: its id in ``TargetScene.instance_map``; labelled: is a segment."""

    index: int
    label: str
    kind: ObjectKind
    area: int  # subsamples painted before occlusion
    visible: int  # pixels in the final instance mask
    visible_fraction: float
    labelled: bool


@dataclass
class TargetScene:
    """A rendered scene: image uint8 (S, S, 3), instance_map int16 (S, S) (-1 = floor/clutter)."""

    image: np.ndarray
    instance_map: np.ndarray
    instances: List[TargetInstance] = field(default_factory=list)
    cast: Tuple[float, float, float] = (1.0, 1.0, 1.0)  # the light colour actually applied

    def mask(self, index: int) -> np.ndarray:
        return self.instance_map == index


def _floor(rng: np.random.Generator, size: int, ss: int) -> np.ndarray:
    """Plank/tile floor texture (size*ss, size*ss, 3) float."""
    base = np.asarray(_FLOORS[rng.integers(len(_FLOORS))])
    n = size * ss
    plank = rng.uniform(6, 14) * ss
    coord = np.arange(n)[:, None] if rng.random() < 0.5 else np.arange(n)[None, :]
    plank_id = np.floor(coord / plank).astype(int)
    shade = rng.uniform(-14, 14, size=plank_id.max() + 1)[plank_id]
    seam = ((coord % plank) < ss).astype(np.float32) * -25.0
    low = gaussian_filter(rng.normal(0, 1, (n, n)), sigma=4 * ss) * 60.0
    tex = base[None, None, :] + (shade + seam + low)[..., None]
    return np.broadcast_to(tex, (n, n, 3)).astype(np.float32).copy()


def _paint_clutter(canvas: np.ndarray, owner: np.ndarray, rng: np.random.Generator, size: int, ss: int, index: int) -> None:
    """A pebble or stick: an elongated ellipse in a dull colour (never an object class look-alike)."""
    cx, cy = rng.uniform(0, size, 2)
    ry = rng.uniform(1.2, 3.5)
    rx = ry * rng.uniform(1.8, 5.0)
    ang = rng.uniform(0, np.pi)
    rgb = np.asarray(_CLUTTER_RGB[rng.integers(len(_CLUTTER_RGB))]) + rng.uniform(-10, 10, 3)
    n = owner.shape[0]
    ext = rx + 1
    x0, x1 = max(0, int((cx - ext) * ss)), min(n, int((cx + ext) * ss) + 1)
    y0, y1 = max(0, int((cy - ext) * ss)), min(n, int((cy + ext) * ss) + 1)
    if x0 >= x1 or y0 >= y1:
        return
    py, px = np.meshgrid((np.arange(y0, y1) + 0.5) / ss - cy, (np.arange(x0, x1) + 0.5) / ss - cx, indexing="ij")
    u = (np.cos(ang) * px + np.sin(ang) * py) / rx
    v = (-np.sin(ang) * px + np.cos(ang) * py) / ry
    cover = u * u + v * v <= 1.0
    canvas[y0:y1, x0:x1][cover] = rgb.astype(np.float32)
    owner[y0:y1, x0:x1][cover] = index


def _pick_kinds(rng: np.random.Generator, classes: Sequence[str], n: int, focus: int) -> List[str]:
    focus_set = list(rng.choice(classes, size=min(focus, len(classes)), replace=False))
    return [str(rng.choice(focus_set)) if rng.random() < 0.7 else str(rng.choice(classes)) for _ in range(n)]


def _place(rng: np.random.Generator, placed: List[Tuple[float, float, float]], r: float, size: int):
    """A centre for an object of radius r overlapping earlier ones by at most ~25 % of the radii."""
    for _ in range(60):
        cx, cy = rng.uniform(r * 0.8, size - r * 0.8, 2)
        if all(np.hypot(cx - px, cy - py) > 0.75 * (r + pr) for px, py, pr in placed):
            return float(cx), float(cy)
    return None


def pixelate(image: np.ndarray, factor: int) -> np.ndarray:
    """Each ``factor`` x ``factor`` block of ``image`` (H, W, C) float replaced by its mean (H, W divisible)."""
    h, w, c = image.shape
    if h % factor or w % factor:
        raise ValueError(f"pixelate: scene side {h}x{w} is not a multiple of the factor {factor}")
    blocks = image.reshape(h // factor, factor, w // factor, factor, c).mean(axis=(1, 3))
    return np.repeat(np.repeat(blocks, factor, axis=0), factor, axis=1)


def render_scene(rng: np.random.Generator, classes: Sequence[str], style: TargetRendering,
                 kinds: Optional[Mapping[str, ObjectKind]] = None) -> TargetScene:
    """Render one target scene whose labelled objects are drawn from ``classes``.

    ``kinds`` maps each class label to the object kind it names (default: the canonical name,
    :meth:`ObjectKind.parse`); domains that phrase their labels differently pass their own.
    """
    size, ss = style.scene_size, style.supersample
    canvas, owner = new_canvas(size, size, ss)
    canvas[:] = _floor(rng, size, ss)
    n_obj = int(rng.integers(style.objects[0], style.objects[1] + 1))
    labels = _pick_kinds(rng, classes, n_obj, style.focus_classes)
    kind_of = {c: (kinds[c] if kinds is not None else ObjectKind.parse(c)) for c in classes}
    label_of = {k: c for c, k in kind_of.items()}
    placed: List[Tuple[float, float, float]] = []
    objs: List[Tuple[str, object]] = []

    def placement(kind: ObjectKind, cx: float, cy: float, r: float):
        shade_dir = rng.uniform(0, 2 * np.pi)
        shade = rng.uniform(*style.shade)
        return default_placement(
            kind, cx, cy, r, rng, colour_jitter=style.colour_jitter,
            rotation=np.deg2rad(rng.uniform(-style.rotation_deg, style.rotation_deg)),
            squash=rng.uniform(*style.squash), squash_axis=rng.uniform(0, np.pi),
            shade=(shade * float(np.cos(shade_dir)), shade * float(np.sin(shade_dir))),
        )

    for label in labels:
        r = float(rng.uniform(*style.radius))
        pos = _place(rng, placed, r, size)
        if pos is None:
            continue
        placed.append((pos[0], pos[1], r))
        kind = kind_of[label]
        objs.append((label, placement(kind, pos[0], pos[1], r)))
        twin = ObjectKind("plain", kind.colour, kind.shape)
        if kind.style == "outlined" and twin in label_of and rng.random() < style.frame_fill_prob:
            inner = placement(twin, pos[0], pos[1], r * rng.uniform(0.5, 0.6))
            p = objs[-1][1]
            inner.rotation, inner.squash, inner.squash_axis = p.rotation, p.squash, p.squash_axis
            objs.append((label_of[twin], inner))

    areas = [paint_object(canvas, owner, obj, i, ss) for i, (_, obj) in enumerate(objs)]
    n_clutter = int(rng.integers(style.clutter[0], style.clutter[1] + 1))
    for j in range(n_clutter):
        _paint_clutter(canvas, owner, rng, size, ss, len(objs) + j)

    image = downsample(canvas, ss)
    inst = owner_masks(owner, ss, len(objs) + n_clutter)
    inst[inst >= len(objs)] = -1  # clutter is not an instance

    cast = np.clip(np.asarray(style.cast) + rng.uniform(-style.cast_jitter, style.cast_jitter, 3), 0.2, 1.5)
    light = rng.uniform(*style.brightness)
    ang = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    field_ = light * (1.0 + style.light_gradient * (np.cos(ang) * xx + np.sin(ang) * yy) * 2.0)
    if style.vignette:
        field_ = field_ * (1.0 - style.vignette * (xx * xx + yy * yy) * 2.0)
    grain = 1.0 + style.grain * gaussian_filter(rng.normal(0, 1, (size, size)), 0.7) / 0.4
    image = image * (field_ * grain)[..., None] * cast[None, None, :]
    sigma = rng.uniform(*style.blur_sigma)
    image = gaussian_filter(image, sigma=(sigma, sigma, 0))
    image = image + rng.normal(0, rng.uniform(*style.noise_sigma), image.shape)
    if style.pixelate > 1:  # after every random draw: the same scene as without it, seen by a coarser sensor
        image = pixelate(image, style.pixelate)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)

    instances = []
    for i, ((label, obj), area) in enumerate(zip(objs, areas)):
        visible = int((inst == i).sum())
        frac = visible * ss * ss / max(area, 1)
        ok = frac >= style.min_visible and visible >= style.min_pixels
        instances.append(TargetInstance(i, label, obj.kind, area, visible, round(float(frac), 4), ok))
    return TargetScene(image=image, instance_map=inst, instances=instances, cast=tuple(float(c) for c in cast))


class TargetDomain(SegmentDataset):
    """Segments of generated target scenes (one per labelled object instance).

    Scenes are rendered when the dataset is built (deterministic: scene ``k`` of a split and
    seed is the same whatever ``n_scenes`` is) and kept in memory (~46 KB per 96 px scene).
    ``classes`` is the base vocabulary for "train" and base + novel for "test".
    ``domain`` names a target domain of :mod:`.domains` (or is a :class:`~.domains.DomainSpec`):
    its vocabulary, label phrasing and rendering; the default ``"cast"`` is the world's original
    target domain. ``rendering`` overrides the domain's rendering.
    """

    def __init__(self, n_scenes: int, seed: int, split: str = "train", rendering: Optional[TargetRendering] = None,
                 domain: Union[str, "DomainSpec"] = "cast"):
        from .domains import get_domain  # domains.py builds its specs from this module

        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if n_scenes < 0:
            raise ValueError(f"n_scenes must be >= 0, got {n_scenes}")
        self.domain = get_domain(domain) if isinstance(domain, str) else domain
        self.split, self.seed = split, int(seed)
        self.rendering = rendering or self.domain.rendering
        vocab = self.domain.vocabulary()
        self._classes = vocab["base"] if split == "train" else vocab["test"]
        kinds = self.domain.kinds()
        # the original world keeps its names (and its scenes: no salt in the seed)
        where = "target" if self.domain.scene_salt is None else self.domain.name
        self.name = f"generated world/{where}/{split}"
        self._source_prefix = f"generated-world/{where}/{split}"
        self.scenes: List[TargetScene] = []
        self._index: List[Tuple[int, int]] = []
        for k in range(n_scenes):
            entropy = [self.seed, _SPLIT_CODE[split], k]
            if self.domain.scene_salt is not None:
                entropy.append(self.domain.scene_salt)
            rng = np.random.default_rng(np.random.SeedSequence(entropy))
            scene = render_scene(rng, self._classes, self.rendering, kinds)
            self.scenes.append(scene)
            self._index.extend((k, inst.index) for inst in scene.instances if inst.labelled)

    @property
    def classes(self) -> List[str]:
        return list(self._classes)

    def __len__(self) -> int:
        return len(self._index)

    def _instance(self, index: int) -> Tuple[int, TargetInstance]:
        k, i = self._index[index]
        return k, self.scenes[k].instances[i]

    def label(self, index: int) -> str:
        return self._instance(index)[1].label

    def source(self, index: int) -> str:
        k, i = self._index[index]
        return f"{self._source_prefix}/scene_{k:05d}#{i}"

    def load(self, index: int) -> Segment:
        if not 0 <= index < len(self._index):
            raise IndexError(f"{self.name}: segment index {index} out of range [0, {len(self._index)})")
        k, inst = self._instance(index)
        scene = self.scenes[k]
        seg = Segment(image=scene.image, mask=scene.mask(inst.index), label=inst.label, source=self.source(index))
        return seg.validate(min_pixels=1)


def make_target_domain(n_scenes: int, seed: int, split: str = "train",
                       rendering: Optional[TargetRendering] = None,
                       domain: Union[str, "DomainSpec"] = "cast") -> TargetDomain:
    """``n_scenes`` target scenes of ``split`` ("train": base classes only; "test": base + novel) of the
    target domain ``domain`` (:func:`.domains.domain_names`; default ``"cast"``, the original world)."""
    return TargetDomain(n_scenes, seed, split, rendering, domain)


@register_dataset("generated-world", needs_root=False, generated=True)
def _build(root: Optional[str], split: Optional[str], **kw) -> TargetDomain:
    """The dataset ``"generated-world"``: ``make_target_domain(split=split or "train", **kw)``; the option
    ``domain`` picks a generated target domain (``opendas_encoder.generated.world.domains``)."""
    if root is not None:
        raise ValueError(f"dataset 'generated-world' is generated, not read: it takes no root (got {root!r})")
    return make_target_domain(split=split or "train", **kw)
