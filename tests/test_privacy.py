"""Patient identifiers never reach logs, progress output, MLflow, error messages or the ledger.

Real CTs with RT-STRUCTs (lung-gtv-ct) are copied with distinctive PatientName, PatientID,
PatientBirthDate, AccessionNumber and InstitutionName, into folders named after the PatientID
(as hospital exports are); then ``medseg -v train`` and ``medseg -v batch`` run on them as
a user would, at DEBUG, and every byte they print or write (logs, ledger, summaries, reports,
the MLflow database and every artifact) is searched for those values. The exported RT-STRUCT
is the one place that must keep them (its patient module is the source's).
"""

from __future__ import annotations

import gzip
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pydicom
import pydicom.uid
import pytest
import torch
import yaml
from typer.testing import CliRunner

from medseg.cli import app
from medseg.config import PrivacyConfig, load_config
from medseg.errors import ModelError
from medseg.model import CHECKPOINT_FORMAT, build_network, load_checkpoint, save_checkpoint
from medseg.privacy import SALT_NAME, load_salt, pseudonym, redact
from tests.conftest import require_data

REPO = Path(__file__).resolve().parents[1]
BIRTH_DATE = "19070913"


def _identity(i: int) -> dict[str, str]:
    """Distinctive values for patient ``i`` (no word a log could hold by chance)."""
    return {
        "PatientName": f"Zzqprivat{i}^Xqcanar",
        "PatientID": f"PIDQX{i}7731",
        "PatientBirthDate": BIRTH_DATE,
        "AccessionNumber": f"ACCQX{i}5521",
        "InstitutionName": f"Qxhospital{i} Zyxklinik",
    }


def _needles() -> list[bytes]:
    """Every identifier value (and its parts) as it could appear in a text, lower case."""
    words = {
        BIRTH_DATE,
        "1907-09-13",
        "Zzqprivat",
        "Xqcanar",
        "PIDQX",
        "ACCQX",
        "Qxhospital",
        "Zyxklinik",
    }
    for i in range(1, 5):
        words |= {v for v in _identity(i).values() if v != BIRTH_DATE}
    return sorted(w.lower().encode() for w in words)


def _write_hospital(root: Path) -> dict[str, dict[str, str]]:
    """lung-gtv-ct pat_1..3 (CT + RT-STRUCT) and a fourth patient with a CT only, one of its
    slices truncated (a case that fails), under folders named by PatientID.

    Returns PatientID -> the identity written into its files.
    """
    source = require_data("lung-gtv-ct")
    patients = {}
    for i, name in enumerate(("pat_1", "pat_2", "pat_3", "pat_2"), start=1):
        identity = _identity(i)
        folder = root / identity["PatientID"]
        folder.mkdir(parents=True)
        new_uids = {
            k: pydicom.uid.generate_uid()
            for k in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")
        }
        for path in sorted((source / name).iterdir()):
            if i == 4 and "_RS_" in path.name:
                continue  # the fourth patient has no RT-STRUCT: training skips it
            ds = pydicom.dcmread(path)
            for keyword, value in identity.items():
                setattr(ds, keyword, value)
            if i == 4:  # another study than pat_2's
                for keyword, value in new_uids.items():
                    setattr(ds, keyword, value)
                ds.SOPInstanceUID = pydicom.uid.generate_uid()
                ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.save_as(folder / path.name, enforce_file_format=True)
        patients[identity["PatientID"]] = identity
    victim = sorted(root.glob(f"{_identity(4)['PatientID']}/*IMG*"))[5]
    victim.write_bytes(victim.read_bytes()[:-3000])
    return patients


def _config(tmp_path: Path, root: Path) -> Path:
    raw = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    raw["data"] = {
        "dicom_root": str(root),
        "labels": {1: ["gtv*"]},
        "num_folds": 3,
        "cache_dir": str(tmp_path / "cache"),
    }
    raw["model"]["labels"] = {1: "GTV"}
    raw["train"].update({"epochs": 1, "samples_per_case": 2})
    # a network trained for one epoch marks half the body; exporting that as contours takes
    # minutes, so its components are removed (the RT-STRUCT is written with an empty ROI)
    raw["postprocess"] = {"default": {"min_component_volume_ml": 1.0e6}}
    raw["export"] = {"empty_rois": "keep"}  # so an RT-STRUCT (with the empty ROI) is written
    raw["infer"].update({"roi_size": [48, 96, 96], "overlap": 0.0})  # few windows: fast
    raw["tracking"] = {
        "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "experiment": "privacy-check",
    }
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _medseg(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m medseg -v ARGS`` as a user runs it (DEBUG logging), in ``tmp_path``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return subprocess.run(
        [sys.executable, "-m", "medseg", "-v", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _sqlite_text(path: Path) -> str:
    db = sqlite3.connect(path)
    try:
        return "\n".join(db.iterdump())
    finally:
        db.close()


def _texts(root: Path, skip: tuple[Path, ...]) -> dict[str, bytes]:
    """Every file under ``root`` but ``skip``: its relative path, and its bytes (databases as
    SQL dumps, gzip files decompressed)."""
    found: dict[str, bytes] = {}
    for path in sorted(root.rglob("*")):
        if any(path == s or s in path.parents for s in skip) or path.is_dir():
            continue
        name = path.relative_to(root).as_posix()
        found[f"<name> {name}"] = name.encode()
        if path.is_symlink():
            continue
        data = path.read_bytes()
        if data.startswith(b"SQLite format 3"):
            data += _sqlite_text(path).encode()
        elif data.startswith(b"\x1f\x8b"):
            data = gzip.decompress(data)
        found[name] = data
    return found


def _leaks(texts: dict[str, bytes]) -> list[str]:
    needles = _needles()
    return [
        f"{where}: {needle.decode()}"
        for where, data in texts.items()
        for needle in needles
        if needle in data.lower()
    ]


@pytest.mark.slow
def test_identifiers_stay_out_of_train_and_batch_outputs(tmp_path: Path) -> None:
    hospital = tmp_path / "hospital"
    patients = _write_hospital(hospital)
    config = _config(tmp_path, hospital)

    trained = _medseg(tmp_path, "train", str(config), "--out", "run", "--fold", "0")
    assert trained.returncode == 0, trained.stderr[-3000:]
    batch = _medseg(
        tmp_path,
        "batch",
        "hospital",
        "out",
        "--model",
        "run/fold_0/best.pt",
        "--config",
        str(config),
    )
    assert batch.returncode == 1, batch.stderr[-3000:]  # the truncated patient fails
    assert "3 done, 0 skipped (unchanged), 1 failed" in batch.stdout

    # the scan would see them: they are in the inputs, and the training skipped a patient
    assert _leaks(_texts(hospital, ()))
    assert "skipped <case_003>" not in trained.stderr and "skipped case_003" in trained.stderr
    exports = tuple(sorted((tmp_path / "out" / "cases").glob("*/*.dcm")))
    assert len(exports) >= 3
    outputs = _texts(tmp_path, (hospital, *exports))
    assert any(name.startswith("mlruns/") for name in outputs)
    outputs |= {
        f"<{what} {stream}>": text.encode()
        for what, run in (("train", trained), ("batch", batch))
        for stream, text in (("stdout", run.stdout), ("stderr", run.stderr))
    }
    assert _leaks(outputs) == []

    # the exports keep the patient module of their source
    for path in exports:
        if path.name != "rtstruct.dcm":
            continue
        ds = pydicom.dcmread(path)
        identity = patients[str(ds.PatientID)]
        assert str(ds.PatientName) == identity["PatientName"]
        assert ds.PatientBirthDate == BIRTH_DATE
        assert ds.AccessionNumber == identity["AccessionNumber"]

    # the case ids are keyed with this output folder's salt
    salt = load_salt(tmp_path / "out")
    db = sqlite3.connect(tmp_path / "out" / "ledger.sqlite")
    rows = db.execute("SELECT case_id, study_instance_uid FROM cases").fetchall()
    db.close()
    assert {case_id for case_id, _ in rows} == {pseudonym(uid, salt) for _, uid in rows}
    assert oct((tmp_path / "out" / SALT_NAME).stat().st_mode & 0o777) == "0o600"


def test_opting_in_logs_input_folders(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """With privacy.log_identifiers the batch logs each case's input folder and the training
    names skipped patients by folder; without it, neither (the same scan as above)."""
    from medseg.training.crossval import load_cases

    hospital = tmp_path / "hospital"
    _write_hospital(hospital)
    config_path = _config(tmp_path, hospital)
    config = load_config(config_path)
    model = save_checkpoint(tmp_path / "model.pt", build_network(config.model), config)
    opted = tmp_path / "opted-in.yaml"
    opted.write_text(config_path.read_text() + "privacy: {log_identifiers: true}\n")
    caplog.set_level(logging.INFO)
    # an untrained network: this test is about what is logged, not what is found
    for out, run_config in (("default", config_path), ("opted", opted)):
        caplog.clear()
        result = CliRunner().invoke(
            app,
            [
                "batch",
                str(hospital),
                str(tmp_path / out),
                "--model",
                str(model),
                "--config",
                str(run_config),
            ],
        )
        assert result.exit_code == 1, result.output
        found = _leaks({"log": caplog.text.encode(), "output": result.output.encode()})
        if out == "default":
            assert found == []
        else:
            assert {f.split(": ")[1] for f in found} >= {"pidqx47731"}

    for opt_in in (False, True):
        caplog.clear()
        update = {"privacy": PrivacyConfig(log_identifiers=opt_in)}
        load_cases(config.model_copy(update=update))
        assert ("PIDQX47731" in caplog.text) is opt_in
        assert ("skipped case_003: <case_003>: no RT-STRUCT" in caplog.text) is not opt_in


def test_redact_replaces_longest_paths_first() -> None:
    names = {"/data/P1": "<case_000>", "/data/P10": "<case_001>"}
    assert redact("/data/P10/x.dcm and /data/P1/y.dcm", names) == (
        "<case_001>/x.dcm and <case_000>/y.dcm"
    )
    assert redact("nothing to hide", {}) == "nothing to hide"


def test_salt_is_made_once_per_output_folder_and_keys_the_ids(tmp_path: Path) -> None:
    first = load_salt(tmp_path / "a")
    assert load_salt(tmp_path / "a") == first
    other = load_salt(tmp_path / "b")
    assert other != first and len(first) == 32
    assert pseudonym("1.2.3", first) == pseudonym("1.2.3", first)
    assert pseudonym("1.2.3", first) != pseudonym("1.2.3", other)
    assert pseudonym("1.2.3", first) != pseudonym("1.2.4", first)
    assert [p.name for p in (tmp_path / "a").iterdir()] == [SALT_NAME]  # no temporary left
    (tmp_path / "a" / SALT_NAME).write_text("not hex\n")
    from medseg.errors import ConfigError

    with pytest.raises(ConfigError, match=SALT_NAME):
        load_salt(tmp_path / "a")


class _Payload:
    """An arbitrary object: a checkpoint must never unpickle one (it could run code)."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (shutil.rmtree, ("/nonexistent-medseg-target",))


@pytest.mark.parametrize("where", ["weights", "extra", "top"], ids=["weights", "extra", "top"])
def test_checkpoint_holding_a_pickled_object_is_refused(tmp_path: Path, where: str) -> None:
    config = load_config(REPO / "configs" / "tiny.yaml")
    path = save_checkpoint(tmp_path / "untrusted.pt", build_network(config.model), config)
    payload = torch.load(path, weights_only=True)
    if where == "weights":
        payload["state_dict"]["model.0.conv.weight"] = _Payload()
    elif where == "extra":
        payload["extra"] = {"epoch": _Payload()}
    else:
        payload = {"format": CHECKPOINT_FORMAT, "object": _Payload()}
    torch.save(payload, path)
    with pytest.raises(ModelError, match=r"untrusted\.pt: refused to load"):
        load_checkpoint(path)
    from medseg.model import load_training_state

    with pytest.raises(ModelError, match=r"untrusted\.pt: refused to load"):
        load_training_state(path)
    result = CliRunner().invoke(
        app, ["predict", str(tmp_path), str(tmp_path / "out"), "--model", str(path)]
    )
    assert result.exit_code == 2
    assert "untrusted.pt: refused to load" in result.output
