"""Files shipped in ``opendas_encoder/resources``: class lists, the Offices split, negative queries."""

from __future__ import annotations

from importlib.resources import files


def resource_path(name: str) -> str:
    """Absolute path of a packaged resource file (``opendas_encoder/resources/<name>``); must exist."""
    path = files("opendas_encoder") / "resources" / name
    if not path.is_file():
        raise FileNotFoundError(f"packaged resource not found: {path}")
    return str(path)
