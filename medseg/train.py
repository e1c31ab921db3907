"""The training loop: patches with foreground balance, DiceCE loss, sliding-window validation.

Training works on volumes already loaded by the caller (this module reads no files). Images
are in Hounsfield units: the config's intensity window is applied here, exactly as
:func:`medseg.infer.predict` applies the window stored with the model.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from monai.losses import DiceCELoss
from numpy.typing import NDArray

import medseg
from medseg.config import ExperimentConfig
from medseg.errors import ConfigError, InputError
from medseg.infer import predict
from medseg.metrics import dice_score
from medseg.model import LoadedModel, build_network, save_checkpoint
from medseg.preprocess import scale_intensity
from medseg.volume import Volume, VolumeKind, require_same_geometry

__all__ = ["EpochRecord", "RunTracker", "TrainResult", "train"]

_log = logging.getLogger(__name__)

#: File names of the checkpoints written into ``out_dir``.
BEST_CHECKPOINT = "best.pt"
LAST_CHECKPOINT = "last.pt"


class RunTracker(Protocol):
    """What :func:`train` needs from an experiment tracker (``medseg.tracking.Tracker``)."""

    @property
    def run_id(self) -> str:
        """Identifier of the active run."""
        ...

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Record metric values at ``step`` (the epoch)."""
        ...

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Store a file with the run."""
        ...

    def log_model(self, checkpoint_path: Path) -> str:
        """Store the model made from a checkpoint; return its ``runs:/`` URI."""
        ...


@dataclass(frozen=True, slots=True)
class EpochRecord:
    """Metrics of one epoch.

    Attributes:
        epoch: 1-based epoch number (the MLflow step).
        train_loss: mean DiceCE loss over the epoch's batches.
        val_dice: mean Dice over foreground labels and validation cases, or ``None`` when
            the epoch was not validated.
        seconds: wall time of the epoch including validation.
    """

    epoch: int
    train_loss: float
    val_dice: float | None
    seconds: float


@dataclass(frozen=True, slots=True)
class TrainResult:
    """Outcome of :func:`train`.

    Attributes:
        checkpoint_path: the best checkpoint (highest validation Dice; the last one when there
            are no validation cases).
        last_checkpoint_path: the checkpoint after the final epoch.
        run_id: the tracker's run id (``None`` without a tracker).
        model_uri: ``runs:/<run_id>/model`` when a tracker logged the model, else ``None``.
        best_epoch: epoch of ``checkpoint_path``.
        best_val_dice: validation Dice of ``checkpoint_path`` (``None`` without validation).
        final_train_loss: training loss of the last epoch.
        final_val_dice: validation Dice after the last epoch (``None`` without validation).
        history: one record per epoch.
    """

    checkpoint_path: Path
    last_checkpoint_path: Path
    run_id: str | None
    model_uri: str | None
    best_epoch: int
    best_val_dice: float | None
    final_train_loss: float
    final_val_dice: float | None
    history: tuple[EpochRecord, ...]


@dataclass(frozen=True, slots=True)
class _Case:
    image: NDArray[np.float32]  # scaled to [0, 1], padded to at least the patch size
    labels: NDArray[np.int64]
    foreground: NDArray[np.intp]  # flat indices of label > 0


def train(
    config: ExperimentConfig,
    train_cases: Sequence[tuple[Volume, Volume]],
    val_cases: Sequence[tuple[Volume, Volume]],
    out_dir: Path,
    tracker: RunTracker | None = None,
) -> TrainResult:
    """Train a U-Net on (image, labels) pairs and write ``best.pt`` and ``last.pt``.

    Each epoch draws ``samples_per_case`` patches of ``patch_size`` voxels from every training
    case, centred on a foreground voxel with probability ``foreground_fraction`` and anywhere
    otherwise, and takes Adam steps on MONAI's ``DiceCELoss`` in batches of ``batch_size``.
    Every ``val_every`` epochs (and after the last) the network segments each full validation
    image with :func:`medseg.infer.predict` and the mean foreground Dice is recorded.
    ``config.seed`` seeds torch and the patch sampler; ``config.train.num_threads`` sets
    torch's (process-wide) intra-op thread count.

    Args:
        config: the experiment config.
        train_cases: ``(image, labels)`` pairs; images in HU, labels with values
            ``0..len(config.model.labels)``, both in array order ``(slice, row, column)`` on
            the same grid.
        val_cases: pairs as ``train_cases``; may be empty (then the last epoch is "best").
        out_dir: folder for the checkpoints (created if missing).
        tracker: receives per-epoch metrics (step = epoch), the checkpoints and the model;
            ``None`` to train without tracking.

    Returns:
        Checkpoint paths, run id and metrics.

    Raises:
        InputError: on no training cases, image/labels pairs on different grids, or label
            values the config does not name.
        ConfigError: if ``device`` is ``"cuda"`` and no CUDA device is available.
    """
    train_cfg = config.train
    if not train_cases:
        raise InputError("no training cases given")
    if train_cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is 'cuda' but no CUDA device is available")
    device = torch.device(train_cfg.device)
    torch.manual_seed(config.seed)
    torch.set_num_threads(train_cfg.num_threads)
    rng = np.random.default_rng(config.seed)

    cases = [_prepare_case(image, labels, config) for image, labels in train_cases]
    for image, labels in val_cases:
        _check_pair(image, labels, config)

    network = build_network(config.model).to(device)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
    optimizer = torch.optim.Adam(network.parameters(), lr=train_cfg.learning_rate)
    loaded = LoadedModel(
        network=network,
        config=config,
        label_names=dict(config.model.labels),
        medseg_version=medseg.__version__,
    )
    out_dir = Path(out_dir)
    best_path, last_path = out_dir / BEST_CHECKPOINT, out_dir / LAST_CHECKPOINT

    history: list[EpochRecord] = []
    best_dice: float | None = None
    best_epoch = 0
    for epoch in range(1, train_cfg.epochs + 1):
        started = time.perf_counter()
        train_loss = _train_one_epoch(network, loss_fn, optimizer, cases, config, rng, device)
        metrics = {"train_loss": train_loss}
        val_dice: float | None = None
        validate = bool(val_cases) and (
            epoch % train_cfg.val_every == 0 or epoch == train_cfg.epochs
        )
        if validate:
            per_label = _validate(loaded, val_cases)
            val_dice = float(np.mean(list(per_label.values())))
            metrics["val_dice"] = val_dice
            metrics.update({f"val_dice_{_metric_name(k)}": v for k, v in per_label.items()})
            if best_dice is None or val_dice > best_dice:
                best_dice, best_epoch = val_dice, epoch
                save_checkpoint(best_path, network, config, _extra(epoch, train_loss, val_dice))
        seconds = time.perf_counter() - started
        metrics["epoch_seconds"] = seconds
        history.append(EpochRecord(epoch, train_loss, val_dice, seconds))
        _log.info(
            "epoch %d/%d: train_loss %.4f, val_dice %s, %.1f s",
            epoch,
            train_cfg.epochs,
            train_loss,
            "-" if val_dice is None else f"{val_dice:.4f}",
            seconds,
        )
        if tracker is not None:
            tracker.log_metrics(metrics, step=epoch)

    final = history[-1]
    save_checkpoint(
        last_path, network, config, _extra(final.epoch, final.train_loss, final.val_dice)
    )
    if best_dice is None:  # no validation cases: the last epoch is the best we know
        best_epoch = final.epoch
        save_checkpoint(best_path, network, config, _extra(final.epoch, final.train_loss, None))

    run_id = model_uri = None
    if tracker is not None:
        tracker.log_artifact(last_path, "checkpoints")
        model_uri = tracker.log_model(best_path)
        run_id = tracker.run_id
    return TrainResult(
        checkpoint_path=best_path,
        last_checkpoint_path=last_path,
        run_id=run_id,
        model_uri=model_uri,
        best_epoch=best_epoch,
        best_val_dice=best_dice,
        final_train_loss=final.train_loss,
        final_val_dice=final.val_dice,
        history=tuple(history),
    )


# ---------------------------------------------------------------------------------------------
# data


def _check_pair(image: Volume, labels: Volume, config: ExperimentConfig) -> None:
    where = image.source.describe()
    if image.kind is not VolumeKind.IMAGE or labels.kind is not VolumeKind.LABELS:
        raise InputError(
            f"{where}: expected an (image, labels) pair, got ({image.kind.value}, "
            f"{labels.kind.value})"
        )
    require_same_geometry(image, labels)
    n_labels = len(config.model.labels)
    found = np.unique(labels.array)
    unknown = found[(found < 0) | (found > n_labels)]
    if unknown.size:
        raise InputError(
            f"{labels.source.describe()}: label values {unknown.tolist()} are not in "
            f"model.labels (expected 0..{n_labels})"
        )


def _prepare_case(image: Volume, labels: Volume, config: ExperimentConfig) -> _Case:
    _check_pair(image, labels, config)
    scaled = scale_intensity(image, config.preprocess).array
    label_array = np.asarray(labels.array, dtype=np.int64)
    # Pad small volumes at the high end so that every patch fits; 0 is the window's lower end
    # (air) and background.
    pad = [(0, max(0, p - s)) for p, s in zip(config.train.patch_size, scaled.shape, strict=True)]
    if any(after for _, after in pad):
        scaled = np.pad(scaled, pad, constant_values=0.0)
        label_array = np.pad(label_array, pad, constant_values=0)
    return _Case(
        image=np.ascontiguousarray(scaled, dtype=np.float32),
        labels=np.ascontiguousarray(label_array),
        foreground=np.flatnonzero(label_array > 0),
    )


def _sample_patches(
    cases: Sequence[_Case], config: ExperimentConfig, rng: np.random.Generator
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """``samples_per_case`` patches per case, as ``(n, 1, slice, row, column)`` arrays."""
    patch = np.asarray(config.train.patch_size)
    images, labels = [], []
    for case in cases:
        shape = np.asarray(case.image.shape)
        for _ in range(config.train.samples_per_case):
            if case.foreground.size and rng.random() < config.train.foreground_fraction:
                flat = case.foreground[rng.integers(case.foreground.size)]
                centre = np.asarray(np.unravel_index(flat, case.image.shape))
            else:
                centre = rng.integers(0, shape)
            start = np.clip(centre - patch // 2, 0, shape - patch)
            window = tuple(slice(int(a), int(a + p)) for a, p in zip(start, patch, strict=True))
            images.append(case.image[window])
            labels.append(case.labels[window])
    return np.stack(images)[:, None], np.stack(labels)[:, None]


# ---------------------------------------------------------------------------------------------
# steps


def _train_one_epoch(
    network: torch.nn.Module,
    loss_fn: DiceCELoss,
    optimizer: torch.optim.Optimizer,
    cases: Sequence[_Case],
    config: ExperimentConfig,
    rng: np.random.Generator,
    device: torch.device,
) -> float:
    images, labels = _sample_patches(cases, config, rng)
    order = rng.permutation(len(images))
    batch_size = config.train.batch_size
    network.train()
    losses = []
    for first in range(0, len(order), batch_size):
        index = order[first : first + batch_size]
        x = torch.from_numpy(images[index]).to(device)
        y = torch.from_numpy(labels[index]).to(device)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(network(x), y)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return float(np.mean(losses))


def _validate(model: LoadedModel, val_cases: Sequence[tuple[Volume, Volume]]) -> dict[str, float]:
    """Mean Dice per foreground label name over the validation cases."""
    scores: dict[str, list[float]] = {name: [] for name in model.label_names.values()}
    for image, labels in val_cases:
        predicted = predict(model, image)
        for value, name in model.label_names.items():
            scores[name].append(dice_score(predicted, labels, value))
    return {name: float(np.mean(values)) for name, values in scores.items()}


def _extra(epoch: int, train_loss: float, val_dice: float | None) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "train_loss": float(train_loss),
        "val_dice": None if val_dice is None or math.isnan(val_dice) else float(val_dice),
    }


def _metric_name(label_name: str) -> str:
    # MLflow metric keys allow letters, digits, "_", "-", ".", " " and "/".
    return re.sub(r"[^\w\-. /]", "_", label_name)
