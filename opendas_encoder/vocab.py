"""Vocabularies (base / test / novel queries) and negative-query sets.

Negative queries are stored as JSON ``{class_name: [five negatives]}`` (the paper's Appendix C).
By default, negatives that coincide with a novel test class are dropped (and reported), so that
novel queries stay unseen during adaptation.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Sequence, Tuple

from .errors import InputError, read_json

NEGATIVES_PER_CLASS = 5


def normalize_name(name: str) -> str:
    """A class name or query as compared everywhere: lower-case, single spaces, no outer spaces."""
    return " ".join(str(name).lower().split())


@dataclass
class Vocabulary:
    """Base (training) and test queries; novel = test - base (order of ``test`` kept)."""

    base: List[str]
    test: List[str]
    name: str = ""

    def __post_init__(self):
        for label, names in (("base", self.base), ("test", self.test)):
            seen = set()
            for n in names:
                where = f"vocabulary {self.name!r}" if self.name else "vocabulary"
                if not isinstance(n, str) or not n.strip():
                    raise ValueError(f"{where}: {label} class names must be non-empty strings, got {n!r}")
                if n in seen:
                    raise ValueError(f"{where}: duplicate {label} class {n!r}")
                seen.add(n)
        self.base = list(self.base)
        self.test = list(self.test)

    @property
    def novel(self) -> List[str]:
        base = set(self.base)
        return [c for c in self.test if c not in base]

    @property
    def test_base(self) -> List[str]:
        base = set(self.base)
        return [c for c in self.test if c in base]

    def counts(self) -> Dict[str, int]:
        return {"base": len(self.base), "test": len(self.test), "test_base": len(self.test_base), "novel": len(self.novel)}

    def to_dict(self) -> dict:
        return {"name": self.name, "base": self.base, "test": self.test, "novel": self.novel}

    @classmethod
    def from_dict(cls, d: dict) -> "Vocabulary":
        return cls(base=list(d["base"]), test=list(d["test"]), name=d.get("name", ""))

    def save(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=1, sort_keys=True)

    @classmethod
    def load(cls, path: str) -> "Vocabulary":
        """Read a vocabulary JSON ``{"base": [...], "test": [...]}`` (optional ``name``; ``novel``, as
        :meth:`save` writes it, only when it equals test - base). Any other key, a duplicate class or a
        ``novel`` list that is not test - base is refused naming the file (:class:`InputError`)."""
        data = read_json(path, "vocabulary file")
        if not (isinstance(data, dict) and isinstance(data.get("base"), list) and isinstance(data.get("test"), list)
                and isinstance(data.get("name", ""), str)):
            raise InputError(path, "not a vocabulary JSON with 'base' and 'test' lists (and an optional 'name' string)")
        unknown = sorted(set(data) - {"base", "test", "name", "novel"})
        if unknown:
            raise InputError(path, f"unknown vocabulary keys {unknown} (known: base, test, name; novel classes are "
                                   "derived as test - base)")
        try:
            vocab = cls.from_dict(data)
        except (ValueError, TypeError) as exc:
            raise InputError.of(path, exc) from None
        novel = data.get("novel", vocab.novel)
        if not isinstance(novel, list) or sorted(map(str, novel)) != sorted(vocab.novel):
            raise InputError(path, f"'novel' {novel!r} is not test - base {vocab.novel!r}; novel classes are "
                                   "derived: list them in 'test' and leave 'novel' out")
        return vocab


def read_class_list(path: str) -> List[str]:
    """One class name per line; blank lines and lines starting with '#' ignored."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"class list not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            names = [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
    except UnicodeDecodeError as exc:
        raise InputError(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not names:
        raise InputError(path, "class list is empty")
    return names


def validate_negatives(negatives: Dict[str, Sequence[str]], classes: Iterable[str] = None,
                       per_class: int = NEGATIVES_PER_CLASS) -> List[str]:
    """Problems with a negative-query set (empty list = valid).

    Rules: ``per_class`` negatives per class, non-empty strings, no duplicates within a class
    (case-insensitive), never the class itself; with ``classes`` given, every class must have an entry.
    """
    problems = []
    if not isinstance(negatives, dict):
        return [f"expected a JSON object {{class: [negatives]}}, got {type(negatives).__name__}"]
    for cls, negs in negatives.items():
        if not isinstance(negs, (list, tuple)):
            problems.append(f"{cls!r}: negatives must be a list, got {type(negs).__name__}")
            continue
        if len(negs) != per_class:
            problems.append(f"{cls!r}: {len(negs)} negatives, expected {per_class}")
        seen = set()
        for n in negs:
            if not isinstance(n, str) or not n.strip():
                problems.append(f"{cls!r}: empty or non-string negative {n!r}")
                continue
            key = normalize_name(n)
            if key == normalize_name(cls):
                problems.append(f"{cls!r}: negative equals the class itself")
            if key in seen:
                problems.append(f"{cls!r}: duplicate negative {n!r}")
            seen.add(key)
    if classes is not None:
        missing = [c for c in classes if c not in negatives]
        if missing:
            problems.append(f"no negatives for {len(missing)} classes: {missing[:10]}")
    return problems


def load_negatives(path: str, classes: Iterable[str] = None, per_class: int = NEGATIVES_PER_CLASS) -> Dict[str, List[str]]:
    """Read and validate a negative-query JSON file; errors name the file and every problem."""
    data = read_json(path, "negative-query file")
    problems = validate_negatives(data, classes=classes, per_class=per_class)
    if problems:
        raise InputError(path, "invalid negative queries:\n  " + "\n  ".join(problems[:20]))
    return {k: list(v) for k, v in data.items()}


@dataclass
class NegativeQueries:
    """The negatives used in training: the unique query list plus what was dropped and why."""

    queries: List[str]
    dropped: List[Tuple[str, str, str]] = field(default_factory=list)  # (class, negative, reason)

    def summary(self) -> str:
        s = f"{len(self.queries)} negative queries"
        if self.dropped:
            s += f"; dropped {len(self.dropped)}: " + ", ".join(f"{n!r} ({r})" for _, n, r in self.dropped[:8])
        return s


def select_negative_queries(negatives: Dict[str, Sequence[str]], base: Sequence[str], novel: Sequence[str] = (),
                            drop_novel: bool = True) -> NegativeQueries:
    """Negative queries for the label space base + negatives.

    Only the entries of base classes are used. A negative equal to a base class is dropped (it is
    already in the label space); with ``drop_novel`` a negative equal to a novel class is dropped so
    that novel queries stay unseen. Duplicates across classes are kept once; order is stable.
    """
    base_keys = {normalize_name(c) for c in base}
    novel_keys = {normalize_name(c) for c in novel}
    out, seen, dropped = [], set(), []
    for cls in base:
        for neg in negatives.get(cls, []):
            key = normalize_name(neg)
            if key in base_keys:
                dropped.append((cls, neg, "is a base class"))
            elif drop_novel and key in novel_keys:
                dropped.append((cls, neg, "is a novel test class"))
            elif key not in seen:
                seen.add(key)
                out.append(neg)
    return NegativeQueries(queries=out, dropped=dropped)


def validate_descriptions(descriptions, classes: Iterable[str] = None) -> List[str]:
    """Problems of a class-description mapping ``{class: [descriptions]}`` (empty list = valid).

    Rules: a JSON object; each value a non-empty list of distinct, non-empty strings; every class of
    ``classes`` (when given) has an entry. Extra classes are allowed (one file can serve many label spaces).
    """
    if not isinstance(descriptions, dict):
        return [f"expected a JSON object {{class: [descriptions]}}, got {type(descriptions).__name__}"]
    problems = []
    for cls, texts in descriptions.items():
        if not isinstance(texts, list) or not texts:
            problems.append(f"{cls!r}: descriptions must be a non-empty list of strings")
            continue
        if not all(isinstance(t, str) and t.strip() for t in texts):
            problems.append(f"{cls!r}: every description must be a non-empty string")
        elif len({t.strip() for t in texts}) != len(texts):
            problems.append(f"{cls!r}: duplicate descriptions")
    if classes is not None:
        missing = [c for c in classes if c not in descriptions]
        if missing:
            problems.append(f"no descriptions for {len(missing)} classes: {missing[:10]}")
    return problems


def load_descriptions(path: str, classes: Iterable[str] = None) -> Dict[str, List[str]]:
    """Read and validate a class-description JSON file ``{class: [descriptions]}``; errors name the file and
    every problem (the phrasing anchor, ``consistency.text_target: descriptions``)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"class-description file not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: invalid JSON ({exc})") from None
    problems = validate_descriptions(data, classes=classes)
    if problems:
        raise ValueError(f"{path}: invalid class descriptions:\n  " + "\n  ".join(problems[:20]))
    return {k: [t.strip() for t in v] for k, v in data.items()}
