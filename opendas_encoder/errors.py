"""The package's error type for a user's file that cannot be used, and the JSON reader that raises it.

:class:`InputError` subclasses ``ValueError`` so that callers (and the CLI, which maps ``ValueError``
to one line on stderr and exit 2) need no new ``except`` clause; ``path`` names the file and
``reason`` says what is wrong. Per-segment problems inside a dataset use
:class:`opendas_encoder.data.segments.SegmentError` instead (skipped and counted, never raised to the user).
"""

from __future__ import annotations

import json
import os
from typing import Any


class InputError(ValueError):
    """A file that cannot be read or does not hold what it must: ``str(err) == f"{path}: {reason}"``."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason

    @classmethod
    def of(cls, path: str, exc: Exception) -> "InputError":
        """``exc`` (a ValueError from a validator) as an InputError about ``path`` (its message not prefixed twice)."""
        if isinstance(exc, InputError):
            return exc
        text = str(exc)
        prefix = f"{path}: "
        return cls(path, text[len(prefix):] if text.startswith(prefix) else text)


def read_json(path: str, what: str = "JSON file") -> Any:
    """The parsed JSON of ``path``; a missing file is ``FileNotFoundError`` (naming ``what`` and the path),
    unreadable, non-UTF-8 or invalid JSON is :class:`InputError`. (NaN/Infinity parse as Python's json
    does; each reader checks the types it needs.)"""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")

    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except UnicodeDecodeError as exc:
        raise InputError(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except RecursionError:
        raise InputError(path, "JSON nested too deeply") from None
    except ValueError as exc:  # json.JSONDecodeError
        raise InputError(path, f"invalid JSON ({exc})") from None
    except OSError as exc:
        raise InputError(path, f"cannot read ({exc.strerror or exc})") from None
