"""The public API is what __all__ says, and importing medseg stays light."""

from __future__ import annotations

import importlib
import json
import pkgutil
import subprocess
import sys

import pytest

import medseg
from medseg import _compat

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
        name
        for name in dir(medseg)
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
    """STYLE: torch only in model/train/infer (and runtime, precision: what the hardware
    computes natively), pydicom only under io/, mlflow only in tracking.

    Allowed files are paths relative to the package (``batch/executors.py``), so a file of the
    same name in another folder is not allowed.
    """
    from pathlib import Path

    root = Path(medseg.__file__).parent
    rules = {
        "torch": {
            "model.py",
            "training/train.py",
            "training/distributed.py",
            "infer.py",
            "runtime.py",
            "precision.py",
        },
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


def test_moved_modules_import_as_the_new_ones_with_a_warning() -> None:
    """The 0.1.0 development paths keep working until 0.2. One fresh interpreter for all of
    them (an old name already imported would not warn again); each old name is imported after
    its new module, so the warning comes from the alias itself."""
    code = (
        "import importlib, json, sys, warnings\n"
        "warnings.simplefilter('error', DeprecationWarning)\n"
        "import medseg\n"
        "from medseg import _compat\n"
        "warnings.simplefilter('always', DeprecationWarning)\n"
        "found = {}\n"
        "for old, new in sorted(_compat.MOVED.items()):\n"
        "    module = importlib.import_module(new)\n"
        "    with warnings.catch_warnings(record=True) as caught:\n"
        "        alias = importlib.import_module(old)\n"
        "    found[old] = [alias is module, sys.modules[old] is module,\n"
        "                  [str(w.message) for w in caught if w.category is DeprecationWarning]]\n"
        "print(json.dumps(found))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)
    assert sorted(found) == sorted(_compat.MOVED)
    for old, new in _compat.MOVED.items():
        same, cached, messages = found[old]
        assert same and cached, old
        assert messages == [f"{old} is now {new}; the old name goes in medseg 0.2"], old


def test_split_pacs_module_keeps_its_names() -> None:
    from medseg.batch.listener import listen
    from medseg.batch.orthanc import run_pacs

    sys.modules.pop("medseg.pacs", None)  # a fresh import, so it warns
    with pytest.warns(DeprecationWarning, match="medseg.pacs is now"):
        pacs = importlib.import_module("medseg.pacs")
    assert pacs.listen is listen and pacs.run_pacs is run_pacs


def test_run_demo_moved_with_a_warning() -> None:
    from medseg import pipeline
    from medseg.synthetic.demo import run_demo

    with pytest.warns(DeprecationWarning, match="pipeline.run_demo is now"):
        assert pipeline.run_demo is run_demo
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        _ = pipeline.nothing  # type: ignore[attr-defined]


def test_no_module_file_shadows_a_moved_name() -> None:
    """A real file at an old path would win over the alias (and over the new module)."""
    from pathlib import Path

    root = Path(medseg.__file__).parent.parent
    for old in (*_compat.MOVED, *_compat.SPLIT):
        relative = old.replace(".", "/")
        assert not (root / f"{relative}.py").exists() and not (root / relative).is_dir(), old
