"""Locating an OVSeg checkout and making it importable (no Detectron2 import here).

OVSeg is not a pip package: its code is used from a source checkout named by ``--ovseg-root`` or
the ``OVSEG_ROOT`` environment variable (see ``integrations/ovseg/README.md``).
"""

from __future__ import annotations

import os
import sys
from typing import Optional

import numpy as np

ENABLE_HINT = ("install Detectron2 and check out OVSeg as described in integrations/ovseg/README.md, "
               "then set OVSEG_ROOT to the checkout")


def ovseg_root(root: Optional[str] = None) -> str:
    """The OVSeg checkout (``root`` or ``$OVSEG_ROOT``); raises if it is not an OVSeg checkout."""
    root = root or os.environ.get("OVSEG_ROOT", "")
    if not root:
        raise FileNotFoundError(f"no OVSeg checkout given: pass --ovseg-root or {ENABLE_HINT}")
    marker = os.path.join(root, "open_vocab_seg", "ovseg_model.py")
    if not os.path.isfile(marker):
        raise FileNotFoundError(f"{root}: not an OVSeg checkout (missing {marker})")
    return os.path.abspath(root)


def add_ovseg_to_path(root: Optional[str] = None) -> str:
    """Put the OVSeg checkout and its modified CLIP (``third_party/CLIP``) first on ``sys.path``."""
    root = ovseg_root(root)
    for path in (os.path.join(root, "third_party", "CLIP"), root):
        if path not in sys.path:
            sys.path.insert(0, path)
    return root


def restore_numpy_aliases() -> None:
    """Give NumPy >= 1.24 back ``np.int`` / ``np.float`` / ``np.bool`` (removed aliases of the builtins).

    OVSeg's evaluator (``GeneralizedSemSegEvaluator``) and dataset statistics call ``np.int`` etc.;
    the aliases meant exactly the Python builtins, so restoring them changes no result.
    """
    for name, builtin in (("int", int), ("float", float), ("bool", bool), ("object", object)):
        if name not in np.__dict__:
            setattr(np, name, builtin)
