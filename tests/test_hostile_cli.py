"""The CLI as a hostile but realistic user runs it (issue 17): every case is the ``medseg``
command in a subprocess, and each must end with exit code 2, exactly one line on stderr that
names the file and the problem, no traceback, and every input byte-identical afterwards.

The cases are a table (:data:`CASES`): each builds its command from a small real workspace
(a phantom CT series, its label map, an untrained checkpoint of the tiny config) and says
which paths are inputs and what the message must name.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import yaml

from medseg.config import load_config
from medseg.model import build_network, save_checkpoint
from medseg.synthetic import phantom

REPO = Path(__file__).resolve().parents[1]
PASSWORD = "Pa55-canary-w0rd"


@dataclass(frozen=True)
class Workspace:
    root: Path
    patient: Path  # patient/ct (series) + patient/labels.nii.gz + patient/rtss.dcm
    ct: Path
    labels: Path
    model: Path
    config: Path


def _tiny_config(root: Path) -> Path:
    raw = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    raw["infer"].update({"roi_size": [16, 32, 32], "overlap": 0.0})
    # an untrained network's labels are noise: one filled component keeps every run short
    raw["postprocess"] = {"default": {"keep_largest_component": True, "fill_holes": "slice"}}
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    patient = tmp_path / "patient"
    case = phantom.make_case(
        3, shape=(16, 48, 48), spacing_mm=(3.0, 3.0, 3.0), n_tumours=1, radius_range_mm=(6.0, 8.0)
    )
    paths = phantom.write_case(case, patient, patient_id="PHANTOM-017")
    config = _tiny_config(tmp_path)
    loaded = load_config(config)
    torch.manual_seed(17)  # fixed weights: the same labels, so the same output size, every run
    model = save_checkpoint(tmp_path / "model.pt", build_network(loaded.model), loaded)
    return Workspace(tmp_path, patient, paths.ct_dir, paths.labels_path, model, config)


def _medseg(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    full_env.update({"PYTHONPATH": str(REPO), **(env or {})})
    return subprocess.run(
        [sys.executable, "-m", "medseg", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _checksums(paths: list[Path]) -> dict[str, str]:
    """Every file under each path (a file or a folder) -> its SHA-256; links by target."""
    sums: dict[str, str] = {}
    for top in paths:
        files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        for path in files:
            sums[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
        if top.is_dir():
            sums[f"{top}/"] = ",".join(sorted(p.name for p in top.rglob("*")))
    return sums


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Case:
    """One hostile command: ``build`` returns its arguments and its inputs (checksummed
    before and after); ``names`` are substrings the one-line message must hold."""

    build: Callable[[Workspace], tuple[list[str], list[Path]]]
    names: Callable[[Workspace], list[str]]
    env: Callable[[Workspace], dict[str, str]] = field(default=lambda ws: {})
    absent: tuple[str, ...] = ()  # must not appear in stdout or stderr


def _predict_into_its_input(ws: Workspace) -> tuple[list[str], list[Path]]:
    return ["predict", "--overwrite", "--model", str(ws.model), str(ws.ct), str(ws.ct)], [
        ws.patient
    ]


def _predict_into_a_parent(ws: Workspace) -> tuple[list[str], list[Path]]:
    return ["predict", "--overwrite", "--model", str(ws.model), str(ws.ct), str(ws.patient)], [
        ws.patient
    ]


def _predict_through_a_link(ws: Workspace) -> tuple[list[str], list[Path]]:
    link = ws.root / "link-to-patient"
    link.symlink_to(ws.patient)
    return [
        "predict",
        "--overwrite",
        "--model",
        str(ws.model),
        str(ws.ct),
        str(link / "ct" / "out"),
    ], [ws.patient]


def _predict_over_the_model(ws: Workspace) -> tuple[list[str], list[Path]]:
    return ["predict", "--overwrite", "--model", str(ws.model), str(ws.ct), str(ws.root)], [
        ws.patient,
        ws.model,
    ]


def _predict_over_a_foreign_folder(ws: Workspace) -> tuple[list[str], list[Path]]:
    foreign = ws.root / "clinic-notes"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not medseg's")
    return ["predict", "--overwrite", "--model", str(ws.model), str(ws.ct), str(foreign)], [
        ws.patient,
        foreign,
    ]


def _predict_existing_out_before_work(ws: Workspace) -> tuple[list[str], list[Path]]:
    """OUT exists (no --overwrite) and the input is corrupt: the output check comes first,
    before the scan is read (and so before any inference)."""
    out = ws.root / "out"
    out.mkdir()
    (out / "old.txt").write_text("previous")
    broken = ws.root / "broken.nii.gz"
    broken.write_bytes(b"\x1f\x8b not really gzip")
    return ["predict", "--model", str(ws.model), str(broken), str(out)], [ws.patient, out, broken]


def _convert_into_its_input(ws: Workspace) -> tuple[list[str], list[Path]]:
    return ["convert", "--overwrite", str(ws.ct), str(ws.ct)], [ws.patient]


def _export_over_a_slice(ws: Workspace) -> tuple[list[str], list[Path]]:
    slice_file = sorted(ws.ct.glob("*.dcm"))[5]
    return (
        [
            "export-rtstruct",
            "--ct",
            str(ws.ct),
            "--labels",
            str(ws.labels),
            "--out",
            str(slice_file),
        ],
        [ws.patient],
    )


def _export_new_file_inside_the_ct(ws: Workspace) -> tuple[list[str], list[Path]]:
    return (
        [
            "export-rtstruct",
            "--ct",
            str(ws.ct),
            "--labels",
            str(ws.labels),
            "--out",
            str(ws.ct / "RS.dcm"),
        ],
        [ws.patient],
    )


def _export_over_a_foreign_file(ws: Workspace) -> tuple[list[str], list[Path]]:
    foreign = ws.root / "plan.dcm"
    foreign.write_bytes(min(ws.ct.glob("*.dcm")).read_bytes())  # someone else's DICOM
    return (
        [
            "export-rtstruct",
            "--overwrite",
            "--ct",
            str(ws.ct),
            "--labels",
            str(ws.labels),
            "--out",
            str(foreign),
        ],
        [ws.patient, foreign],
    )


def _export_to_a_folder(ws: Workspace) -> tuple[list[str], list[Path]]:
    folder = ws.root / "existing"
    folder.mkdir()
    return (
        ["export-rtstruct", "--ct", str(ws.ct), "--labels", str(ws.labels), "--out", str(folder)],
        [ws.patient, folder],
    )


def _evaluate_into_the_reference(ws: Workspace) -> tuple[list[str], list[Path]]:
    ref = ws.root / "ref"
    ref.mkdir()
    (ref / "case.nii.gz").write_bytes(ws.labels.read_bytes())
    return ["evaluate", str(ref), str(ref), "--out", str(ref / "metrics")], [ref]


def _latin1_config(ws: Workspace) -> tuple[list[str], list[Path]]:
    config = ws.root / "latin1.yaml"
    config.write_bytes("# Lungenfl\u00fcgel\nseed: 0\n".encode("latin-1"))
    return ["train", str(config), "--out", str(ws.root / "train")], [config, ws.patient]


def _binary_config(ws: Workspace) -> tuple[list[str], list[Path]]:
    return ["train", str(ws.model), "--out", str(ws.root / "train")], [ws.model]


def _huge_network(ws: Workspace) -> tuple[list[str], list[Path]]:
    payload = torch.load(ws.model, weights_only=True)
    payload["config"]["model"]["channels"] = [8192, 16384, 32768]
    huge = ws.root / "huge.pt"
    torch.save(payload, huge)
    return ["predict", "--model", str(huge), str(ws.ct), str(ws.root / "out")], [ws.patient, huge]


def _missing_run(ws: Workspace) -> tuple[list[str], list[Path]]:
    return (
        [
            "predict",
            "--model",
            "runs:/0123456789abcdef0123456789abcdef/model",
            str(ws.ct),
            str(ws.root / "out"),
        ],
        [ws.patient],
    )


def _unreachable_server(ws: Workspace) -> tuple[list[str], list[Path]]:
    return _missing_run(ws)


def _pacs_port_out_of_range(ws: Workspace) -> tuple[list[str], list[Path]]:
    return (
        [
            "pacs",
            "run",
            str(ws.root / "out"),
            "--url",
            "http://127.0.0.1:99999",
            "--model",
            str(ws.model),
        ],
        [ws.model],
    )


def _pacs_ftp_with_password(ws: Workspace) -> tuple[list[str], list[Path]]:
    return (
        [
            "pacs",
            "run",
            str(ws.root / "out"),
            "--url",
            f"ftp://ann:{PASSWORD}@pacs.invalid/",
            "--model",
            str(ws.model),
        ],
        [ws.model],
    )


def _batch_corrupt_ledger(ws: Workspace) -> tuple[list[str], list[Path]]:
    out = ws.root / "batch-out"
    out.mkdir()
    ledger = out / "ledger.sqlite"
    ledger.write_bytes(b"this is not an SQLite database" * 40)
    return ["batch", str(ws.patient), str(out), "--model", str(ws.model)], [ws.patient, ledger]


def _listen_open_to_anyone(ws: Workspace) -> tuple[list[str], list[Path]]:
    return ["pacs", "listen", str(ws.root / "out"), "--model", str(ws.model)], [ws.model]


CASES = {
    "predict-into-its-input": Case(
        _predict_into_its_input, lambda ws: [str(ws.ct), "is the input"]
    ),
    "predict-into-a-parent": Case(
        _predict_into_a_parent, lambda ws: [str(ws.patient), "contains the input"]
    ),
    "predict-through-a-link": Case(
        _predict_through_a_link, lambda ws: ["lies inside the input", str(ws.ct)]
    ),
    "predict-over-the-model": Case(
        _predict_over_the_model, lambda ws: [str(ws.root), "contains the input"]
    ),
    "predict-over-a-foreign-folder": Case(
        _predict_over_a_foreign_folder, lambda ws: ["clinic-notes", "not a medseg output"]
    ),
    "predict-existing-out-first": Case(
        _predict_existing_out_before_work, lambda ws: [str(ws.root / "out"), "exists"]
    ),
    "convert-into-its-input": Case(
        _convert_into_its_input, lambda ws: [str(ws.ct), "is the input"]
    ),
    "export-over-a-slice": Case(
        _export_over_a_slice, lambda ws: [str(ws.ct), "lies inside the input"]
    ),
    "export-inside-the-ct": Case(
        _export_new_file_inside_the_ct, lambda ws: ["RS.dcm", "lies inside the input"]
    ),
    "export-over-a-foreign-file": Case(
        _export_over_a_foreign_file, lambda ws: ["plan.dcm", "not written by medseg"]
    ),
    "export-to-a-folder": Case(_export_to_a_folder, lambda ws: ["existing", "is a folder"]),
    "evaluate-into-the-reference": Case(
        _evaluate_into_the_reference, lambda ws: ["metrics", "lies inside the input"]
    ),
    "config-latin-1": Case(_latin1_config, lambda ws: ["latin1.yaml", "UTF-8"]),
    "config-binary": Case(_binary_config, lambda ws: ["model.pt", "UTF-8"]),
    "checkpoint-huge-network": Case(_huge_network, lambda ws: ["huge.pt", "over the limit"]),
    "model-run-missing": Case(
        _missing_run, lambda ws: ["runs:/0123456789abcdef0123456789abcdef/model", "no MLflow store"]
    ),
    "model-server-unreachable": Case(
        _unreachable_server,
        lambda ws: ["does not answer"],
        env=lambda ws: {"MLFLOW_TRACKING_URI": f"http://ann:{PASSWORD}@127.0.0.1:{_closed_port()}"},
        absent=(PASSWORD,),
    ),
    "pacs-port-out-of-range": Case(_pacs_port_out_of_range, lambda ws: ["99999"]),
    "batch-corrupt-ledger": Case(
        _batch_corrupt_ledger, lambda ws: ["ledger.sqlite", "not a medseg ledger"]
    ),
    "listen-without-allowed-aets": Case(_listen_open_to_anyone, lambda ws: ["--allow-aet"]),
    "pacs-url-password": Case(
        _pacs_ftp_with_password, lambda ws: ["ftp://ann:***@"], absent=(PASSWORD,)
    ),
}


def _assert_one_line_error(result: subprocess.CompletedProcess[str], names: list[str]) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    (line,) = lines
    assert line.startswith("error: "), line
    for name in names:
        assert name in line, (name, line)
    return line


@pytest.mark.parametrize("name", list(CASES), ids=list(CASES))
def test_hostile_command_is_one_named_error_and_inputs_are_unchanged(
    name: str, workspace: Workspace
) -> None:
    case = CASES[name]
    args, inputs = case.build(workspace)
    before = _checksums(inputs)
    cwd = workspace.root / "cwd"
    cwd.mkdir()
    result = _medseg(*args, cwd=cwd, env=case.env(workspace) or None)
    _assert_one_line_error(result, case.names(workspace))
    for text in case.absent:
        assert text not in result.stdout + result.stderr
    assert _checksums(inputs) == before
    assert list(cwd.iterdir()) == []  # no mlflow.db, nothing else in the working directory


# ---------------------------------------------------------------------------------------------
# the file system refuses: read-only and full (a real tmpfs, mounted for the test)


@contextlib.contextmanager
def _tmpfs(where: Path, options: str) -> Iterator[Path]:
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_output_on_a_read_only_file_system(workspace: Workspace) -> None:
    before = _checksums([workspace.patient])
    with _tmpfs(workspace.root / "ro", "size=4m,ro") as ro:
        result = _medseg(
            "predict",
            "--model",
            str(workspace.model),
            str(workspace.ct),
            str(ro / "out"),
            cwd=workspace.root,
        )
        _assert_one_line_error(result, [str(ro / "out"), "read-only file system"])
        assert list(ro.iterdir()) == []
    assert _checksums([workspace.patient]) == before


@pytest.mark.slow
def test_disk_full_leaves_nothing_and_keeps_the_previous_output(workspace: Workspace) -> None:
    """A 64 kB file system: the seeded model's outputs (about 170 kB) cannot fit. The first run leaves
    nothing; a run with --overwrite over a (small, earlier) output keeps it unchanged."""
    before = _checksums([workspace.patient])
    with _tmpfs(workspace.root / "small", "size=64k") as small:
        out = small / "out"
        result = _medseg(
            "predict",
            "--model",
            str(workspace.model),
            str(workspace.ct),
            str(out),
            cwd=workspace.root,
        )
        _assert_one_line_error(result, [str(out), "disk full"])
        assert [p.name for p in small.iterdir()] == []
        out.mkdir()
        (out / ".medseg-output").write_text("written by medseg\n")
        (out / "volumes.json").write_text("{}\n")
        previous = _checksums([out])
        result = _medseg(
            "predict",
            "--overwrite",
            "--model",
            str(workspace.model),
            str(workspace.ct),
            str(out),
            cwd=workspace.root,
        )
        line = _assert_one_line_error(result, [str(out), "disk full"])
        assert "previous output is unchanged" in line
        assert _checksums([out]) == previous
        assert sorted(p.name for p in small.iterdir()) == ["out"]
    assert _checksums([workspace.patient]) == before


# ---------------------------------------------------------------------------------------------
# what must work: names that are not UTF-8, the output modes


def test_input_folder_name_that_is_not_utf8(workspace: Workspace) -> None:
    """A Latin-1 folder name (``pat\\xe9``) is a valid POSIX path: predict writes its report,
    with the name shown escaped."""
    latin1 = Path(os.fsdecode(bytes(workspace.root) + b"/pat\xe9"))
    workspace.ct.rename(latin1)
    result = _medseg(
        "predict",
        "--model",
        str(workspace.model),
        str(latin1),
        str(workspace.root / "out"),
        cwd=workspace.root,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    page = (workspace.root / "out" / "report" / "report.html").read_text(encoding="utf-8")
    assert "pat\\udce9" in page


@pytest.mark.parametrize(
    ("private", "umask", "file_mode", "dir_mode"),
    [(False, 0o002, 0o664, 0o775), (True, 0o002, 0o600, 0o700)],
    ids=["umask-002", "private"],
)
def test_output_modes_follow_the_umask(
    workspace: Workspace, private: bool, umask: int, file_mode: int, dir_mode: int
) -> None:
    out = workspace.root / "out"
    args = [
        *(["--private"] if private else []),
        "predict",
        "--model",
        str(workspace.model),
        str(workspace.ct),
        str(out),
    ]
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            (
                f"import os, sys; os.umask({umask}); sys.argv = ['medseg', "
                "*sys.argv[1:]]; from medseg.cli import app; app()"
            ),
            *args,
        ],
        cwd=workspace.root,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    paths = [out, *out.rglob("*")]
    assert {oct(p.stat().st_mode & 0o777) for p in paths if p.is_dir()} == {oct(dir_mode)}
    assert {oct(p.stat().st_mode & 0o777) for p in paths if p.is_file()} == {oct(file_mode)}


@pytest.mark.slow
def test_overwrite_replaces_a_medseg_output(workspace: Workspace) -> None:
    """The other side of the rule: --overwrite does replace what medseg wrote, for a
    folder (predict) and for a file (export-rtstruct)."""
    out = workspace.root / "out"
    for _ in range(2):
        result = _medseg(
            "predict",
            "--overwrite",
            "--model",
            str(workspace.model),
            str(workspace.ct),
            str(out),
            cwd=workspace.root,
        )
        assert result.returncode == 0, result.stderr
    rtss = workspace.root / "rtss.dcm"
    for flag in ([], ["--overwrite"]):
        result = _medseg(
            "export-rtstruct",
            *flag,
            "--ct",
            str(workspace.ct),
            "--labels",
            str(workspace.labels),
            "--out",
            str(rtss),
            cwd=workspace.root,
        )
        assert result.returncode == 0, result.stderr
    again = _medseg(
        "export-rtstruct",
        "--ct",
        str(workspace.ct),
        "--labels",
        str(workspace.labels),
        "--out",
        str(rtss),
        cwd=workspace.root,
    )
    _assert_one_line_error(again, [str(rtss), "exists"])


@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"]
)
def test_interrupted_predict_leaves_no_partial_output(
    workspace: Workspace, signum: int, code: int
) -> None:
    """Stopped while it writes its output folder: one line, the documented exit code, and
    neither the output nor its hidden temporary is left."""
    out = workspace.root / "out"
    before = _checksums([workspace.patient])
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "medseg",
            "predict",
            "--model",
            str(workspace.model),
            str(workspace.ct),
            str(out),
        ],
        cwd=workspace.root,
        env={**env, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    while not list(workspace.root.glob(".out.*.tmp")) and process.poll() is None:
        assert time.monotonic() < deadline, "predict never started writing"
        time.sleep(0.005)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    if process.returncode == 0:  # finished before the signal arrived: nothing to check
        pytest.skip("predict finished before the signal was delivered")
    assert process.returncode == code, (process.returncode, stderr)
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("interrupted"), lines
    assert not out.exists()
    assert sorted(p.name for p in workspace.root.iterdir() if p.name.startswith(".")) == []
    assert _checksums([workspace.patient]) == before


def test_credentials_never_reach_the_debug_log(workspace: Workspace) -> None:
    """``medseg -v`` logs everything at DEBUG (MLflow, urllib3 included): the password of a
    tracking URI appears in none of it."""
    uri = f"http://ann:{PASSWORD}@127.0.0.1:{_closed_port()}"
    result = _medseg(
        "-v",
        "predict",
        "--model",
        "runs:/0123456789abcdef0123456789abcdef/model",
        str(workspace.ct),
        str(workspace.root / "out"),
        cwd=workspace.root,
        env={"MLFLOW_TRACKING_URI": uri},
    )
    assert result.returncode == 2, result.stderr
    assert PASSWORD not in result.stdout + result.stderr
    assert "ann:***@127.0.0.1" in result.stderr


def test_batch_output_inside_its_input_is_refused(workspace: Workspace) -> None:
    for args in (
        ["batch", str(workspace.root), str(workspace.patient / "out")],
        ["batch", str(workspace.patient), str(workspace.root)],
    ):
        before = _checksums([workspace.patient, workspace.model])
        result = _medseg(*args, "--model", str(workspace.model), cwd=workspace.root)
        _assert_one_line_error(result, [args[2], "the input"])
        assert _checksums([workspace.patient, workspace.model]) == before
        assert not (workspace.patient / "out").exists()
