"""Source domain of the generated world: clean captioned images for contrastive pretraining.

Each image shows one to three identical objects (same style, colour, shape and size class) on a
plain background; its caption names them compositionally from templates ("a photo of two small
striped red triangles.", "three dotted crescents on a black background."). Some captions leave
out the colour, the shape or the size; :func:`caption_matches` says which images a caption fits,
so a contrastive loss can treat every fitting image as a positive.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from .attributes import COLOURS, COUNT_WORDS, SHAPES, SIZES, STYLES, ObjectKind, plural
from .render import default_placement, downsample, new_canvas, paint_object, to_uint8

#: Plain backgrounds (RGB 0-255); "gray" is close to CLIP's mean pixel, the fill of segment crops.
BACKGROUNDS = {
    "gray": (123.0, 117.0, 104.0),
    "light gray": (188.0, 188.0, 184.0),
    "dark gray": (62.0, 62.0, 64.0),
    "white": (242.0, 242.0, 238.0),
    "black": (18.0, 18.0, 20.0),
    "beige": (214.0, 200.0, 172.0),
}
_BG_NAMES = list(BACKGROUNDS)
_BG_PROBS = np.array([0.4, 0.12, 0.12, 0.12, 0.12, 0.12])

#: Object diameter as a fraction of the image side, per (count, size).
_DIAMETER = {
    (1, "small"): (0.30, 0.45), (1, "large"): (0.62, 0.95),
    (2, "small"): (0.26, 0.36), (2, "large"): (0.42, 0.50),
    (3, "small"): (0.24, 0.32), (3, "large"): (0.36, 0.40),
}
_COUNT_PROBS = np.array([0.7, 0.2, 0.1])

#: Attribute order of the integer codes used by :func:`caption_matches` (-1 = not stated).
ATTRIBUTES = ("style", "colour", "shape", "size", "count")
_VALUES = {"style": STYLES, "colour": list(COLOURS), "shape": SHAPES, "size": SIZES, "count": [1, 2, 3]}

_TEMPLATES = [
    ("a photo of {x}.", 0.40),
    ("{x}.", 0.12),
    ("a picture of {x}.", 0.10),
    ("an image of {x}.", 0.08),
    ("a photo of {x} on a {bg} background.", 0.10),
    ("{x} on a {bg} background.", 0.08),
    ("a rendering of {x}.", 0.06),
    ("there is {x} in the picture.", 0.06),
]
_TEMPLATE_PROBS = np.array([p for _, p in _TEMPLATES]) / sum(p for _, p in _TEMPLATES)


@dataclass
class SourceSample:
    """One source image with its attributes. image: uint8 (S, S, 3)."""

    image: np.ndarray
    kind: ObjectKind
    size: str
    count: int
    background: str

    def codes(self) -> np.ndarray:
        """Integer codes (5,) in :data:`ATTRIBUTES` order."""
        vals = {"style": self.kind.style, "colour": self.kind.colour, "shape": self.kind.shape,
                "size": self.size, "count": self.count}
        return np.array([_VALUES[a].index(vals[a]) for a in ATTRIBUTES], dtype=np.int64)


def _place_objects(rng: np.random.Generator, count: int, diameter: Tuple[float, float], side: int):
    """Centres and radii (pixels) of ``count`` non-overlapping objects inside the image."""
    for _ in range(200):
        radii = rng.uniform(*diameter, size=count) * side / 2
        centres = [rng.uniform(r * 1.05, side - r * 1.05, size=2) for r in radii]
        ok = all(
            np.hypot(*(centres[i] - centres[j])) > (radii[i] + radii[j]) * 1.02
            for i in range(count) for j in range(i)
        )
        if ok:
            return centres, radii
    # dense fallback: a fixed row layout that always fits
    r = min(diameter[0] * side / 2, side / (2 * count + 0.5))
    centres = [np.array([(i + 0.5) * side / count, side / 2]) for i in range(count)]
    return centres, np.full(count, r)


def render_source_sample(
    rng: np.random.Generator,
    image_size: int = 32,
    kind: Optional[ObjectKind] = None,
    count: Optional[int] = None,
    size: Optional[str] = None,
    supersample: int = 2,
) -> SourceSample:
    """Draw one source image; unspecified attributes are sampled uniformly (count: 70/20/10 %)."""
    if kind is None:
        kind = ObjectKind(STYLES[rng.integers(4)], list(COLOURS)[rng.integers(8)], SHAPES[rng.integers(8)])
    count = int(rng.choice([1, 2, 3], p=_COUNT_PROBS)) if count is None else count
    size = SIZES[rng.integers(2)] if size is None else size
    bg = _BG_NAMES[rng.choice(len(_BG_NAMES), p=_BG_PROBS)]
    bg_rgb = np.clip(np.asarray(BACKGROUNDS[bg]) + rng.uniform(-8, 8, 3), 0, 255)
    canvas, owner = new_canvas(image_size, image_size, supersample, bg_rgb)
    centres, radii = _place_objects(rng, count, _DIAMETER[(count, size)], image_size)
    for i, (c, r) in enumerate(zip(centres, radii)):
        obj = default_placement(
            kind, float(c[0]), float(c[1]), float(r), rng,
            rotation=np.deg2rad(rng.uniform(-10, 10)),
            squash=rng.uniform(0.9, 1.0),
            squash_axis=rng.uniform(0, np.pi),
        )
        paint_object(canvas, owner, obj, i, supersample)
    image = to_uint8(downsample(canvas, supersample))
    return SourceSample(image=image, kind=kind, size=size, count=count, background=bg)


def make_caption(sample: SourceSample, rng: np.random.Generator) -> Tuple[str, np.ndarray]:
    """A templated caption for ``sample`` and its stated-attribute codes (5,), -1 = left out.

    The style is always stated (no style word means plain; "solid" is a rare synonym) and the
    count always follows from the grammar; with probability 0.08 each the colour or the shape is
    left out, and the size with probability 0.5.
    """
    codes = sample.codes()
    stated = codes.copy()
    drop_colour = rng.random() < 0.08
    drop_shape = (not drop_colour) and rng.random() < 0.08
    drop_size = rng.random() < 0.5
    words = []
    if not drop_size:
        words.append(sample.size)
    else:
        stated[3] = -1
    style = sample.kind.style
    if style != "plain":
        words.append(style)
    elif rng.random() < 0.15:
        words.append("solid")
    if drop_colour:
        stated[1] = -1
    else:
        words.append(sample.kind.colour)
    many = sample.count > 1
    if drop_shape:
        stated[2] = -1
        words.append("shapes" if many else rng.choice(["shape", "object"]))
    else:
        words.append(plural(sample.kind.shape) if many else sample.kind.shape)
    if many:
        det = COUNT_WORDS[sample.count]
    elif rng.random() < 0.15:
        det = "one"
    else:
        # "an" before vowels only half of the time: bare prompts read "a photo of a outlined ..."
        det = "an" if words[0][0] in "aeiou" and rng.random() < 0.5 else "a"
    phrase = det + " " + " ".join(words)
    template = _TEMPLATES[rng.choice(len(_TEMPLATES), p=_TEMPLATE_PROBS)][0]
    caption = template.format(x=phrase, bg=sample.background)
    if rng.random() < 0.3:
        caption = caption[:-1]  # no final period, like bare prompts "a photo of a red circle"
    return caption, stated


def caption_matches(stated: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Which images fit which captions: stated (T, 5), codes (I, 5) -> bool (I, T)."""
    s = stated[None, :, :]
    c = codes[:, None, :]
    return ((s < 0) | (s == c)).all(-1)


def sibling_kind(kind: ObjectKind, rng: np.random.Generator) -> ObjectKind:
    """``kind`` with exactly one attribute changed: shape (p=0.5), style (0.3) or colour (0.2)."""
    which = rng.choice(3, p=[0.5, 0.3, 0.2])
    if which == 0:
        return ObjectKind(kind.style, kind.colour, str(rng.choice([s for s in SHAPES if s != kind.shape])))
    if which == 1:
        return ObjectKind(str(rng.choice([s for s in STYLES if s != kind.style])), kind.colour, kind.shape)
    return ObjectKind(kind.style, str(rng.choice([c for c in COLOURS if c != kind.colour])), kind.shape)


def sample_source_batch(rng: np.random.Generator, n: int, image_size: int = 32, sibling_fraction: float = 0.0):
    """A training batch: images uint8 (n, S, S, 3), captions list[str], codes (n, 5), stated (n, 5).

    With ``sibling_fraction`` f, the last ~f*n samples are siblings of the first ones: the same
    object kind with exactly one attribute changed (hard negatives for the contrastive loss).
    """
    n_sib = int(round(min(max(sibling_fraction, 0.0), 0.5) * n))
    samples = [render_source_sample(rng, image_size) for _ in range(n - n_sib)]
    samples += [render_source_sample(rng, image_size, kind=sibling_kind(samples[i].kind, rng)) for i in range(n_sib)]
    caps = [make_caption(s, rng) for s in samples]
    images = np.stack([s.image for s in samples])
    codes = np.stack([s.codes() for s in samples])
    stated = np.stack([c[1] for c in caps])
    return images, [c[0] for c in caps], codes, stated


def make_source_domain(n: int, seed: int, image_size: int = 32) -> List[Tuple[np.ndarray, str]]:
    """``n`` captioned source images (uint8 (S, S, 3), caption), deterministic for ``seed``."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5011CE]))
    out = []
    for _ in range(n):
        sample = render_source_sample(rng, image_size)
        out.append((sample.image, make_caption(sample, rng)[0]))
    return out
