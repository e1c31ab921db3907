"""Installs are reproducible: the lock pins every dependency, the version lives in one place."""

from __future__ import annotations

import re
import tomllib

import medseg
from tests.conftest import REPO_ROOT

_PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;@]+)$")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _lock() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (REPO_ROOT / "requirements.lock").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = _PIN.match(line.strip())
        # a direct reference (name @ file:///...) installs only on the machine that made it
        assert match, f"requirements.lock: {line!r} is not a plain name==version pin"
        pins[_normalise(match[1])] = match[2]
    return pins


def test_lock_pins_every_declared_dependency() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    declared = list(project["dependencies"]) + list(project["optional-dependencies"]["test"])
    pins = _lock()
    missing = []
    for requirement in declared:
        name = _normalise(re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0])
        if name not in pins:
            missing.append(name)
    assert missing == []


def test_torch_is_pinned_to_the_cpu_build() -> None:
    assert _lock()["torch"].endswith("+cpu"), "an unpinned torch pulls several GB of CUDA"


def test_version_lives_in_one_place() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "medseg.__version__"}
    changelog = (REPO_ROOT / "CHANGELOG.md").read_text()
    first = re.search(r"^## \[?([0-9][^\]\s]*)", changelog, flags=re.MULTILINE)
    assert first and first[1] == medseg.__version__, "CHANGELOG's newest entry is not the version"


def test_every_subpackage_is_installed() -> None:
    """setuptools installs only the packages pyproject lists; a new subpackage left out works
    in the editable install of the tests and fails in a wheel or the Docker image."""
    listed = set(
        tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    root = REPO_ROOT / "medseg"
    found = {
        ".".join(("medseg", *init.parent.relative_to(root).parts))
        for init in root.rglob("__init__.py")
    }
    assert found - listed == set()
