"""Atomic output writing: outputs appear complete or not at all; inputs are never touched."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from medseg.errors import ExportError

__all__ = ["atomic_dir", "atomic_path"]


def _prepare(target: Path, overwrite: bool) -> Path:
    target = Path(target)
    if target.exists() and not overwrite:
        raise ExportError(f"{target}: exists; refusing to overwrite")
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


@contextlib.contextmanager
def atomic_path(target: Path, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling path; on success it is renamed onto ``target``.

    On error the temporary file is removed and ``target`` is left as it was.

    Raises:
        ExportError: if ``target`` exists and ``overwrite`` is False.
    """
    target = _prepare(target, overwrite)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(target: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces ``target``.

    Raises:
        ExportError: if ``target`` exists and ``overwrite`` is False.
    """
    target = _prepare(target, overwrite)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
