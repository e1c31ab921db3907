"""``medseg plan DATA --out PLAN.yaml``: fingerprint a dataset, plan it as nnU-Net v2 would
(scaled to a CPU budget on a CPU) and write the experiment YAML and ``fingerprint.json``.

Both files are written atomically, beside each other; nothing under DATA is written. An
existing plan (or fingerprint) is replaced only with ``overwrite`` and only if ``medseg plan``
wrote it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import medseg
from medseg.errors import ConfigError
from medseg.io.files import atomic_path, check_output
from medseg.planning.experiment import (
    NNUNET_ITERATIONS_PER_EPOCH,
    PlannedExperiment,
    experiment_from_plan,
    render_yaml,
)
from medseg.planning.fingerprint import Fingerprint

__all__ = ["FINGERPRINT_FILE", "PLAN_HEADER", "PlanResult", "plan_experiment"]

_log = logging.getLogger(__name__)

#: The fingerprint's file name, beside the plan.
FINGERPRINT_FILE = "fingerprint.json"
#: First line of every plan YAML: how an existing file is recognised as a plan.
PLAN_HEADER = "medseg plan"


@dataclass(frozen=True, slots=True)
class PlanResult:
    """What ``medseg plan`` wrote."""

    plan_path: Path
    fingerprint_path: Path
    planned: PlannedExperiment
    fingerprint: Fingerprint
    notes: tuple[str, ...]


def plan_experiment(
    data: Path,
    out: Path,
    *,
    device: Literal["cpu", "cuda"] | None = None,
    gpu_memory_gb: float = 8.0,
    time_budget_min: float = 30.0,
    fold_count: int = 5,
    num_threads: int | None = None,
    overwrite: bool = False,
    min_steps: int | None = None,
) -> PlanResult:
    """Plan the experiment for ``data`` and write it to ``out`` (plus ``fingerprint.json``).

    Args:
        data: a dataset.json (nnU-Net v2 raw layout, or a medseg/Decathlon datalist) or an
            experiment YAML whose ``data`` names a datalist or a ``dicom_root`` with ``labels``.
        out: the plan YAML to write.
        device: ``"cuda"`` plans nnU-Net's GPU experiment for ``gpu_memory_gb``; ``"cpu"``
            scales it to ``time_budget_min`` on this machine. Default: cuda if torch sees a
            CUDA device, else cpu.
        gpu_memory_gb: nnU-Net's memory target.
        time_budget_min: with cpu: minutes the training may take here.
        fold_count: cross-validation folds (``data.num_folds``).
        num_threads: torch threads of the planned training (default: all this process may use).
        overwrite: replace an existing plan that ``medseg plan`` wrote.
        min_steps: with cpu: fewest optimiser steps the budget must afford (default
            :data:`medseg.planning.budget.MIN_STEPS`; ``benchmarks/plan_vs_hand.py`` tunes it).

    Raises:
        ConfigError, InputError: on a dataset medseg cannot read, named by file.
        OutputError: ``out`` overlaps the data, exists (without ``overwrite``) or is not a plan.
    """
    import os

    data, out = Path(data), Path(out)
    fingerprint_path = out.parent / FINGERPRINT_FILE
    if not data.exists():
        raise ConfigError(f"{data}: no such dataset file")
    inputs = [data, data.parent] if data.suffix == ".json" else [data]
    for target, medseg_file in ((out, _is_plan), (fingerprint_path, _is_fingerprint)):
        check_output(
            target, inputs=inputs, overwrite=overwrite, is_folder=False, is_medseg_file=medseg_file
        )
    if device is None:
        device = _default_device()
    threads = num_threads or max(1, len(os.sched_getaffinity(0)))
    section, fingerprint = _fingerprint(data, fold_count)
    name = _dataset_name(data)

    notes: list[str] = []
    extra: dict[str, str] = {}
    epochs: int | None = None
    iterations = NNUNET_ITERATIONS_PER_EPOCH
    configuration = "3d_fullres"
    if device == "cuda":
        from medseg.planning.rules import plan_3d_fullres

        plan = plan_3d_fullres(fingerprint, gpu_memory_gb=gpu_memory_gb)
        header_device = f"cuda, {gpu_memory_gb:g} GB GPU memory target (nnU-Net 3d_fullres)"
    else:
        from medseg.planning.budget import CPU_MAX_COARSENING, MIN_STEPS, fit_cpu_budget

        choice = fit_cpu_budget(
            fingerprint,
            time_budget_min=time_budget_min,
            num_threads=threads,
            gpu_memory_gb=gpu_memory_gb,
            min_steps=MIN_STEPS if min_steps is None else min_steps,
        )
        plan = choice.plan
        if choice.configuration == "3d_lowres":
            configuration = f"3d_lowres spacing, capped at {CPU_MAX_COARSENING:g}x 3d_fullres"
        epochs = choice.epochs
        iterations = choice.iterations_per_epoch
        notes.extend(choice.gave_up)
        extra["train.epochs"] = (
            f"{choice.epochs} epochs x {choice.iterations_per_epoch} steps of "
            f"{choice.step_seconds:.2f} s (measured here) fill {time_budget_min:g} min"
        )
        extra["model.channels"] = (
            f"nnU-Net's rule at base width {choice.base_features} (CPU budget; GPU plan: 32)"
        )
        extra["train.patch_size"] = (
            f"nnU-Net's rule for a {choice.memory_gb:g} GB target (CPU budget; GPU plan: "
            f"{gpu_memory_gb:g} GB)"
        )
        header_device = f"cpu, {threads} threads, {time_budget_min:g} min training budget"
    n_folds = max(2, min(fold_count, len(fingerprint.cases)))
    if n_folds != fold_count:
        notes.append(
            f"{n_folds} folds instead of {fold_count}: the dataset has "
            f"{len(fingerprint.cases)} cases"
        )
    section["num_folds"] = n_folds
    header = (
        f"{PLAN_HEADER} {medseg.__version__}: experiment planned from the dataset {name}",
        (
            f"({len(fingerprint.cases)} cases, {fingerprint.modality}, "
            f"{len(fingerprint.labels)} structure(s)) for {header_device}."
        ),
        (
            f"Rules: nnU-Net v2 ExperimentPlanner ({configuration}); fingerprint in "
            f"{FINGERPRINT_FILE}."
        ),
        *notes,
        "Train it:  medseg train THIS.yaml --folds all",
        "",
    )
    planned = experiment_from_plan(
        plan,
        fingerprint,
        data=section,
        device=device,
        epochs=epochs,
        iterations_per_epoch=iterations,
        num_threads=threads,
        experiment_name=f"medseg-plan-{name}",
        extra_reasons=extra,
        header=header,
        plan_section={
            "generated_by": f"{PLAN_HEADER} {medseg.__version__}",
            "fingerprint": FINGERPRINT_FILE,
            "device": device,
            "gpu_memory_gb": float(gpu_memory_gb),
            "time_budget_min": float(time_budget_min) if device == "cpu" else None,
        },
        time_limit_min=float(time_budget_min) if device == "cpu" else None,
    )
    with atomic_path(fingerprint_path, overwrite=overwrite) as tmp:
        tmp.write_text(fingerprint.to_json(), encoding="utf-8")
    with atomic_path(out, overwrite=overwrite) as tmp:
        tmp.write_text(render_yaml(planned), encoding="utf-8")
    return PlanResult(out, fingerprint_path, planned, fingerprint, tuple(notes))


def _default_device() -> Literal["cpu", "cuda"]:
    from medseg.training.train import cuda_available

    return "cuda" if cuda_available() else "cpu"


def _dataset_name(data: Path) -> str:
    """A name for the MLflow experiment: the dataset's folder (nnU-Net's ``DatasetXXX_name``)
    or the config's file stem; never anything read from the images."""
    stem = data.parent.name if data.suffix == ".json" else data.stem
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in stem) or "dataset"


def _fingerprint(data: Path, fold_count: int) -> tuple[dict[str, Any], Fingerprint]:
    """The plan's ``data`` section and the dataset's fingerprint."""
    from medseg.planning.datasets import fingerprint_dataset

    if data.suffix == ".json":
        return {"datalist": str(data.resolve())}, fingerprint_dataset(data)
    from medseg.config import load_config

    config = load_config(data)
    raw = config.data.model_dump()
    section = {
        key: value
        for key, value in raw.items()
        if value is not None and key in ("datalist", "dicom_root", "labels", "cache_dir")
    }
    if not section:
        raise ConfigError(f"{data}: data.datalist or data.dicom_root is needed to plan from")
    return section, fingerprint_dataset(config)


def _is_plan(path: Path) -> bool:
    try:
        with path.open(encoding="utf-8") as f:
            return f.readline().startswith(f"# {PLAN_HEADER} ")
    except (OSError, UnicodeDecodeError):
        return False


def _is_fingerprint(path: Path) -> bool:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(raw, dict) and {"modality", "cases", "foreground"} <= raw.keys()
