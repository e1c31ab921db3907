"""The public API is what __all__ says, and importing medseg stays light."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import pytest

import medseg

# every module of the package, found rather than listed, so a new module cannot be forgotten;
# and every subpackage that re-exports its modules' names (io/'s __init__ is only a docstring)
MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(medseg.__path__, prefix="medseg.")
    if info.name not in {"medseg.__main__", "medseg.io"}
)


def test_top_level_all_matches_public_names() -> None:
    import types

    public = {
        name for name in dir(medseg)
        if not name.startswith("_") and not isinstance(getattr(medseg, name), types.ModuleType)
    }
    assert set(medseg.__all__) - {"__version__"} == public


@pytest.mark.parametrize("name", MODULES, ids=MODULES)
def test_every_module_all_names_exist(name: str) -> None:
    module = importlib.import_module(name)
    assert hasattr(module, "__all__"), f"{name} has no __all__"
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert missing == []


def test_import_medseg_does_not_import_torch_or_mlflow() -> None:
    code = "import sys, medseg; print(sorted(m for m in ('torch', 'mlflow', 'monai') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_torch_pydicom_mlflow_only_where_allowed() -> None:
    """STYLE: torch only in model/train/infer, pydicom only under io/, mlflow only in tracking.

    Allowed files are paths relative to the package (``batch/executors.py``), so a file of the
    same name in another folder is not allowed.
    """
    from pathlib import Path

    root = Path(medseg.__file__).parent
    rules = {
        "torch": {"model.py", "train.py", "distributed.py", "infer.py", "runtime.py"},
        "pydicom": None,  # io/ only
        "mlflow": {"tracking.py"},
        "ray": {"batch/executors.py"},
    }
    offenders = []
    for path in root.rglob("*.py"):
        text = path.read_text()
        rel = path.relative_to(root)
        for lib, allowed in rules.items():
            if f"import {lib}" in text or f"from {lib}" in text:
                ok = rel.parts[0] == "io" if allowed is None else rel.as_posix() in allowed
                if not ok:
                    offenders.append(f"{rel}: {lib}")
    assert offenders == []
