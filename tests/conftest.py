"""Shared fixtures. Every fixture is function-scoped and returns fresh objects."""

from __future__ import annotations

import importlib
import os
import shutil
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import settings

REPO_ROOT = Path(__file__).resolve().parents[1]

# Property tests check properties, not speed: on a loaded 2-core CI machine hypothesis's 200 ms
# per-example deadline would fail a correct test (speed is measured by benchmarks/).
settings.register_profile("ci", deadline=None)
if os.environ.get("CI", "").lower() == "true":
    settings.load_profile("ci")


def _data_root() -> Path:
    return Path(os.environ.get("MEDSEG_TEST_DATA", REPO_ROOT.parent / "shared" / "data")).resolve()


def require_data(relative: str) -> Path:
    """Path of a real dataset under MEDSEG_TEST_DATA.

    Skips with a reason when it is missing, except under CI=true, where missing data fails.
    """
    path = _data_root() / relative
    if not path.exists():
        message = f"real test data missing: {path} (set MEDSEG_TEST_DATA to the shared data folder)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def require_tool(name: str) -> str:
    """Path of an external program; skip (or fail under CI=true) when it is not installed."""
    found = shutil.which(name)
    if found is None:
        message = f"external tool {name!r} not installed (the README test command installs it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


def require_module(name: str) -> ModuleType:
    """Import a test dependency; skip (or fail under CI=true) when it is not installed."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        message = f"test dependency {name!r} not importable ({exc}); bash scripts/install.sh --test"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
def data_root() -> Path:
    """Root of the shared real datasets (may not exist; use require_data for a sub-path)."""
    return _data_root()


# the Orthanc fixture (appended here, so its imports are here too)
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class OrthancServer:
    """A running throwaway Orthanc: REST API at ``url``, DICOM (C-STORE) at ``dicom_port``."""

    url: str
    dicom_port: int
    aet: str
    storage: Path


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def orthanc_server(tmp_path: Path) -> Iterator[OrthancServer]:
    """Orthanc (Debian ``orthanc`` + ``orthanc-dicomweb``) on 127.0.0.1 with its own config
    and storage under ``tmp_path``, on free ports; stopped at the end of the test. Studies
    become stable one second after their last instance arrived (``StableAge``)."""
    import json
    import subprocess
    import time
    import urllib.request

    exe = require_tool("Orthanc")
    http_port, dicom_port = _free_port(), _free_port()
    storage = tmp_path / "orthanc-storage"
    config = {
        "Name": "medseg-test",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "StableAge": 1,
        "Plugins": ["/usr/share/orthanc/plugins"],
    }
    config_path = tmp_path / "orthanc.json"
    config_path.write_text(json.dumps(config))
    log = open(tmp_path / "orthanc.log", "wb")  # noqa: SIM115 - closed after the process
    process = subprocess.Popen([exe, str(config_path)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"{url}/system", timeout=1) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(
                        f"Orthanc did not start: {(tmp_path / 'orthanc.log').read_text()[-2000:]}"
                    )
                time.sleep(0.1)
        yield OrthancServer(url, dicom_port, "ORTHANC", storage)
    finally:
        # the storage is thrown away: no need to wait for Orthanc's graceful stop (~3 s)
        process.kill()
        process.wait(10)
        log.close()
