"""The error of a bad scan input (a ValueError: the CLI prints it on one line and exits 2)."""

from __future__ import annotations


class ScanInputError(ValueError):
    """A scan source that cannot be imported. ``path``: the file (or ``archive.r3d:member``) at fault;
    ``problem``: what is wrong with it. ``str(err)`` is ``"<path>: <problem>"``."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
