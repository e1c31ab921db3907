"""The demo: phantoms in, a trained model, an RT-STRUCT of a held-out phantom, Dice against truth.

``medseg demo`` runs :func:`run_demo` on the built-in ``demo.yaml``: every stage of the
pipeline runs for real (MLflow in a local store under the output folder), on data this
module makes itself, so a fresh machine needs no download and no server.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.config import ExperimentConfig
from medseg.errors import InputError
from medseg.io import nifti
from medseg.io.files import atomic_path, claim_output_dir
from medseg.metrics import dice_score
from medseg.pipeline import CaseResult, load_model, predict_case, train_from_config
from medseg.synthetic import phantom

__all__ = ["DemoResult", "run_demo"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DemoResult:
    """Outcome of :func:`run_demo`, for the CLI to print."""

    out_dir: Path
    run_id: str | None
    model_uri: str | None
    checkpoint_path: Path
    case: CaseResult
    true_volume_ml: float
    predicted_volume_ml: float
    dice: float
    tracking_uri: str
    summary_path: Path


def run_demo(config: ExperimentConfig, out_dir: Path, *, n_cases: int = 8) -> DemoResult:
    """Generate phantoms, train, predict a held-out phantom, export, and compare with truth.

    Everything goes under ``out_dir``: ``phantoms/`` (training data), ``training/``
    (checkpoints), ``test_case/`` (the held-out CT and its truth), ``prediction/``
    (RT-STRUCT, label map, volumes) and ``demo_summary.json``. When the config names no
    tracking store (and ``MLFLOW_TRACKING_URI`` is unset) the MLflow store is
    ``out_dir/mlflow.db``.
    """
    from medseg import tracking

    out_dir = claim_output_dir(Path(out_dir).resolve())
    tracking_uri = tracking.resolve_tracking_uri(config.tracking.tracking_uri, out_dir)
    dataset = out_dir / "phantoms"
    if not dataset.exists():
        phantom.make_dataset(dataset, n_cases, config.seed)
    run_config = config.model_copy(
        update={
            "data": config.data.model_copy(update={"datalist": dataset / "dataset.json"}),
            "tracking": config.tracking.model_copy(update={"tracking_uri": tracking_uri}),
        }
    )
    log.info("training on %d phantom cases", n_cases)
    result = train_from_config(run_config, out_dir / "training")

    test_case = phantom.make_case(config.seed + 10_000)
    test_dir = out_dir / "test_case"
    if not test_dir.exists():
        phantom.write_case(test_case, test_dir, patient_id="PHANTOM-TEST")
    model = load_model(result.model_uri or result.checkpoint_path, tracking_uri=tracking_uri)
    case = predict_case(model, test_dir / "ct", out_dir / "prediction", overwrite=True)
    truth = nifti.load(test_dir / "labels.nii.gz", kind=case.labels.kind)
    if truth.geometry.shape != case.labels.geometry.shape:
        raise InputError(f"{test_dir}: truth and prediction grids differ")
    name = model.label_names[phantom.TUMOUR_LABEL]
    dice = dice_score(case.labels, truth, phantom.TUMOUR_LABEL)
    true_ml = float(np.count_nonzero(truth.array == phantom.TUMOUR_LABEL)) * truth.voxel_volume_ml
    summary = {
        "run_id": result.run_id,
        "model_uri": result.model_uri,
        "checkpoint": str(result.checkpoint_path),
        "tracking_uri": tracking_uri,
        "dice": dice,
        "true_volume_ml": true_ml,
        "predicted_volume_ml": case.volumes_ml[name],
        "outputs": {
            "rtstruct": str(case.rtstruct_path),
            "labels": str(case.labels_path),
            "volumes": str(case.volumes_path),
        },
    }
    summary_path = out_dir / "demo_summary.json"
    with atomic_path(summary_path) as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return DemoResult(
        out_dir=out_dir,
        run_id=result.run_id,
        model_uri=result.model_uri,
        checkpoint_path=result.checkpoint_path,
        case=case,
        true_volume_ml=true_ml,
        predicted_volume_ml=case.volumes_ml[name],
        dice=dice,
        tracking_uri=tracking_uri,
        summary_path=summary_path,
    )
