"""The attribute words of the generated world: colours, shapes, styles, sizes, counts.

Every object of both domains is a (style, colour, shape) triple; its canonical name is
"[style] colour shape" with the plain style left unsaid ("red circle", "striped red circle").
Colours are RGB on the 0-255 scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple

#: Object colours (nominal RGB, 0-255).
COLOURS: Dict[str, Tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (240, 135, 20),
    "yellow": (235, 215, 35),
    "green": (45, 165, 60),
    "blue": (40, 80, 215),
    "purple": (135, 50, 175),
    "pink": (240, 130, 190),
    "brown": (125, 78, 40),
}

#: Shapes, drawn from signed distance functions in ``render.py``.
SHAPES: List[str] = ["circle", "square", "triangle", "diamond", "star", "cross", "hexagon", "crescent"]

#: Surface styles: plain (no word), striped, dotted, outlined (hollow, only the border drawn).
STYLES: List[str] = ["plain", "striped", "dotted", "outlined"]

SIZES: List[str] = ["small", "large"]

COUNT_WORDS: Dict[int, str] = {1: "one", 2: "two", 3: "three"}

#: Colours whose pattern (stripes, dots) is drawn dark; the others get light patterns.
LIGHT_COLOURS = frozenset({"yellow", "orange", "pink"})

#: Attribute values that look alike: used for hard negatives and confusable class families.
CONFUSABLE_COLOURS: Dict[str, List[str]] = {
    "red": ["orange", "pink", "brown"],
    "orange": ["red", "yellow", "brown"],
    "yellow": ["orange", "green", "brown"],
    "green": ["blue", "yellow", "brown"],
    "blue": ["purple", "green", "pink"],
    "purple": ["blue", "pink", "red"],
    "pink": ["red", "purple", "orange"],
    "brown": ["orange", "red", "purple"],
}
CONFUSABLE_SHAPES: Dict[str, List[str]] = {
    "circle": ["hexagon", "crescent", "square"],
    "square": ["diamond", "hexagon", "cross"],
    "triangle": ["diamond", "star", "crescent"],
    "diamond": ["square", "triangle", "hexagon"],
    "star": ["cross", "triangle", "hexagon"],
    "cross": ["star", "square", "diamond"],
    "hexagon": ["circle", "square", "diamond"],
    "crescent": ["circle", "triangle", "star"],
}


@dataclass(frozen=True)
class ObjectKind:
    """What an object is: style, colour and shape (size and count are per image)."""

    style: str
    colour: str
    shape: str

    def __post_init__(self):
        if self.style not in STYLES:
            raise ValueError(f"unknown style {self.style!r}; expected one of {STYLES}")
        if self.colour not in COLOURS:
            raise ValueError(f"unknown colour {self.colour!r}; expected one of {sorted(COLOURS)}")
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; expected one of {SHAPES}")

    @property
    def name(self) -> str:
        """Canonical name, e.g. "red circle" or "outlined blue square"."""
        words = [] if self.style == "plain" else [self.style]
        return " ".join(words + [self.colour, self.shape])

    @classmethod
    def parse(cls, name: str) -> "ObjectKind":
        """Inverse of :attr:`name`; raises ValueError for anything else."""
        words = name.split()
        if len(words) == 2:  # the plain style is never said
            words = ["plain"] + words
        elif len(words) != 3 or words[0] == "plain":
            raise ValueError(f"not an object name of the generated world: {name!r}")
        return cls(*words)


def plural(shape: str) -> str:
    """English plural of a shape word ("cross" -> "crosses")."""
    return shape + ("es" if shape.endswith("s") else "s")


def all_kinds() -> List[ObjectKind]:
    """Every (style, colour, shape) combination, in a fixed order (256 kinds)."""
    return [ObjectKind(st, c, sh) for st in STYLES for c in COLOURS for sh in SHAPES]
