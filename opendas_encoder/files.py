"""Writing files and folders so that a reader never sees half of them: a kill or an error leaves the old
version or the new one, never a mixture, and no temporary file behind."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from typing import Iterator


def current_umask() -> int:
    """The process's umask (read by setting and restoring it: the os module has no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (never a half-written file).

    The file gets the mode ``open()`` would give it (0666 less the umask: 0644 by default), not
    ``mkstemp``'s private 0600."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@contextmanager
def atomic_folder(out_dir: str, prefix: str = ".tmp-") -> Iterator[str]:
    """Build a folder in a temporary folder beside ``out_dir`` and put it at ``out_dir`` at the end.

    Yields the temporary folder's path (mode 0777 less the umask, not ``mkdtemp``'s 0700). On leaving the
    block normally, an existing ``out_dir`` (folder or file) is moved aside, the new folder renamed into
    place, and only then the old one removed; on any exception (Ctrl-C too) the temporary folder is removed,
    ``out_dir`` is left as it was, and a parent folder this call created is removed again if empty."""
    out_dir = os.path.abspath(out_dir)
    parent = os.path.dirname(out_dir)
    made_parent = not os.path.isdir(parent)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=prefix, dir=parent)
    try:
        os.chmod(tmp, 0o777 & ~current_umask())
        yield tmp
        if os.path.lexists(out_dir):
            old = tmp + ".old"
            os.rename(out_dir, old)
            os.rename(tmp, out_dir)
            if os.path.isdir(old) and not os.path.islink(old):
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.remove(old)
        else:
            os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if made_parent and os.path.isdir(parent) and not os.listdir(parent):
            os.rmdir(parent)
        raise


__all__ = ["current_umask", "atomic_write_bytes", "atomic_folder"]
