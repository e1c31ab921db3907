"""Training on a tiny synthetic case: loss falls, metrics reach MLflow, checkpoints load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medseg.config import ExperimentConfig, load_config
from medseg.errors import GeometryError, InputError
from medseg.geometry import Geometry
from medseg.model import load_checkpoint
from medseg.tracking import Tracker, resolve_model
from medseg.train import train
from medseg.volume import SourceInfo, Volume, VolumeKind

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


def _sphere_case(seed: int, shape: tuple[int, int, int] = (24, 40, 40)) -> tuple[Volume, Volume]:
    """A bright sphere (+150 HU) in soft tissue (30 HU) with 20 HU noise, and its mask."""
    rng = np.random.default_rng(seed)
    grid = Geometry(shape, (2.5, 1.5, 1.5), (-30.0, -30.0, -30.0))
    centre = rng.uniform(0.35, 0.65, 3) * np.asarray(shape)
    radius_mm = rng.uniform(7.0, 10.0)
    k, j, i = np.indices(shape, dtype=float)
    distance_mm = np.sqrt(
        ((k - centre[0]) * 2.5) ** 2 + ((j - centre[1]) * 1.5) ** 2 + ((i - centre[2]) * 1.5) ** 2
    )
    mask = distance_mm <= radius_mm
    hu = 30.0 + 150.0 * mask + rng.normal(0.0, 20.0, shape)
    source = SourceInfo(series_instance_uid=f"1.2.826.0.1.{seed}")
    return (
        Volume(hu.astype(np.float32), grid, VolumeKind.IMAGE, source),
        Volume(mask.astype(np.uint8), grid, VolumeKind.LABELS, source),
    )


def _tiny_config(tmp_path: Path) -> ExperimentConfig:
    config = load_config(TINY)
    tracking = config.tracking.model_copy(
        update={"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "test-train"}
    )
    return config.model_copy(update={"tracking": tracking})


def test_tiny_training_learns_logs_and_writes_checkpoints(tmp_path: Path) -> None:
    import mlflow

    config = _tiny_config(tmp_path)
    with Tracker(config, run_name="tiny") as tracker:
        result = train(config, [_sphere_case(1)], [_sphere_case(2)], tmp_path / "out", tracker)

    epochs = config.train.epochs
    assert len(result.history) == epochs
    assert result.history[-1].train_loss < 0.8 * result.history[0].train_loss
    assert result.final_train_loss == result.history[-1].train_loss
    assert result.best_val_dice is not None and result.best_val_dice > 0.0
    validated = [r.epoch for r in result.history if r.val_dice is not None]
    assert validated == list(range(config.train.val_every, epochs + 1, config.train.val_every))

    best = load_checkpoint(result.checkpoint_path)
    assert best.config == config
    assert best.extra["epoch"] == result.best_epoch
    assert best.extra["val_dice"] == pytest.approx(result.best_val_dice)
    assert load_checkpoint(result.last_checkpoint_path).extra["epoch"] == epochs

    client = mlflow.MlflowClient(config.tracking.tracking_uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.epochs"] == str(epochs)
    assert run.data.params["model.labels.1"] == "tumour"
    losses = client.get_metric_history(result.run_id, "train_loss")
    assert [m.step for m in losses] == list(range(1, epochs + 1))
    assert [m.step for m in client.get_metric_history(result.run_id, "val_dice")] == validated
    assert client.get_metric_history(result.run_id, "val_dice_tumour")
    artifacts = {a.path for a in client.list_artifacts(result.run_id, "checkpoints")}
    assert artifacts == {"checkpoints/best.pt", "checkpoints/last.pt"}
    assert result.model_uri == f"runs:/{result.run_id}/model"
    from_mlflow = resolve_model(result.model_uri, tracking_uri=config.tracking.tracking_uri)
    assert load_checkpoint(from_mlflow).extra == best.extra


def test_training_without_validation_or_tracker(tmp_path: Path) -> None:
    config = load_config(TINY)
    train_cfg = config.train.model_copy(update={"epochs": 2})
    config = config.model_copy(update={"train": train_cfg})
    result = train(config, [_sphere_case(3, shape=(12, 20, 20))], [], tmp_path, None)
    assert result.run_id is None and result.model_uri is None
    assert result.best_val_dice is None and result.best_epoch == 2
    assert load_checkpoint(result.checkpoint_path).extra["epoch"] == 2


def test_image_and_labels_on_different_grids_are_refused(tmp_path: Path) -> None:
    image, labels = _sphere_case(4)
    shifted = Geometry(labels.geometry.shape, labels.geometry.spacing_mm, (0.0, 0.0, 0.0))
    moved = Volume(labels.array, shifted, VolumeKind.LABELS, labels.source)
    with pytest.raises(GeometryError):
        train(load_config(TINY), [(image, moved)], [], tmp_path, None)


def test_unknown_label_values_are_refused(tmp_path: Path) -> None:
    image, labels = _sphere_case(5)
    relabelled = labels.with_array(labels.array * 3)
    with pytest.raises(InputError, match=r"label values \[3\]"):
        train(load_config(TINY), [(image, relabelled)], [], tmp_path, None)
