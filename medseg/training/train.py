"""The training loop: DiceCE loss on sampled patches, sliding-window validation, checkpoints.

Training works on volumes already loaded by the caller (this module reads no files). Images
are in Hounsfield units: :mod:`medseg.training.patches` applies the config's intensity window, exactly
as :func:`medseg.infer.predict` applies the window stored with the model, and samples the
patches with foreground balance.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from monai.losses import DiceCELoss, DiceFocalLoss, DiceLoss

import medseg
from medseg import precision as precisions
from medseg.config import ExperimentConfig, ModelConfig, TrainConfig, capped_threads
from medseg.errors import ConfigError, InputError
from medseg.infer import predict, verify_precision
from medseg.metrics import compute_metrics, dice_score
from medseg.model import (
    LoadedModel,
    build_network,
    load_checkpoint,
    load_training_state,
    save_checkpoint,
    with_extra,
)
from medseg.training import distributed
from medseg.training.patches import (
    PreparedCase,
    augmentation,
    augmented,
    check_pair,
    prepare_case,
    sample_patches,
)
from medseg.training.progress import Progress, plot_curves, progress_bar
from medseg.volume import Volume

__all__ = [
    "EpochRecord",
    "RunTracker",
    "TrainResult",
    "cuda_available",
    "lr_factor",
    "time_training_step",
    "train",
]

_log = logging.getLogger(__name__)

#: File names of the checkpoints written into ``out_dir``.
BEST_CHECKPOINT = "best.pt"
LAST_CHECKPOINT = "last.pt"
#: Training curves (loss, learning rate, validation Dice per label) written into ``out_dir``.
CURVES_FILE = "curves.png"
#: The precision verification of ``best.pt`` (:mod:`medseg.precision`), also kept inside it.
PRECISION_FILE = "precision_verification.json"
#: Surface-Dice tolerance passed to ``compute_metrics`` at validation (only Dice and HD95 are
#: used from its result, and neither depends on it).
_SURFACE_TOLERANCE_MM = 1.0


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

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Tag the run (distributed training tags ``world_size``)."""
        ...

    def log_model(self, checkpoint_path: Path) -> str:
        """Store the model made from a checkpoint; return its ``runs:/`` URI."""
        ...


@dataclass(frozen=True, slots=True)
class EpochRecord:
    """Metrics of one epoch.

    Attributes:
        epoch: 1-based epoch number (the MLflow step).
        train_loss: mean training loss over the epoch's batches.
        val_dice: mean Dice over foreground labels and validation cases, or ``None`` when
            the epoch was not validated.
        seconds: wall time of the epoch including validation.
        learning_rate: the optimiser's learning rate during the epoch.
        val_dice_per_label: label name -> mean Dice over validation cases (empty when the
            epoch was not validated).
        val_hd95_mm_per_label: label name -> mean HD95 in mm over the validation cases where
            it is finite (empty when not validated or ``train.hd95`` is off).
        step_losses: the loss of every optimiser step, in order.
    """

    epoch: int
    train_loss: float
    val_dice: float | None
    seconds: float
    learning_rate: float = 0.0
    val_dice_per_label: Mapping[str, float] = field(default_factory=dict)
    val_hd95_mm_per_label: Mapping[str, float] = field(default_factory=dict)
    step_losses: tuple[float, ...] = ()


@dataclass(frozen=True, slots=True)
class TrainResult:
    """Outcome of :func:`train`.

    Attributes:
        checkpoint_path: the best checkpoint (highest validation Dice; the last one when there
            are no validation cases).
        last_checkpoint_path: the checkpoint after the final epoch (with the training state
            that :func:`train`'s ``resume_from`` needs).
        run_id: the tracker's run id (``None`` without a tracker).
        model_uri: ``runs:/<run_id>/model`` when a tracker logged the model, else ``None``.
        best_epoch: epoch of ``checkpoint_path``.
        best_val_dice: validation Dice of ``checkpoint_path`` (``None`` without validation).
        final_train_loss: training loss of the last epoch.
        final_val_dice: validation Dice after the last epoch (``None`` without validation).
        history: one record per epoch (from epoch 1, also after resuming).
        stopped_early: whether early stopping (or ``train.time_limit_min``) ended training
            before ``train.epochs``.
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
    stopped_early: bool = False


@dataclass(slots=True)
class _Loop:
    """Everything one optimiser step needs.

    ``network`` is what the step calls: ``model`` itself, or ``model`` wrapped in
    ``DistributedDataParallel`` when a process group is initialised.
    """

    network: torch.nn.Module
    model: torch.nn.Module
    loss_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    device: torch.device
    autocast_dtype: torch.dtype | None
    deep_supervision: bool
    grad_clip_norm: float | None


def train(
    config: ExperimentConfig,
    train_cases: Sequence[tuple[Volume, Volume]],
    val_cases: Sequence[tuple[Volume, Volume]],
    out_dir: Path,
    tracker: RunTracker | None = None,
    *,
    resume_from: Path | None = None,
    progress: bool | None = None,
) -> TrainResult:
    """Train a U-Net on (image, labels) pairs and write ``best.pt`` and ``last.pt``.

    Each epoch draws ``samples_per_case`` patches of ``patch_size`` voxels from every training
    case, centred on a foreground voxel with probability ``foreground_fraction`` and anywhere
    otherwise, and takes optimiser steps on the configured MONAI loss in batches of
    ``batch_size``. Every ``val_every`` epochs (and after the last) the network segments each
    full validation image with :func:`medseg.infer.predict` (sliding window) and per-label
    Dice and HD95 (mm) are recorded; the best mean Dice gives ``best.pt``. ``last.pt`` is
    rewritten after every epoch with the optimiser, scheduler and RNG states, so an
    interrupted run continues with ``resume_from`` exactly as it would have run (in
    deterministic mode). ``config.seed`` seeds torch and the patch sampler;
    ``config.train.num_threads`` sets torch's (process-wide) intra-op thread count.

    Args:
        config: the experiment config.
        train_cases: ``(image, labels)`` pairs; images in HU, labels with values
            ``0..len(config.model.labels)``, both in array order ``(slice, row, column)`` on
            the same grid.
        val_cases: pairs as ``train_cases``; may be empty (then the last epoch is "best").
        out_dir: folder for the checkpoints (created if missing).
        tracker: receives per-epoch metrics (step = epoch), the checkpoints and the model;
            ``None`` to train without tracking.
        resume_from: a ``last.pt`` written by this function: training continues after its
            epoch with its weights, optimiser, scheduler and RNG states.
        progress: show progress bars (``None``: only when stderr is a terminal; otherwise
            each epoch is a log line).

    Returns:
        Checkpoint paths, run id and metrics.

    Raises:
        InputError: on no training cases, image/labels pairs on different grids, or label
            values the config does not name.
        ConfigError: if ``device`` is ``"cuda"`` and no CUDA device is available, if a
            reduced precision is asked for on the CPU, or if ``resume_from`` was trained with
            a different model config.
        ModelError: if ``resume_from`` is not a checkpoint with a training state.
    """
    train_cfg = config.train
    if not train_cases:
        raise InputError("no training cases given")
    if train_cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is 'cuda' but no CUDA device is available")
    device = torch.device(train_cfg.device)
    autocast_dtype = _autocast_dtype(train_cfg.precision, device)
    with _determinism(train_cfg.deterministic):
        torch.manual_seed(config.seed)
        torch.set_num_threads(capped_threads(train_cfg.num_threads))
        rank, world = distributed.rank_and_world()
        if world > 1 and resume_from is not None:
            raise ConfigError("resume_from is not supported in distributed training")
        if world > 1 and rank == 0 and tracker is not None:
            tracker.set_tags({"world_size": str(world)})
        # one sampler stream per rank: the ranks see different patches
        rng = np.random.default_rng(config.seed if world == 1 else [config.seed, rank])

        cases = [prepare_case(image, labels, config) for image, labels in train_cases]
        for image, labels in val_cases:
            check_pair(image, labels, config)

        network = build_network(config.model).to(device)
        optimizer = _optimizer(network, train_cfg)
        loop = _Loop(
            network=distributed.wrap(network, device) if world > 1 else network,
            model=network,
            loss_fn=_loss(train_cfg),
            optimizer=optimizer,
            scaler=torch.amp.GradScaler(device.type, enabled=autocast_dtype is torch.float16),
            device=device,
            autocast_dtype=autocast_dtype,
            deep_supervision=config.model.deep_supervision,
            grad_clip_norm=train_cfg.grad_clip_norm,
        )
        # the share of train.time_limit_min spent, set by _run after every epoch (a list, not
        # an object: LambdaLR would save an object's attributes in the checkpoint)
        time_spent = [0.0]
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda index: lr_factor(train_cfg, index, time_spent[0])
        )
        result = _run(
            config,
            loop,
            scheduler,
            rng,
            cases,
            val_cases if rank == 0 else [],
            Path(out_dir),
            tracker if rank == 0 else None,
            resume_from,
            progress,
            main=rank == 0,
            time_spent=time_spent,
        )
        if world > 1:
            # every rank returns together: rank 0 validates, verifies and logs after the last
            # step, and a rank that tears its gloo connections down meanwhile (a caller's
            # destroy_process_group) was seen to abort with SIGABRT ("terminate called
            # without an active exception") in a CI run
            torch.distributed.barrier()
        return result


def _run(
    config: ExperimentConfig,
    loop: _Loop,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    rng: np.random.Generator,
    cases: Sequence[PreparedCase],
    val_cases: Sequence[tuple[Volume, Volume]],
    out_dir: Path,
    tracker: RunTracker | None,
    resume_from: Path | None,
    progress: bool | None,
    *,
    main: bool = True,
    time_spent: list[float] | None = None,
) -> TrainResult:
    """The epochs; only the ``main`` process validates and writes checkpoints. After every
    epoch ``time_spent[0]`` is set to the share of ``train.time_limit_min`` spent (rank 0's
    clock, so every rank schedules the same learning rate) before the scheduler steps."""
    train_cfg = config.train
    network = loop.model
    loaded = LoadedModel(
        network=network,
        config=config,
        label_names=config.model.label_names,
        medseg_version=medseg.__version__,
    )
    best_path, last_path = out_dir / BEST_CHECKPOINT, out_dir / LAST_CHECKPOINT

    history: list[EpochRecord] = []
    best_dice: float | None = None
    best_epoch = 0
    stale = 0  # validations since the best one
    first_epoch = 1
    if resume_from is not None:
        state = _restore(Path(resume_from), config, loop, scheduler, rng)
        history = [_record_from_state(r) for r in state["history"]]
        best_dice, best_epoch, stale = state["best_dice"], state["best_epoch"], state["stale"]
        first_epoch = int(state["epoch"]) + 1
        _log.info("resuming %s after epoch %d", resume_from, first_epoch - 1)

    stopped_early = False
    run_started = time.perf_counter()
    limit_s = None if train_cfg.time_limit_min is None else train_cfg.time_limit_min * 60.0
    n_steps = math.ceil(len(cases) * train_cfg.samples_per_case / train_cfg.batch_size)
    with progress_bar(progress, train_cfg.epochs, n_steps, first_epoch - 1) as bar:
        for epoch in range(first_epoch, train_cfg.epochs + 1):
            started = time.perf_counter()
            lr = float(loop.optimizer.param_groups[0]["lr"])
            deadline = None if limit_s is None else run_started + limit_s
            step_losses, cut = _train_one_epoch(loop, cases, config, rng, bar, deadline)
            if time_spent is not None and limit_s is not None:
                time_spent[0] = distributed.rank0_value(
                    (time.perf_counter() - run_started) / limit_s
                )
            scheduler.step()
            train_loss = float(np.mean(step_losses))
            train_seconds = time.perf_counter() - started
            metrics = {
                "train_loss": train_loss,
                "lr": lr,
                "samples_per_s": len(step_losses) * train_cfg.batch_size / train_seconds,
            }
            val_dice: float | None = None
            dice_per_label: dict[str, float] = {}
            hd95_per_label: dict[str, float] = {}
            out_of_time = epoch < train_cfg.epochs and (
                cut
                or distributed.agreed(
                    limit_s is not None and time.perf_counter() - run_started >= limit_s
                )
            )
            validate = bool(val_cases) and (
                epoch % train_cfg.val_every == 0 or epoch == train_cfg.epochs or out_of_time
            )
            if validate:
                dice_per_label, hd95_per_label = _validate(loaded, val_cases, train_cfg.hd95)
                val_dice = float(np.mean(list(dice_per_label.values())))
                metrics["val_dice"] = val_dice
                metrics.update(
                    {f"val_dice_{_metric_name(k)}": v for k, v in dice_per_label.items()}
                )
                if hd95_per_label:
                    metrics["val_hd95_mm"] = float(np.mean(list(hd95_per_label.values())))
                    metrics.update(
                        {f"val_hd95_mm_{_metric_name(k)}": v for k, v in hd95_per_label.items()}
                    )
                if best_dice is None or val_dice > best_dice:
                    best_dice, best_epoch, stale = val_dice, epoch, 0
                    save_checkpoint(best_path, network, config, _extra(epoch, train_loss, val_dice))
                else:
                    stale += 1
            seconds = time.perf_counter() - started
            metrics["epoch_seconds"] = seconds
            history.append(
                EpochRecord(
                    epoch,
                    train_loss,
                    val_dice,
                    seconds,
                    lr,
                    dice_per_label,
                    hd95_per_label,
                    tuple(step_losses),
                )
            )
            patience = train_cfg.early_stopping_patience
            stopped_early = distributed.agreed(patience is not None and stale >= patience)
            if main:
                save_checkpoint(
                    last_path,
                    network,
                    config,
                    _extra(epoch, train_loss, val_dice),
                    training_state=_training_state(
                        epoch, loop, scheduler, rng, history, best_dice, best_epoch, stale
                    ),
                )
            bar.epoch_done(
                f"epoch {epoch}/{train_cfg.epochs}: train_loss {train_loss:.4f}, val_dice "
                + ("-" if val_dice is None else f"{val_dice:.4f}")
                + f", {seconds:.1f} s"
            )
            if tracker is not None:
                tracker.log_metrics(metrics, step=epoch)
            if stopped_early:
                _log.info("early stopping: no better val_dice in %d validations", patience)
                break
            if out_of_time:
                _log.info(
                    "time limit: stopping after epoch %d of %d (%.1f of %g min)",
                    epoch,
                    train_cfg.epochs,
                    (time.perf_counter() - run_started) / 60.0,
                    train_cfg.time_limit_min,
                )
                stopped_early = True
                break

    final = history[-1]
    if best_dice is None and main:  # no validation cases: the last epoch is the best we know
        best_epoch = final.epoch
        save_checkpoint(best_path, network, config, _extra(final.epoch, final.train_loss, None))

    if main:
        _verify_precision(config, best_path, val_cases, out_dir, tracker, final.epoch)
    run_id = model_uri = None
    if tracker is not None:
        tracker.log_artifact(plot_curves(history, out_dir / CURVES_FILE), "curves")
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
        stopped_early=stopped_early,
    )


def _verify_precision(
    config: ExperimentConfig,
    best_path: Path,
    val_cases: Sequence[tuple[Volume, Volume]],
    out_dir: Path,
    tracker: RunTracker | None,
    epoch: int,
) -> None:
    """Verify ``best.pt``'s faster precisions on the validation images
    (:func:`medseg.infer.verify_precision`, on the training device) and keep the record in
    it, so the MLflow model logged next holds it; also ``precision_verification.json`` and
    ``precision_<p>_worst_dice`` / ``_worst_volume_change`` metrics in the run. Nothing is
    verified (and inference stays float32) without validation cases or without a faster
    precision native to this machine."""
    device = config.train.device if config.infer.backend == "torch" else "cpu"
    native = precisions.native_precisions(device, config.infer.backend)
    if not native or not val_cases:
        _log.debug(
            "precision: not verified (%s); infer.precision auto runs in float32",
            "no validation cases"
            if native
            else f"no faster precision native to this {device} for {config.infer.backend}",
        )
        return
    model = load_checkpoint(best_path, device=device)
    verification = verify_precision(model, [image for image, _ in val_cases])
    with_extra(best_path, best_path, {precisions.EXTRA_KEY: verification.to_json()})
    record_file = out_dir / PRECISION_FILE
    record_file.write_text(verification.to_json() + "\n", encoding="utf-8")
    for r in verification.records:
        _log.info(
            "precision %s: worst Dice vs float32 %.4f, worst volume change %.2f %% over %d "
            "validation cases: %s",
            r.precision,
            r.worst_dice,
            100 * r.worst_volume_change,
            r.cases,
            "accepted" if r.accepted else "refused",
        )
    if tracker is not None:
        tracker.log_artifact(record_file, "precision")
        metrics = {}
        for r in verification.records:
            metrics[f"precision_{r.precision}_worst_dice"] = r.worst_dice
            metrics[f"precision_{r.precision}_worst_volume_change"] = r.worst_volume_change
        tracker.log_metrics(metrics, step=epoch)


def lr_factor(train_cfg: TrainConfig, epoch_index: int, time_fraction: float = 0.0) -> float:
    """Learning rate of 0-based epoch ``epoch_index`` as a fraction of ``learning_rate``.

    Linear warm-up over ``warmup_epochs`` (from ``1 / (warmup_epochs + 1)``), then
    ``lr_schedule``: constant, poly ``(1 - t) ** 0.9`` or cosine ``(1 + cos(pi t)) / 2``,
    with ``t`` the fraction of post-warm-up epochs done or, with ``lr_schedule_by: time``,
    the larger of that and ``time_fraction`` (the share of ``time_limit_min`` spent).

    Example:
        >>> from medseg.config import TrainConfig
        >>> cfg = TrainConfig(epochs=10, patch_size=(8, 8, 8), lr_schedule="cosine")
        >>> lr_factor(cfg, 0), round(lr_factor(cfg, 5), 3)
        (1.0, 0.5)
    """
    warmup = train_cfg.warmup_epochs
    if epoch_index < warmup:
        return (epoch_index + 1) / (warmup + 1)
    t = min(1.0, (epoch_index - warmup) / max(1, train_cfg.epochs - warmup))
    if train_cfg.lr_schedule_by == "time":
        t = min(1.0, max(t, time_fraction))
    if train_cfg.lr_schedule == "poly":
        return float((1.0 - t) ** 0.9)
    if train_cfg.lr_schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    return 1.0


# ---------------------------------------------------------------------------------------------
# setup


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``train.precision`` on ``device`` (``None``: float32).

    A CPU trains in bfloat16 only where it computes bfloat16 natively (AVX512-BF16 or AMX,
    :func:`medseg.precision.native_precisions`): there a step of the CPU plan's UNet (8-64
    features, patch 24 x 48 x 48, batch 2, 2 threads) took 90 ms instead of 153 ms. Elsewhere
    bfloat16 is emulated and slower than float32, so ``"auto"`` keeps float32 and an explicit
    ``"bfloat16"`` is refused. The weights, the optimiser and the loss stay float32 (mixed
    precision, as on CUDA).
    """
    if precision == "float32":
        return None
    if device.type == "cuda":
        return torch.float16 if precision == "float16" else torch.bfloat16
    cpu_bf16 = "bfloat16" in precisions.native_precisions("cpu")
    if precision == "auto":
        return torch.bfloat16 if cpu_bf16 else None
    if precision == "bfloat16" and cpu_bf16:
        return torch.bfloat16
    raise ConfigError(
        f"train.precision {precision!r} is not native on this CPU"
        + (
            ": float16 needs a CUDA device"
            if precision == "float16"
            else " (it needs AVX512-BF16 or AMX; without them bfloat16 is slower than float32)"
        )
        + "; use 'float32' or 'auto'"
    )


def _autocast(device: torch.device, dtype: torch.dtype | None) -> torch.autocast:
    """Autocast to ``dtype`` (:func:`_autocast_dtype`) on ``device``; ``None``: float32."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


@contextlib.contextmanager
def _determinism(enabled: bool) -> Iterator[None]:
    """Deterministic torch algorithms while training; the previous settings afterwards."""
    if not enabled:
        yield
        return
    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
    )
    # cuBLAS needs a fixed workspace for reproducible results (CUDA >= 10.2).
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0])
        torch.backends.cudnn.benchmark = previous[1]
        torch.backends.cudnn.deterministic = previous[2]


def _loss(train_cfg: TrainConfig) -> torch.nn.Module:
    """MONAI loss on logits (softmax) and integer labels (one-hot), reduced over the batch.

    With ``loss_include_background: false`` and ``dice_ce`` this is nnU-Net's
    ``DC_and_CE_loss`` (``do_bg=False``, CE weight 1, Dice weight 1): the same Dice smoothing
    (1e-5 above and below the fraction), batch Dice as ``loss_batch_dice``, cross-entropy over
    every class. MONAI's Dice term is ``1 - Dice`` where nnU-Net's is ``-Dice``: a constant
    apart, the same gradients. Under DDP each process's batch Dice covers its own patches
    (nnU-Net gathers the sums over processes first).
    """
    options: dict[str, Any] = {
        "to_onehot_y": True,
        "softmax": True,
        "batch": train_cfg.loss_batch_dice,
        "include_background": train_cfg.loss_include_background,
    }
    if train_cfg.loss == "dice":
        return DiceLoss(**options)
    if train_cfg.loss == "dice_focal":
        return DiceFocalLoss(**options)
    return DiceCELoss(**options)


def _optimizer(network: torch.nn.Module, train_cfg: TrainConfig) -> torch.optim.Optimizer:
    params = network.parameters()
    lr, decay = train_cfg.learning_rate, train_cfg.weight_decay
    if train_cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=decay)
    if train_cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=lr,
            momentum=train_cfg.momentum,
            nesterov=train_cfg.momentum > 0,
            weight_decay=decay,
        )
    return torch.optim.Adam(params, lr=lr, weight_decay=decay)


# ---------------------------------------------------------------------------------------------
# resuming


def _training_state(
    epoch: int,
    loop: _Loop,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    rng: np.random.Generator,
    history: Sequence[EpochRecord],
    best_dice: float | None,
    best_epoch: int,
    stale: int,
) -> dict[str, Any]:
    state: dict[str, Any] = {
        "epoch": epoch,
        "optimizer": loop.optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": loop.scaler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": rng.bit_generator.state,
        "best_dice": best_dice,
        "best_epoch": best_epoch,
        "stale": stale,
        "history": [
            {
                "epoch": r.epoch,
                "train_loss": r.train_loss,
                "val_dice": r.val_dice,
                "seconds": r.seconds,
                "learning_rate": r.learning_rate,
                "val_dice_per_label": dict(r.val_dice_per_label),
                "val_hd95_mm_per_label": dict(r.val_hd95_mm_per_label),
                "step_losses": list(r.step_losses),
            }
            for r in history
        ],
    }
    if loop.device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(loop.device)
    return state


def _record_from_state(raw: Mapping[str, Any]) -> EpochRecord:
    return EpochRecord(
        epoch=int(raw["epoch"]),
        train_loss=float(raw["train_loss"]),
        val_dice=raw["val_dice"],
        seconds=float(raw["seconds"]),
        learning_rate=float(raw["learning_rate"]),
        val_dice_per_label=dict(raw["val_dice_per_label"]),
        val_hd95_mm_per_label=dict(raw["val_hd95_mm_per_label"]),
        step_losses=tuple(raw["step_losses"]),
    )


def _restore(
    path: Path,
    config: ExperimentConfig,
    loop: _Loop,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    rng: np.random.Generator,
) -> dict[str, Any]:
    checkpoint = load_checkpoint(path)
    if checkpoint.config.model != config.model:
        raise ConfigError(f"{path}: cannot resume: it was trained with a different model config")
    state = load_training_state(path)
    loop.model.load_state_dict(checkpoint.network.state_dict())
    loop.optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if state["scaler"]:
        loop.scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and loop.device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda_rng"], loop.device)
    rng.bit_generator.state = state["numpy_rng"]
    return state


# ---------------------------------------------------------------------------------------------
# steps


def _train_one_epoch(
    loop: _Loop,
    cases: Sequence[PreparedCase],
    config: ExperimentConfig,
    rng: np.random.Generator,
    bar: Progress,
    deadline: float | None = None,
) -> tuple[list[float], bool]:
    """One pass over freshly sampled patches: the loss of every step, and whether the pass
    was cut short because ``time.perf_counter()`` passed ``deadline`` (checked after every
    step, agreed by all ranks, so a time limit is kept to within one step)."""
    images, labels = sample_patches(cases, config, rng)
    augment = augmentation(config.train)
    if augment is not None:
        images, labels = augmented(augment, images, labels, rng)
    order = rng.permutation(len(images))
    batch_size = config.train.batch_size
    network, optimizer = loop.network, loop.optimizer
    network.train()
    losses = []
    for first in range(0, len(order), batch_size):
        index = order[first : first + batch_size]
        x = torch.from_numpy(images[index]).to(loop.device)
        y = torch.from_numpy(labels[index]).to(loop.device)
        optimizer.zero_grad(set_to_none=True)
        with _autocast(loop.device, loop.autocast_dtype):
            loss = _supervised_loss(loop, network(x), y)
        loop.scaler.scale(loss).backward()
        if loop.grad_clip_norm is not None:
            loop.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(network.parameters(), loop.grad_clip_norm)
        loop.scaler.step(optimizer)
        loop.scaler.update()
        losses.append(float(loss.detach()))
        bar.step(losses[-1])
        last = first + batch_size >= len(order)
        if (
            deadline is not None
            and not last
            and distributed.agreed(time.perf_counter() >= deadline)
        ):
            return losses, True
    return losses, False


def _supervised_loss(loop: _Loop, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The loss; with deep supervision, weighted ``1, 1/2, 1/4, ...`` over the output heads."""
    if not (loop.deep_supervision and loop.network.training and output.dim() == 6):
        return loop.loss_fn(output.float(), target)  # type: ignore[no-any-return]
    return _heads_loss(loop.loss_fn, output, target)


def _heads_loss(
    loss_fn: torch.nn.Module, output: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """The deep-supervision loss of DynUNet's stacked heads (``[batch, head, class, ...]``,
    every head at the full resolution): weighted ``1, 1/2, 1/4, ...``, in float32."""
    weights = [0.5**level for level in range(output.shape[1])]
    total = sum(w * loss_fn(output[:, level].float(), target) for level, w in enumerate(weights))
    return total / sum(weights)  # type: ignore[no-any-return]


def _validate(
    model: LoadedModel, val_cases: Sequence[tuple[Volume, Volume]], hd95: bool
) -> tuple[dict[str, float], dict[str, float]]:
    """Per foreground label name: mean Dice and mean finite HD95 (mm) over the cases."""
    dice: dict[str, list[float]] = {name: [] for name in model.label_names.values()}
    distances: dict[str, list[float]] = {name: [] for name in model.label_names.values()}
    for image, labels in val_cases:
        predicted = predict(model, image)
        for value, name in model.label_names.items():
            if hd95:
                metrics = compute_metrics(
                    predicted, labels, label=value, tolerance_mm=_SURFACE_TOLERANCE_MM
                )
                dice[name].append(metrics.dice)
                if math.isfinite(metrics.hausdorff95_mm):
                    distances[name].append(metrics.hausdorff95_mm)
            else:
                dice[name].append(dice_score(predicted, labels, value))
    return (
        {name: float(np.mean(values)) for name, values in dice.items()},
        {name: float(np.mean(values)) for name, values in distances.items() if values},
    )


def _extra(epoch: int, train_loss: float, val_dice: float | None) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "train_loss": float(train_loss),
        "val_dice": None if val_dice is None or math.isnan(val_dice) else float(val_dice),
    }


def _metric_name(label_name: str) -> str:
    # MLflow metric keys allow letters, digits, "_", "-", ".", " " and "/".
    return re.sub(r"[^\w\-. /]", "_", label_name)


def cuda_available() -> bool:
    """Whether torch sees a CUDA device (``medseg plan``'s default device)."""
    return bool(torch.cuda.is_available())


def time_training_step(
    model: ModelConfig,
    patch_size: Sequence[int],
    batch_size: int,
    num_threads: int,
    *,
    precision: str = "float32",
    max_steps: int = 12,
    max_seconds: float = 60.0,
) -> float:
    """Seconds of one steady training step (forward, Dice + CE without background, backward,
    SGD with Nesterov momentum) of ``model`` on a batch of random patches on this CPU, in the
    arithmetic that ``train.precision`` ``precision`` trains in here (:func:`_autocast_dtype`).

    Steps run until the last three agree within 30 % (or ``max_steps`` ran, or
    ``max_seconds`` passed) and their median is returned: oneDNN prepares its kernels for new
    shapes over the first steps (measured 2–3.6 s for each of the first five steps of a
    network whose steps then take 0.4–0.6 s). Used by ``medseg plan``'s CPU budget.
    """
    autocast_dtype = _autocast_dtype(precision, torch.device("cpu"))
    previous = torch.get_num_threads()
    torch.set_num_threads(capped_threads(num_threads))
    try:
        network = build_network(model).train()
        optimiser = torch.optim.SGD(network.parameters(), lr=1e-2, momentum=0.99, nesterov=True)
        loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
        generator = torch.Generator().manual_seed(0)
        shape = (batch_size, 1, *patch_size)
        image = torch.randn(shape, generator=generator)
        target = torch.randint(0, len(model.labels) + 1, shape, generator=generator)
        times: list[float] = []
        began = time.perf_counter()
        while len(times) < max_steps:
            started = time.perf_counter()
            optimiser.zero_grad(set_to_none=True)
            with _autocast(torch.device("cpu"), autocast_dtype):  # as the training loop
                output = network(image)
                loss = (  # deep supervision in training mode: every head, as the loop
                    _heads_loss(loss_fn, output, target)
                    if output.ndim == 6
                    else loss_fn(output.float(), target)
                )
            loss.backward()
            optimiser.step()
            times.append(time.perf_counter() - started)
            last = times[-3:]
            steady = len(times) >= 4 and max(last) <= 1.3 * min(last)
            if steady or time.perf_counter() - began > max_seconds:
                break
    finally:
        torch.set_num_threads(previous)
    return float(sorted(times[-3:])[len(times[-3:]) // 2])
