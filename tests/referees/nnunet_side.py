"""Runs inside the nnU-Net side virtualenv (see tests/referees/nnunet.py); never imported by medseg.

Usage::

    python nnunet_side.py plan IN.json OUT.json
    python nnunet_side.py fingerprint IN.json OUT.json

``plan``: IN holds ``{"jobs": [{"fingerprint": ..., "dataset_json": ...,
"gpu_memory_target_in_gb": ...}, ...]}``; each job is written as a dataset into a temporary
``nnUNet_raw``/``nnUNet_preprocessed`` layout and planned with nnU-Net's ``ExperimentPlanner``
(``plan_experiment()``, as ``nnUNetv2_plan_experiment`` runs it). OUT is a list with one entry
per job: ``transpose_forward``, ``transpose_backward``, ``3d_fullres`` (the configuration, or
None) and ``vram_estimate`` (``static_estimate_VRAM_usage`` of the final 3d_fullres patch).

``fingerprint``: IN holds ``{"raw_dataset": FOLDER, "num_processes": N}``; FOLDER (nnU-Net's raw
layout) is linked into a temporary ``nnUNet_raw`` and ``DatasetFingerprintExtractor`` run on
it. OUT is the ``dataset_fingerprint.json`` content.

nnunetv2 is imported inside the functions only: pytest's ``--doctest-modules`` imports this
file in medseg's environment, which does not have nnunetv2.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DATASET_NAME = "Dataset999_MedsegReferee"


def _set_paths(root: Path) -> None:
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (root / name).mkdir(parents=True, exist_ok=True)
        os.environ[name] = str(root / name)


def _plain(value: Any) -> Any:
    """JSON-ready copy: numpy scalars and arrays, tuples -> Python numbers and lists."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):
        return _plain(value.tolist())
    return value


@contextlib.contextmanager
def _no_weight_init(torch: Any) -> Iterator[None]:
    """Skip the random initialisation of convolution weights (a no-op ``reset_parameters``).

    nnU-Net builds a whole PlainConvUNet for every memory estimate it makes (dozens per
    dataset, ~3 s per dataset here, most of it drawing random weights); the estimate reads
    only the modules' channel counts and strides, never a weight, so the planner's answers
    do not change."""
    conv = torch.nn.modules.conv._ConvNd
    original = conv.reset_parameters
    conv.reset_parameters = lambda self: None
    try:
        yield
    finally:
        conv.reset_parameters = original


def plan(payload: dict[str, Any], root: Path) -> list[dict[str, Any]]:
    _set_paths(root)
    import torch
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import (
        ExperimentPlanner,
    )

    raw = root / "nnUNet_raw" / DATASET_NAME
    preprocessed = root / "nnUNet_preprocessed" / DATASET_NAME
    answers = []
    for job in payload["jobs"]:
        started = time.perf_counter()
        raw.mkdir(parents=True, exist_ok=True)
        preprocessed.mkdir(parents=True, exist_ok=True)
        for stale in preprocessed.iterdir():  # plans of the previous job must not be merged in
            stale.unlink()
        dataset_json = dict(job["dataset_json"])
        # the planner lists the training cases; files need not exist for planning
        dataset_json["dataset"] = {
            f"case{i:04d}": {
                "images": [f"imagesTr/case{i:04d}_0000.nii.gz"],
                "label": f"labelsTr/case{i:04d}.nii.gz",
            }
            for i in range(dataset_json["numTraining"])
        }
        (raw / "dataset.json").write_text(json.dumps(dataset_json))
        (preprocessed / "dataset_fingerprint.json").write_text(json.dumps(job["fingerprint"]))
        with contextlib.redirect_stdout(io.StringIO()), _no_weight_init(torch):
            planner = ExperimentPlanner(
                DATASET_NAME, gpu_memory_target_in_gb=job["gpu_memory_target_in_gb"]
            )
            plans = planner.plan_experiment()
        fullres = plans["configurations"].get("3d_fullres")
        lowres = plans["configurations"].get("3d_lowres")

        def estimate_of(
            config: dict[str, Any] | None, dataset_json: dict[str, Any] = dataset_json
        ) -> int | None:
            if config is None:
                return None
            arch = config["architecture"]
            with _no_weight_init(torch):
                return int(
                    ExperimentPlanner.static_estimate_VRAM_usage(
                        config["patch_size"],
                        len(dataset_json["channel_names"]),
                        len(dataset_json["labels"]),
                        arch["network_class_name"],
                        arch["arch_kwargs"],
                        arch["_kw_requires_import"],
                    )
                )

        answers.append(
            _plain(
                {
                    "transpose_forward": plans["transpose_forward"],
                    "transpose_backward": plans["transpose_backward"],
                    "3d_fullres": fullres,
                    "vram_estimate": estimate_of(fullres),
                    "3d_lowres": lowres,
                    "vram_estimate_lowres": estimate_of(lowres),
                    "seconds": time.perf_counter() - started,
                    "foreground_intensity_properties_per_channel": plans[
                        "foreground_intensity_properties_per_channel"
                    ],
                }
            )
        )
    return answers


def fingerprint(payload: dict[str, Any], root: Path) -> dict[str, Any]:
    _set_paths(root)
    (root / "nnUNet_raw" / DATASET_NAME).symlink_to(Path(payload["raw_dataset"]).resolve())
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import (
        DatasetFingerprintExtractor,
    )

    extractor = DatasetFingerprintExtractor(
        DATASET_NAME, num_processes=int(payload["num_processes"])
    )
    extractor.show_progress_bar = False
    with contextlib.redirect_stdout(io.StringIO()):
        result = extractor.run(overwrite_existing=True)
    return _plain(result)  # type: ignore[no-any-return]


def fingerprints(payload: dict[str, Any], root: Path) -> list[dict[str, Any]]:
    """``fingerprint`` for each of ``payload["raw_datasets"]``, in one process (nnU-Net's
    imports once)."""
    answers = []
    for index, folder in enumerate(payload["raw_datasets"]):
        own = root / str(index)
        own.mkdir()
        job = {"raw_dataset": folder, "num_processes": payload["num_processes"]}
        answers.append(fingerprint(job, own))
    return answers


def main(argv: list[str]) -> int:
    command, request, answer = argv
    payload = json.loads(Path(request).read_text())
    with tempfile.TemporaryDirectory(prefix="nnunet-side-") as tmp:
        if command == "plan":
            result: Any = plan(payload, Path(tmp))
        elif command == "fingerprint":
            result = fingerprint(payload, Path(tmp))
        elif command == "fingerprints":
            result = fingerprints(payload, Path(tmp))
        else:
            raise SystemExit(
                f"unknown command {command!r}: expected plan, fingerprint or fingerprints"
            )
    Path(answer).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
