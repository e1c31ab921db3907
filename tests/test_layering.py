"""The import layering of the package (docs/design.md): a module imports only from its own layer
or the layers below it, so the core types never depend on a stage, a stage never on the
pipeline, the pipeline never on the batch runner.

Every ``import`` statement counts, including those inside functions (a lazy import is still a
dependency). A new module must be given a layer here; one left out fails the test.
"""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

import pytest

import medseg

ROOT = Path(medseg.__file__).parent

#: Lowest first. A pattern ending in ``*`` takes a package and everything in it.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "core",
        (
            "medseg",
            "medseg._compat",
            "medseg.errors",
            "medseg.geometry",
            "medseg.volume",
            "medseg.structures",
            "medseg.nomenclature",
            "medseg.config",
            "medseg.privacy",
            "medseg.contours",
            "medseg.status",
            "medseg.timing",
        ),
    ),
    ("io", ("medseg.io", "medseg.io.*")),
    (
        "stages",
        (
            "medseg.preprocess",
            "medseg.model",
            "medseg.runtime",
            "medseg.precision",
            "medseg.postprocess",
            "medseg.metrics",
            "medseg.tolerances",
            "medseg.evaluation",
            "medseg.synthetic",
            "medseg.synthetic.phantom",
            "medseg.synthetic.phantom_oar",
        ),
    ),
    ("infer", ("medseg.infer",)),
    (
        "report/training",
        (
            "medseg.report",
            "medseg.report.*",
            "medseg.planning",
            "medseg.planning.*",
            "medseg.training",
            "medseg.training.*",
            "medseg.tracking",
        ),
    ),
    ("pipeline", ("medseg.pipeline", "medseg.synthetic.demo")),
    ("batch", ("medseg.batch", "medseg.batch.*")),
    ("cli", ("medseg.cli", "medseg.__main__")),
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int | None:
    for index, (_, patterns) in enumerate(LAYERS):
        if any(fnmatch.fnmatchcase(module, p) for p in patterns):
            return index
    return None


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported medseg module) of every import in ``path``; ``from medseg.x import y``
    counts ``medseg.x.y`` when that is a module (a submodule import), else ``medseg.x``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("medseg")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("medseg"):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                is_module = (ROOT.parent / candidate.replace(".", "/")).with_suffix(
                    ".py"
                ).is_file() or (ROOT.parent / candidate.replace(".", "/") / "__init__.py").is_file()
                found.append((node.lineno, candidate if is_module else node.module))
    return found


MODULES = sorted(ROOT.rglob("*.py"))


def test_every_module_has_a_layer() -> None:
    assert [m for m in map(_module_name, MODULES) if _layer(m) is None] == []


@pytest.mark.parametrize("path", MODULES, ids=[_module_name(p) for p in MODULES])
def test_no_upward_import(path: Path) -> None:
    module = _module_name(path)
    own = _layer(module)
    assert own is not None
    upward = [
        f"{path.relative_to(ROOT.parent)}:{line} imports {target} ({LAYERS[_layer(target) or 0][0]})"
        for line, target in _imports(path)
        if (_layer(target) or 0) > own
    ]
    assert upward == [], f"{module} is in layer {LAYERS[own][0]!r}"


def test_the_check_finds_an_upward_import(tmp_path: Path) -> None:
    """The test above can fail: a stage importing the pipeline is found."""
    fake = ROOT / "postprocess.py"
    source = (
        fake.read_text(encoding="utf-8")
        + "\n\ndef _f() -> None:\n    from medseg.pipeline import predict_case\n"
    )
    copy = tmp_path / "postprocess.py"
    copy.write_text(source, encoding="utf-8")
    targets = [t for _, t in _imports(copy)]
    assert "medseg.pipeline" in targets
    assert _layer("medseg.pipeline") > _layer("medseg.postprocess")  # type: ignore[operator]
