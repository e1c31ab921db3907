"""Where modules moved when the package was laid out by role, so old import paths keep working.

The old names have no files: :func:`install` (called by ``medseg/__init__``) adds an import
hook that answers only for the names in :data:`MOVED` and :data:`SPLIT`. Importing one warns
(``DeprecationWarning``, naming the new path) and gives

- for a moved module, the new module itself (``medseg.train`` *is* ``medseg.training.train``,
  so monkeypatching and private names behave as before);
- for a split module, a module holding the public names of its parts.

The aliases go in 0.2 (see CHANGELOG).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType
from typing import Any

__all__ = ["MOVED", "SPLIT", "install", "moved_name"]

#: old module -> new module (a package re-exports the moved module's public names).
MOVED: dict[str, str] = {
    "medseg.io.discovery": "medseg.io.dicom",
    "medseg.io.slices": "medseg.io.dicom",
    "medseg.io.headers": "medseg.io.dicom",
    "medseg.io.dicom_write": "medseg.io.dicom",
    "medseg.io.rtstruct_read": "medseg.io.rtstruct",
    "medseg.data": "medseg.training.data",
    "medseg.datasets": "medseg.training.datasets",
    "medseg.patches": "medseg.training.patches",
    "medseg.splits": "medseg.training.splits",
    "medseg.crossval": "medseg.training.crossval",
    "medseg.train": "medseg.training.train",
    "medseg.distributed": "medseg.training.distributed",
    "medseg.progress": "medseg.training.progress",
    "medseg.report_views": "medseg.report.views",
    "medseg.phantom": "medseg.synthetic.phantom",
    "medseg.phantom_oar": "medseg.synthetic.phantom_oar",
}

#: old module -> the modules it was split into (its public names are re-exported).
SPLIT: dict[str, tuple[str, ...]] = {
    "medseg.pacs": ("medseg.batch.orthanc", "medseg.batch.listener"),
}


def _warn(old: str, new: str, stacklevel: int = 3) -> None:
    warnings.warn(
        f"{old} is now {new}; the old name goes in medseg 0.2",
        DeprecationWarning,
        stacklevel=stacklevel,
    )


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """The import hook for the names in :data:`MOVED` and :data:`SPLIT`, and nothing else."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname in MOVED or fullname in SPLIT:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None  # a plain module; for a moved one, exec_module replaces it

    def exec_module(self, module: ModuleType) -> None:
        old = module.__name__
        if old in MOVED:
            _warn(old, MOVED[old])
            # the import system returns what sys.modules holds after exec_module
            sys.modules[old] = importlib.import_module(MOVED[old])
            return
        _warn(old, " and ".join(SPLIT[old]))
        names: list[str] = []
        for part in SPLIT[old]:
            new = importlib.import_module(part)
            for name in new.__all__:
                setattr(module, name, getattr(new, name))
                names.append(name)
        module.__all__ = sorted(names)  # type: ignore[attr-defined]


_HOOK = _MovedModules()


def install() -> None:
    """Add the hook after the standard finders (a real module of the same name wins)."""
    if _HOOK not in sys.meta_path:
        sys.meta_path.append(_HOOK)


def moved_name(module: str, name: str, new_module: str) -> Any:
    """``name``, formerly of ``module``, now found in ``new_module`` (warns)."""
    _warn(f"{module}.{name}", f"{new_module}.{name}", stacklevel=4)
    return getattr(importlib.import_module(new_module), name)
