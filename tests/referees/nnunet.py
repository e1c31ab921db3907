"""nnU-Net v2 as a referee: its experiment planner and fingerprint extractor, run in a side
virtualenv (nnunetv2 cannot be a medseg dependency, and its training stack does not import here).

- :func:`nnunet_python`: the side virtualenv's python. ``MEDSEG_NNUNET_PYTHON`` may name an
  existing one; otherwise it is built from ``nnunet-requirements.txt`` (+ its constraints), on
  top of the test run's own packages (torch among them, see :func:`_share_main_packages`), under
  ``$MEDSEG_TEST_CACHE`` (default ``~/.cache/medseg-tests``) as ``nnunet-venv``, stamped with
  the pins' sha256 and rebuilt when they change, under a file lock so that two test processes
  never build it at once. If it cannot be had, the test is skipped locally and fails under
  ``CI=true`` (as ``conftest.require_module``).
- :func:`plan_with_nnunet`: nnU-Net's ``ExperimentPlanner.plan_experiment()`` for many
  fingerprints in one process (its imports alone take about 5 s), returning each 3d_fullres
  configuration.
- :func:`fingerprint_with_nnunet`: nnU-Net's ``DatasetFingerprintExtractor`` on a raw dataset
  folder in nnU-Net's layout (``dataset.json``, ``imagesTr``, ``labelsTr``).
- :func:`nnunet_inputs`: a medseg :class:`~medseg.planning.fingerprint.Fingerprint` as the
  ``dataset_fingerprint.json`` and ``dataset.json`` nnU-Net reads.

The side script is ``nnunet_side.py`` next to this file; it imports nnunetv2 only inside its
``main`` (pytest's ``--doctest-modules`` imports every module under ``tests/``).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from medseg.planning.fingerprint import Fingerprint

HERE = Path(__file__).resolve().parent
REQUIREMENTS = HERE / "nnunet-requirements.txt"
CONSTRAINTS = HERE / "nnunet-constraints.txt"
SIDE_SCRIPT = HERE / "nnunet_side.py"
#: pip's install of what nnunetv2 adds to the main venv takes about 30 s; room for a slow mirror.
BUILD_TIMEOUT_S = 1800
#: one side process plans ~100 fingerprints in well under a minute.
RUN_TIMEOUT_S = 900
#: the side process uses one thread: the test machines' cores are shared.
ONE_THREAD = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "1",
    "nnUNet_n_proc_DA": "1",
}


def _unavailable(message: str) -> None:
    """Skip, or fail under CI=true, because the referee cannot run."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def _cache_root() -> Path:
    return Path(os.environ.get("MEDSEG_TEST_CACHE", Path.home() / ".cache" / "medseg-tests"))


def pins_digest() -> str:
    """sha256 of the requirement and constraint files: the side virtualenv's stamp."""
    return hashlib.sha256(REQUIREMENTS.read_bytes() + CONSTRAINTS.read_bytes()).hexdigest()


def _build(venv: Path, log: Path) -> str | None:
    """Build the virtualenv; the failure's description, or None when it worked."""
    python = venv / "bin" / "python"
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(venv)],
        [str(python), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)],
        [str(python), "-c", "import nnunetv2.experiment_planning.experiment_planners"],
    ]
    with log.open("w") as out:
        for index, step in enumerate(steps):
            if index == 1:
                _share_main_packages(venv)
            try:
                done = subprocess.run(
                    step, stdout=out, stderr=subprocess.STDOUT, timeout=BUILD_TIMEOUT_S, check=False
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                return f"{' '.join(step)}: {exc}"
            if done.returncode != 0:
                return f"{' '.join(step)} exited {done.returncode}"
    return None


def _share_main_packages(venv: Path) -> None:
    """Put this test run's site-packages (torch 2.13.0+cpu, numpy, SimpleITK, ...) on the side
    virtualenv's path, after its own: pip then installs only what nnunetv2 adds (27 s and
    213 MB instead of 80-145 s and 1.9 GB for a second torch), the side venv's own packages
    win where both have one, and pip never writes into the main virtualenv (it installs into
    the side venv and leaves packages outside it alone)."""
    import sysconfig

    purelib = Path(sysconfig.get_paths()["purelib"])
    (site,) = (venv / "lib").glob("python3*/site-packages")
    (site / "zz_medseg_main_venv.pth").write_text(f"{purelib}\n")


def nnunet_python() -> Path:
    """Path of the python of a virtualenv holding nnunetv2 2.8.1 (see the module docstring)."""
    given = os.environ.get("MEDSEG_NNUNET_PYTHON")
    if given:
        if not Path(given).is_file():
            _unavailable(f"MEDSEG_NNUNET_PYTHON={given} is not a file")
        return Path(given)
    cache = _cache_root()
    venv, want = cache / "nnunet-venv", pins_digest()
    python, stamp = venv / "bin" / "python", venv / "medseg-pins.sha256"
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / "nnunet-venv.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second process waits here, then finds it built
        if python.is_file() and stamp.is_file() and stamp.read_text().strip() == want:
            return python
        log = cache / "nnunet-venv-install.log"
        failure = _build(venv, log)
        if failure is not None:
            _unavailable(
                f"cannot build the nnU-Net referee virtualenv {venv}: {failure}; see {log}"
            )
        stamp.write_text(want + "\n")
    return python


def run_side(command: str, payload: dict[str, Any]) -> Any:
    """Run ``nnunet_side.py COMMAND IN.json OUT.json`` in the side virtualenv; OUT's content."""
    python = nnunet_python()
    with tempfile.TemporaryDirectory(prefix="medseg-nnunet-") as tmp:
        request, answer = Path(tmp) / "in.json", Path(tmp) / "out.json"
        request.write_text(json.dumps(payload))
        env = {**os.environ, **ONE_THREAD}
        for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            env.pop(name, None)  # the side script sets its own, inside its temporary folder
        done = subprocess.run(
            [str(python), str(SIDE_SCRIPT), command, str(request), str(answer)],
            capture_output=True,
            text=True,
            env=env,
            timeout=RUN_TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0:
            raise AssertionError(
                f"nnU-Net side script {command} exited {done.returncode}:\n{done.stderr[-4000:]}"
            )
        return json.loads(answer.read_text())


def nnunet_inputs(fingerprint: Fingerprint) -> dict[str, Any]:
    """The ``dataset_fingerprint.json`` and ``dataset.json`` nnU-Net would have for this dataset.

    medseg's ``(slice, row, column)`` is nnU-Net's axis order for images it reads through
    SimpleITK (it reverses SimpleITK's ``(x, y, z)``), so spacings and shapes pass unchanged.
    """
    fg = fingerprint.foreground
    nn_fingerprint = {
        "spacings": [list(case.spacing) for case in fingerprint.cases],
        "shapes_after_crop": [list(case.shape_after_crop) for case in fingerprint.cases],
        "foreground_intensity_properties_per_channel": {
            "0": {
                "mean": fg.mean,
                "median": fg.median,
                "std": fg.std,
                "min": fg.min,
                "max": fg.max,
                "percentile_99_5": fg.percentile_99_5,
                "percentile_00_5": fg.percentile_00_5,
            }
        },
        "median_relative_size_after_cropping": fingerprint.median_relative_size_after_cropping,
    }
    labels = {"background": 0, **{name: value for value, name in fingerprint.labels.items()}}
    if len(labels) != len(fingerprint.labels) + 1:
        raise ValueError(
            f"nnU-Net needs unique label names other than 'background': {fingerprint.labels}"
        )
    dataset_json = {
        "channel_names": {"0": fingerprint.modality},
        "labels": labels,
        "numTraining": len(fingerprint.cases),
        "file_ending": ".nii.gz",
        "overwrite_image_reader_writer": "SimpleITKIO",
    }
    return {"fingerprint": nn_fingerprint, "dataset_json": dataset_json}


def plan_with_nnunet(
    fingerprints: list[Fingerprint], gpu_memory_gb: list[float]
) -> list[dict[str, Any]]:
    """nnU-Net's plans, one per (fingerprint, GPU memory target), all in one side process.

    Each answer holds ``transpose_forward``/``transpose_backward``, the 3d_fullres
    configuration as nnU-Net writes it into ``nnUNetPlans.json`` (``None`` for a dataset nnU-Net
    plans no 3D configuration for) and ``vram_estimate``: nnU-Net's
    ``static_estimate_VRAM_usage`` of the final patch and architecture. Every per-axis value is
    in nnU-Net's transposed order (coarsest axis first).
    """
    if len(fingerprints) != len(gpu_memory_gb):
        raise ValueError(f"{len(fingerprints)} fingerprints but {len(gpu_memory_gb)} GPU targets")
    jobs = [
        {**nnunet_inputs(fp), "gpu_memory_target_in_gb": gb}
        for fp, gb in zip(fingerprints, gpu_memory_gb, strict=True)
    ]
    answers: list[dict[str, Any]] = run_side("plan", {"jobs": jobs})
    return answers


def fingerprint_with_nnunet(raw_dataset: Path, num_processes: int = 1) -> dict[str, Any]:
    """nnU-Net's ``dataset_fingerprint.json`` content for a dataset folder in nnU-Net's raw
    layout (``dataset.json``, ``imagesTr/CASE_0000.nii.gz``, ``labelsTr/CASE.nii.gz``)."""
    answer: dict[str, Any] = run_side(
        "fingerprint",
        {"raw_dataset": str(Path(raw_dataset).resolve()), "num_processes": num_processes},
    )
    return answer


def fingerprints_with_nnunet(
    raw_datasets: list[Path], num_processes: int = 1
) -> list[dict[str, Any]]:
    """:func:`fingerprint_with_nnunet` of several raw datasets in one side process (its
    imports, about 6 s, once)."""
    answer: list[dict[str, Any]] = run_side(
        "fingerprints",
        {
            "raw_datasets": [str(Path(p).resolve()) for p in raw_datasets],
            "num_processes": num_processes,
        },
    )
    return answer
