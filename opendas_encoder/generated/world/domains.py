"""A suite of generated target domains: each a spec (vocabulary, label phrasing, rendering).

Every domain is procedurally **generated** (scenes of the world's styled shapes, see ``target.py``)
and shifts away from the source captions the world CLIP was pretrained on in its own way. A
:class:`DomainSpec` fixes everything a domain is: its base and novel classes (as object kinds), how
its labels phrase a kind (:class:`Phrasing`), how its scenes look (:class:`~.target.TargetRendering`)
and a salt that keeps its scenes apart from the other domains'. ``build_domain(name, n_scenes, seed,
split)`` makes its segments; ``get_domain(name)`` the spec; ``domain_names()`` lists them.

The named domains and the real shift each one models (docs/domains.md has the same text and the
measured zero-shot accuracy of the world CLIP on each):

* ``cast`` - the original target domain of the world, kept bit-identical so that earlier numbers
  stay comparable: a warm, dim colour cast with a light gradient, shading, viewpoint squash,
  grain, mild blur and noise, clutter and occlusion; a fine-grained vocabulary of look-alike
  classes named with the source captions' own words. It models an indoor robot camera under
  artificial light (ScanNet++ offices): mostly a visual shift, with a few entangled names
  ("blue square" / "outlined blue square", the door and its frame).

* ``frames`` - a text-side shift. The scenes are lit almost neutrally (a mild visual shift), but
  the domain's annotators name an outlined object by its filled twin plus the head noun "frame"
  ("blue square frame", where the captions say "outlined blue square"), and most classes come in
  such pairs that co-occur (a frame around its filled twin). The world CLIP never read "frame"
  (its token embedding never received a gradient), so the zero-shot text embeddings of "X" and
  "X frame" nearly coincide (cosine 0.987 on average over the 64 colour-shape pairs): the paper's
  "door" / "door frame" entanglement. Visual adaptation against the frozen text can hardly tell a
  frame from its twin; text adaptation can learn what the domain's word means, for base and novel
  frames alike.

* ``siblings`` - a fine-grained domain: every novel class is a one-attribute neighbour of a base
  class (another style, a confusable colour or a confusable shape; checked from the attributes by
  the tests). It models a domain where the new queries are close variants of the annotated ones
  (a "swivel chair" next to the annotated "office chair"), where a method that over-fits the base
  names pays for it on their novel neighbours. Rendered as cast.

* ``night`` - a strong visual shift: the same vocabulary as cast, seen through another camera:
  a dim, green-tinted, blurry and noisy low-light sensor with lens vignetting (a surveillance or
  night-time driving camera, KITTI-360 at dusk). Zero-shot CLIP is weak because the images are
  far from the source images, not because of the names.

Two held-out domains (``HELD_OUT_DOMAINS``), committed before any training variant ran on them: the
default of the library is chosen on the four above (docs/selection.md) and only checked on these.

* ``distant`` - a visual shift of another kind than light: geometry and resolution. A far, overhead,
  low-resolution camera: objects are small (radius 8-12 px instead of 10-17), at any rotation, and the
  sensor has one pixel per 4 x 4 scene pixels (a 24 x 24 sensor, block means after noise), under an
  almost neutral light; cast's vocabulary and source-caption names. It models a ceiling or drone camera
  that sees the annotated objects from far away (a warehouse or a lab filmed from above). Zero-shot
  CLIP is weak because the shapes are small, turned and blocky, not because of the light or the names.

* ``synonyms`` - a text-side shift other than a head noun: the domain's annotators name four of the
  eight colours with their own words ("crimson" for red, "navy" for blue, "olive" for green, "violet"
  for purple), words the source captions never use (their token embeddings never received a gradient),
  in base and novel classes alike; the other colours keep the captions' words. Rendered almost
  neutrally. It models a vocabulary written by a domain's own annotators (a catalogue's names, a trade's
  jargon) where zero-shot CLIP cannot read an attribute it sees well: "crimson star" and "navy star"
  nearly coincide as text. What a renamed colour means can be learnt on the base classes and carries to
  the novel classes that use the same word.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, FrozenSet, List, Optional, Sequence, Tuple, Union

from ...core.registry import Registry
from .attributes import COLOURS, STYLES, ObjectKind, all_kinds
from .target import BASE_CLASSES, NOVEL_CLASSES, TargetDomain, TargetRendering, one_attribute_negatives

#: Description sentences of a class (``DomainSpec.describe``): source-caption templates and size words around the
#: captions' name of its kind.
DESCRIPTION_TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "a rendering of a {}.", "there is a {} in the picture.",
                         "a photo of a small {}.", "a photo of a large {}.", "a {} on a gray background.")

#: Every number measured on these domains is on generated data; reports say so with this label.
GENERATED_LABEL = "generated"


@dataclass(frozen=True)
class Phrasing:
    """How a domain's labels name an object kind (style, colour, shape).

    ``style_words``: the word for each style ("" = unsaid); ``trailing``: styles whose word follows
    the shape as a head noun ("blue square frame") instead of preceding the colour ("outlined blue
    square", the source captions' order); ``colour_words``: colours the domain names with another
    word ("crimson" for red; a colour not listed keeps its own word).
    """

    style_words: Tuple[Tuple[str, str], ...] = tuple((s, "" if s == "plain" else s) for s in STYLES)
    trailing: FrozenSet[str] = frozenset()
    colour_words: Tuple[Tuple[str, str], ...] = ()

    def __post_init__(self):
        words = dict(self.style_words)
        if sorted(words) != sorted(STYLES):
            raise ValueError(f"Phrasing.style_words must give a word for each style {STYLES}, got {sorted(words)}")
        unknown = set(self.trailing) - set(STYLES)
        if unknown:
            raise ValueError(f"Phrasing.trailing: unknown styles {sorted(unknown)}")
        colours = dict(self.colour_words)
        if set(colours) - set(COLOURS) or len(set(colours.values())) != len(colours) \
                or set(colours.values()) & (set(COLOURS) - set(colours)):
            raise ValueError(f"Phrasing.colour_words must rename known colours to distinct new words, got {colours}")

    def name(self, kind: ObjectKind) -> str:
        word = dict(self.style_words)[kind.style]
        colour = dict(self.colour_words).get(kind.colour, kind.colour)
        if not word:
            return f"{colour} {kind.shape}"
        if kind.style in self.trailing:
            return f"{colour} {kind.shape} {word}"
        return f"{word} {colour} {kind.shape}"


#: The source captions' phrasing: ``ObjectKind.name``.
CANONICAL = Phrasing()


@dataclass(frozen=True)
class DomainSpec:
    """A generated target domain: vocabulary (base / novel object kinds), label phrasing, rendering.

    ``scene_salt``: extra seed entropy so each domain renders its own scenes (None only for
    ``cast``, whose scenes stay those of the original world). Negative queries
    (:meth:`negatives`) are one-attribute look-alikes of each base class that are no class of the
    domain, phrased as the domain phrases its labels.
    """

    name: str
    summary: str
    rationale: str
    base: Tuple[ObjectKind, ...]
    novel: Tuple[ObjectKind, ...]
    rendering: TargetRendering = field(default_factory=TargetRendering)
    phrasing: Phrasing = CANONICAL
    scene_salt: Optional[int] = None
    held_out: bool = False  # a held-out domain: never used to choose the library's default (docs/selection.md)

    def __post_init__(self):
        where = f"domain {self.name!r}"
        if not self.name or not self.base or not self.novel:
            raise ValueError(f"{where}: needs a name, base and novel classes")
        both = set(self.base) & set(self.novel)
        if both:
            raise ValueError(f"{where}: classes both base and novel: {sorted(k.name for k in both)}")
        kinds = list(self.base) + list(self.novel)
        if len(set(kinds)) != len(kinds):
            raise ValueError(f"{where}: duplicate classes")
        labels = [self.phrasing.name(k) for k in kinds]
        if len(set(labels)) != len(labels):
            raise ValueError(f"{where}: the phrasing gives two classes the same label")

    def label(self, kind: ObjectKind) -> str:
        """The domain's name for ``kind``."""
        return self.phrasing.name(kind)

    @property
    def base_classes(self) -> List[str]:
        return [self.label(k) for k in self.base]

    @property
    def novel_classes(self) -> List[str]:
        return [self.label(k) for k in self.novel]

    def vocabulary(self) -> Dict[str, List[str]]:
        """``base``, ``novel`` and ``test`` (= base + novel) labels, as ``world_vocabulary()``."""
        return {"base": self.base_classes, "novel": self.novel_classes,
                "test": self.base_classes + self.novel_classes}

    def kinds(self) -> Dict[str, ObjectKind]:
        """label -> object kind, for every class of the domain."""
        return {self.label(k): k for k in list(self.base) + list(self.novel)}

    def kind(self, label: str) -> ObjectKind:
        kinds = self.kinds()
        if label not in kinds:
            raise ValueError(f"{label!r} is not a class of the generated domain {self.name!r}")
        return kinds[label]

    def negatives(self) -> Dict[str, List[str]]:
        """Five negative queries per base class (never a base or novel class of the domain)."""
        found = one_attribute_negatives(self.base, list(self.base) + list(self.novel))
        return {self.label(k): [self.label(n) for n in negs] for k, negs in zip(self.base, found)}

    def describe(self, label: str) -> List[str]:
        """Class-agnostic descriptions of what the label ``label`` (any label the phrasing can produce, classes
        and negative queries alike) is, in the source captions' own words and templates: what a frozen CLIP
        reads well whatever the domain calls it (the phrasing anchor's targets, ``consistency.text_target:
        descriptions``)."""
        kinds = {self.phrasing.name(k): k for k in all_kinds()}
        if label not in kinds:
            raise ValueError(f"{label!r} is no label of the generated domain {self.name!r}'s phrasing")
        name = kinds[label].name
        return [t.format(name) for t in DESCRIPTION_TEMPLATES]

    def descriptions(self, labels: Optional[Sequence[str]] = None) -> Dict[str, List[str]]:
        """``{label: describe(label)}`` for ``labels`` (default: the domain's base + novel classes)."""
        return {label: self.describe(label) for label in (labels if labels is not None else self.vocabulary()["test"])}

    def canonical_names(self) -> Dict[str, str]:
        """label -> the source captions' name of its kind (what zero-shot CLIP reads best)."""
        return {label: kind.name for label, kind in self.kinds().items()}


def _kinds(names: Sequence[str]) -> Tuple[ObjectKind, ...]:
    return tuple(ObjectKind.parse(n) for n in names)


#: generated domains by name; other packages may add theirs through the entry-point group.
DOMAINS: Registry = Registry("generated domain", "opendas_encoder.domains")


def register_domain(spec: DomainSpec) -> DomainSpec:
    return DOMAINS.register(spec.name, spec)


def get_domain(name: Union[str, DomainSpec]) -> DomainSpec:
    """The spec of the generated domain ``name`` (a spec passes through)."""
    return name if isinstance(name, DomainSpec) else DOMAINS.get(name)


def domain_names() -> List[str]:
    """Names of the generated domains, ``cast`` first."""
    return sorted(DOMAINS.names(), key=lambda n: (n != "cast", n))


def held_out_domain_names() -> List[str]:
    """Names of the held-out domains (the default is chosen on the others, only checked on these)."""
    return [n for n in domain_names() if get_domain(n).held_out]


def selection_domain_names() -> List[str]:
    """Names of the domains the library's default is chosen on (every domain that is not held out)."""
    return [n for n in domain_names() if not get_domain(n).held_out]


#: Test scenes of run seed s are ``build_domain(domain, n, TEST_SEED_OFFSET + s, "test")`` in the demo, the
#: domain suite and the few-shot curves. The library default was SELECTED on these scenes (quick suite:
#: s = 0..2, scenes 0..29, a prefix of the 100 scenes of full mode / the demo: scene k of a seed is the
#: same whatever n_scenes is), so numbers on them are not held-out.
TEST_SEED_OFFSET = 1000
#: Held-out test scenes (``--held-out``): seeds HELD_OUT_TEST_SEED_OFFSET + s, used by no selection, tuning or
#: pretraining run (scenes are keyed by (seed, split, index, domain), so other seeds give other scenes).
HELD_OUT_TEST_SEED_OFFSET = 1_000_000


def evaluation_seed(seed: int, held_out: bool = False) -> int:
    """The test-split seed of run seed ``seed``: the selection-time test scenes, or held-out ones."""
    return (HELD_OUT_TEST_SEED_OFFSET if held_out else TEST_SEED_OFFSET) + int(seed)


def build_domain(name: Union[str, DomainSpec], n_scenes: int, seed: int, split: str = "train",
                 rendering: Optional[TargetRendering] = None) -> TargetDomain:
    """Segments of ``n_scenes`` generated scenes of domain ``name`` ("train": base classes only)."""
    return TargetDomain(n_scenes, seed, split, rendering, get_domain(name))


def _doc_paragraph(name: str) -> str:
    """The rationale paragraph of ``name`` in this module's docstring (one text for docs and code)."""
    marker = f"* ``{name}`` - "
    text = __doc__.split(marker, 1)[1]
    para = text.split("\n\n", 1)[0]
    return " ".join(line.strip() for line in para.splitlines())


CAST = register_domain(DomainSpec(
    name="cast",
    summary="the original world: warm dim colour cast, source-caption names",
    rationale=_doc_paragraph("cast"),
    base=_kinds(BASE_CLASSES),
    novel=_kinds(NOVEL_CLASSES),
    rendering=TargetRendering(),
    scene_salt=None,
))


#: ``frames``: outlined kinds are named "<colour> <shape> frame" (the domain's head noun).
FRAME_PHRASING = Phrasing(style_words=(("plain", ""), ("striped", "striped"), ("dotted", "dotted"), ("outlined", "frame")),
                          trailing=frozenset({"outlined"}))

FRAMES = register_domain(DomainSpec(
    name="frames",
    summary="text-side shift: outlined objects are 'X frame' (a word the CLIP never read), paired with X",
    rationale=_doc_paragraph("frames"),
    base=_kinds([
        "red circle", "outlined red circle", "blue square", "outlined blue square",
        "yellow star", "outlined yellow star", "purple hexagon", "outlined purple hexagon",
        "green triangle", "outlined green triangle", "brown crescent", "outlined brown crescent",
        "striped pink cross", "dotted orange diamond",
    ]),
    novel=_kinds([
        "orange diamond", "outlined orange diamond", "pink cross", "outlined pink cross",
        "green star", "outlined green star", "blue circle", "outlined blue circle",
        "red square", "outlined red square", "striped yellow star", "dotted purple hexagon",
    ]),
    # an almost neutral, bright camera: the visual shift is small, the names are the problem
    rendering=TargetRendering(cast=(1.0, 0.97, 0.92), cast_jitter=0.04, brightness=(0.8, 1.0), light_gradient=0.15,
                              blur_sigma=(0.4, 0.6), noise_sigma=(3.0, 6.0)),
    phrasing=FRAME_PHRASING,
    scene_salt=0xF4A3E,
))

SIBLINGS = register_domain(DomainSpec(
    name="siblings",
    summary="fine-grained: every novel class is a one-attribute neighbour of a base class",
    rationale=_doc_paragraph("siblings"),
    base=_kinds([
        "red circle", "striped blue square", "yellow star", "outlined green triangle",
        "purple hexagon", "dotted orange diamond", "pink cross", "brown crescent",
        "outlined red square", "striped green circle", "dotted yellow hexagon", "blue diamond",
        "striped purple star", "outlined pink crescent",
    ]),
    novel=_kinds([
        # another style
        "striped red circle", "dotted blue square", "outlined yellow star", "green triangle",
        # a confusable colour
        "orange circle", "purple diamond", "red cross", "orange crescent",
        # a confusable shape
        "yellow cross", "brown circle", "pink star", "dotted orange square",
    ]),
    rendering=TargetRendering(),
    scene_salt=0x51B1,
))

NIGHT = register_domain(DomainSpec(
    name="night",
    summary="strong visual shift: dim, green-tinted, blurry, noisy low-light camera; cast's vocabulary",
    rationale=_doc_paragraph("night"),
    base=CAST.base,
    novel=CAST.novel,
    rendering=TargetRendering(cast=(0.8, 1.0, 0.75), cast_jitter=0.08, brightness=(0.3, 0.5), grain=0.1,
                              blur_sigma=(0.9, 1.3), noise_sigma=(8.0, 14.0), vignette=0.5),
    scene_salt=0x919E,
))

#: An almost neutral, bright camera (as ``frames``'): the shift of a domain rendered so is elsewhere.
NEUTRAL_LIGHT = dict(cast=(1.0, 0.97, 0.92), cast_jitter=0.04, brightness=(0.8, 1.0), light_gradient=0.15,
                     blur_sigma=(0.4, 0.6), noise_sigma=(3.0, 6.0))

# The held-out domains: specs committed before any training variant ran on them (docs/selection.md).
DISTANT = register_domain(DomainSpec(
    name="distant",
    summary="held out; visual shift of geometry and resolution: small, turned objects seen by a 24 x 24 px sensor",
    rationale=_doc_paragraph("distant"),
    base=CAST.base,
    novel=CAST.novel,
    rendering=TargetRendering(radius=(8.0, 12.0), rotation_deg=180.0, pixelate=4, **NEUTRAL_LIGHT),
    scene_salt=0xD157,
    held_out=True,
))

#: ``synonyms``: four colours named with words the source captions never use.
SYNONYM_PHRASING = Phrasing(colour_words=(("red", "crimson"), ("blue", "navy"), ("green", "olive"),
                                          ("purple", "violet")))

SYNONYMS = register_domain(DomainSpec(
    name="synonyms",
    summary="held out; text-side shift: four colours have the annotators' own words (crimson, navy, olive, violet)",
    rationale=_doc_paragraph("synonyms"),
    base=_kinds([
        "red circle", "striped red square", "blue star", "outlined blue circle", "green square",
        "dotted green hexagon", "purple triangle", "striped purple circle", "yellow star", "orange circle",
        "pink square", "brown hexagon", "outlined yellow triangle", "dotted pink cross",
    ]),
    novel=_kinds([
        "red star", "outlined red hexagon", "blue square", "striped blue triangle", "green circle",
        "outlined green star", "purple square", "dotted purple hexagon", "yellow circle", "orange square",
        "brown star", "striped orange cross",
    ]),
    rendering=TargetRendering(**NEUTRAL_LIGHT),
    phrasing=SYNONYM_PHRASING,
    scene_salt=0x5E7,
    held_out=True,
))

HELD_OUT_DOMAINS = ("distant", "synonyms")

__all__ = [
    "GENERATED_LABEL", "Phrasing", "CANONICAL", "FRAME_PHRASING", "DomainSpec", "DOMAINS", "register_domain",
    "get_domain", "domain_names", "build_domain", "CAST", "FRAMES", "SIBLINGS", "NIGHT", "TEST_SEED_OFFSET",
    "HELD_OUT_TEST_SEED_OFFSET", "evaluation_seed",
    "held_out_domain_names", "selection_domain_names", "HELD_OUT_DOMAINS", "DISTANT", "SYNONYMS", "SYNONYM_PHRASING",
    "NEUTRAL_LIGHT",
]
