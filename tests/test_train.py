"""Training on a tiny synthetic case: loss falls, metrics reach MLflow, checkpoints load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from medseg.config import ExperimentConfig, ModelConfig, TrainConfig, load_config
from medseg.errors import GeometryError, InputError
from medseg.geometry import Geometry
from medseg.model import build_network, load_checkpoint
from medseg.tracking import Tracker, resolve_model
from medseg.training.train import train
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
    hd95 = client.get_metric_history(result.run_id, "val_hd95_mm_tumour")
    assert hd95 and {m.step for m in hd95} <= set(validated)  # missing where no prediction
    assert all(np.isfinite(m.value) and m.value >= 0.0 for m in hd95)
    per_epoch = {"lr", "samples_per_s", "epoch_seconds"}
    for key in per_epoch:
        assert len(client.get_metric_history(result.run_id, key)) == epochs, key
    artifacts = {a.path for a in client.list_artifacts(result.run_id, "checkpoints")}
    assert artifacts == {"checkpoints/best.pt", "checkpoints/last.pt"}
    assert result.model_uri == f"runs:/{result.run_id}/model"
    assert [a.path for a in client.list_artifacts(result.run_id, "curves")] == ["curves/curves.png"]
    assert (tmp_path / "out" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import socket

    assert run.data.tags["host"] == socket.gethostname()
    assert run.data.tags["git_commit"] != ""
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


# ---------------------------------------------------------------------------------------------
# determinism and resuming


def _config_with(config: ExperimentConfig, **train_fields: object) -> ExperimentConfig:
    return config.model_copy(update={"train": config.train.model_copy(update=train_fields)})


def _small_case(seed: int) -> tuple[Volume, Volume]:
    return _sphere_case(seed, shape=(16, 32, 32))


def test_deterministic_runs_give_identical_step_losses(tmp_path: Path) -> None:
    config = _config_with(load_config(TINY), epochs=2, deterministic=True)
    # cases larger than the patch, so that the patch sampler's randomness matters
    cases = [_sphere_case(1), _sphere_case(2)]
    runs = [train(config, cases, [], tmp_path / name, None) for name in ("a", "b")]
    steps = [[loss for r in run.history for loss in r.step_losses] for run in runs]
    assert len(steps[0]) == 2 * 2 * config.train.samples_per_case // config.train.batch_size
    assert steps[0] == steps[1]  # bit-identical, not approximately equal
    other_seed = config.model_copy(update={"seed": 1})
    other = train(other_seed, cases, [], tmp_path / "c", None)
    assert [loss for r in other.history for loss in r.step_losses] != steps[0]


class _Interrupt(Exception):
    pass


class _InterruptingTracker:
    """Raises after logging epoch ``stop_after`` (a crash after last.pt was written)."""

    def __init__(self, stop_after: int) -> None:
        self.stop_after = stop_after

    @property
    def run_id(self) -> str:
        return "fake"

    def log_metrics(self, metrics: object, step: int) -> None:
        if step == self.stop_after:
            raise _Interrupt

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        raise AssertionError("not reached")

    def log_model(self, checkpoint_path: Path) -> str:
        raise AssertionError("not reached")


def test_resume_from_last_checkpoint_continues_the_same_curve(tmp_path: Path) -> None:
    config = _config_with(
        load_config(TINY),
        epochs=4,
        val_every=2,
        deterministic=True,
        optimizer="adamw",
        weight_decay=1e-4,
        lr_schedule="poly",
        warmup_epochs=1,
    )
    cases, val = [_sphere_case(1)], [_small_case(2)]  # case larger than the patch
    whole = train(config, cases, val, tmp_path / "whole", None)
    with pytest.raises(_Interrupt):
        train(config, cases, val, tmp_path / "cut", _InterruptingTracker(stop_after=3))
    assert load_checkpoint(tmp_path / "cut" / "last.pt").extra["epoch"] == 3
    resumed = train(
        config, cases, val, tmp_path / "cut", None, resume_from=tmp_path / "cut" / "last.pt"
    )
    assert [r.step_losses for r in resumed.history] == [r.step_losses for r in whole.history]
    assert [r.val_dice for r in resumed.history] == [r.val_dice for r in whole.history]
    assert [r.learning_rate for r in resumed.history] == [r.learning_rate for r in whole.history]
    assert resumed.best_epoch == whole.best_epoch
    assert resumed.best_val_dice == whole.best_val_dice


def test_resume_needs_a_checkpoint_with_training_state(tmp_path: Path) -> None:
    from medseg.errors import ModelError

    config = _config_with(load_config(TINY), epochs=1)
    result = train(config, [_small_case(1)], [_small_case(2)], tmp_path, None)
    with pytest.raises(ModelError, match="no training state"):
        train(
            config,
            [_small_case(1)],
            [],
            tmp_path / "again",
            None,
            resume_from=result.checkpoint_path,
        )


# ---------------------------------------------------------------------------------------------
# model, loss, optimiser and schedule choices


@pytest.mark.parametrize(
    ("model_fields", "train_fields"),
    [
        ({}, {"loss": "dice"}),
        ({}, {"loss": "dice_focal", "optimizer": "sgd", "grad_clip_norm": 1.0}),
        ({"name": "dynunet"}, {"optimizer": "adamw", "lr_schedule": "cosine"}),
        (
            {"name": "dynunet", "deep_supervision": True, "num_res_units": 1},
            {"loss": "dice_focal", "lr_schedule": "poly", "warmup_epochs": 1},
        ),
    ],
    ids=["unet-dice", "unet-dicefocal-sgd-clip", "dynunet-adamw-cosine", "dynunet-deepsup"],
)
def test_each_choice_builds_and_trains(
    tmp_path: Path, model_fields: dict[str, object], train_fields: dict[str, object]
) -> None:
    import torch

    config = load_config(TINY)
    config = config.model_copy(update={"model": config.model.model_copy(update=model_fields)})
    config = _config_with(config, epochs=2, samples_per_case=2, **train_fields)
    result = train(config, [_small_case(1)], [_small_case(2)], tmp_path, None)
    losses = [loss for r in result.history for loss in r.step_losses]
    assert len(losses) == 2 and all(np.isfinite(losses))
    best = load_checkpoint(result.checkpoint_path)
    assert type(best.network).__name__ == {"unet": "UNet", "dynunet": "DynUNet"}[config.model.name]
    # the stored network segments a full image (eval mode: one output even with deep supervision)
    out = best.network(torch.zeros((1, 1, 16, 32, 32)))
    assert out.shape == (1, 2, 16, 32, 32)


def test_deep_supervision_needs_dynunet() -> None:
    from medseg.config import parse_config
    from medseg.errors import ConfigError

    text = TINY.read_text().replace(
        "num_res_units: 0", "num_res_units: 0\n  deep_supervision: true"
    )
    with pytest.raises(ConfigError, match="deep_supervision"):
        parse_config(text)


@pytest.mark.parametrize("schedule", ["cosine", "poly", "constant"], ids=str)
def test_lr_schedules_match_torch_schedulers(tmp_path: Path, schedule: str) -> None:
    import torch

    config = _config_with(
        load_config(TINY),
        epochs=4,
        samples_per_case=2,
        lr_schedule=schedule,
        learning_rate=0.01,
    )
    result = train(config, [_small_case(1)], [], tmp_path, None)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.01)
    referee = {
        "cosine": torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=4, eta_min=0.0),
        "poly": torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=4, power=0.9),
        "constant": torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0),
    }[schedule]
    expected = []
    for _ in range(4):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        referee.step()
    assert [r.learning_rate for r in result.history] == pytest.approx(expected, rel=1e-6)


def test_warmup_rises_linearly_to_the_learning_rate(tmp_path: Path) -> None:
    config = _config_with(
        load_config(TINY), epochs=4, samples_per_case=2, warmup_epochs=2, learning_rate=0.03
    )
    result = train(config, [_small_case(1)], [], tmp_path, None)
    assert [r.learning_rate for r in result.history] == pytest.approx([0.01, 0.02, 0.03, 0.03])


def _conv_output_dtypes() -> tuple[list[Any], Any]:
    """The dtypes of every Conv3d output from now on, and the hook's handle."""
    import torch

    seen: list[Any] = []

    def hook(module: Any, _inputs: Any, output: Any) -> None:
        if isinstance(module, torch.nn.Conv3d):
            seen.append(output.dtype)

    return seen, torch.nn.modules.module.register_module_forward_hook(hook)


@pytest.mark.parametrize("native", [False, True], ids=["no-bf16-cpu", "bf16-cpu"])
def test_cpu_training_uses_bfloat16_only_where_the_cpu_has_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, native: bool
) -> None:
    """``train.precision: auto`` trains the network in bfloat16 on a CPU with AVX512-BF16/AMX
    (1.7x the steps of float32 there) and in float32 elsewhere, where bfloat16 is emulated;
    an explicit ``bfloat16`` is refused where it is not native, ``float16`` on every CPU."""
    import torch

    from medseg import precision as precisions
    from medseg.errors import ConfigError

    flags = frozenset({"avx512_bf16"} if native else {"avx2"})
    monkeypatch.setattr(precisions, "cpu_flags", lambda *a: flags)
    with pytest.raises(ConfigError, match="float16 needs a CUDA device"):
        train(
            _config_with(load_config(TINY), precision="float16"),
            [_small_case(1)],
            [],
            tmp_path,
            None,
        )
    explicit = _config_with(load_config(TINY), epochs=1, samples_per_case=2, precision="bfloat16")
    if not native:
        with pytest.raises(ConfigError, match="not native on this CPU.*AVX512-BF16"):
            train(explicit, [_small_case(1)], [], tmp_path, None)
    auto = _config_with(load_config(TINY), epochs=1, samples_per_case=2, precision="auto")
    seen, handle = _conv_output_dtypes()
    try:
        result = train(auto, [_small_case(1)], [], tmp_path / "auto", None)
    finally:
        handle.remove()
    losses = [loss for r in result.history for loss in r.step_losses]
    assert losses and all(np.isfinite(losses))
    if native:
        assert torch.bfloat16 in seen, set(seen)
    else:
        assert set(seen) == {torch.float32}, set(seen)
    # mixed precision: the weights stay float32 in the checkpoint
    state = torch.load(result.checkpoint_path, map_location="cpu", weights_only=False)
    weights = [v for v in state["state_dict"].values() if torch.is_floating_point(v)]
    assert weights and all(v.dtype == torch.float32 for v in weights)


def test_the_step_timer_times_the_precision_that_is_trained(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch

    from medseg import precision as precisions
    from medseg.training.train import time_training_step

    monkeypatch.setattr(precisions, "cpu_flags", lambda *a: frozenset({"amx_bf16"}))
    model = load_config(TINY).model
    for precision, expected in [("auto", torch.bfloat16), ("float32", torch.float32)]:
        seen, handle = _conv_output_dtypes()
        try:
            seconds = time_training_step(
                model, (16, 16, 16), 1, 1, precision=precision, max_steps=2
            )
        finally:
            handle.remove()
        assert seconds > 0 and expected in seen, (precision, set(seen))
    # a precision this CPU refuses leaves torch's thread count as it was
    from medseg.errors import ConfigError

    monkeypatch.setattr(precisions, "cpu_flags", lambda *a: frozenset())
    threads = torch.get_num_threads()
    with pytest.raises(ConfigError, match="not native on this CPU"):
        time_training_step(model, (16, 16, 16), 1, threads + 1, precision="bfloat16")
    assert torch.get_num_threads() == threads


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bfloat16", "float16"], ids=str)
def test_amp_trains_on_cuda(tmp_path: Path, precision: str) -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    config = _config_with(
        load_config(TINY),
        epochs=2,
        samples_per_case=2,
        precision=precision,
        device="cuda",
        grad_clip_norm=1.0,
    )
    result = train(config, [_small_case(1)], [_small_case(2)], tmp_path, None)
    assert all(np.isfinite([loss for r in result.history for loss in r.step_losses]))


def test_early_stopping_after_patience_validations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import medseg.training.train as train_module

    scores = iter([0.5, 0.7, 0.6, 0.65, 0.9, 0.95])

    def fake_validate(*args: object) -> tuple[dict[str, float], dict[str, float]]:
        return {"tumour": next(scores)}, {}

    monkeypatch.setattr(train_module, "_validate", fake_validate)
    config = _config_with(
        load_config(TINY), epochs=6, samples_per_case=2, val_every=1, early_stopping_patience=2
    )
    result = train(config, [_small_case(1)], [_small_case(2)], tmp_path, None)
    assert result.stopped_early
    assert [r.epoch for r in result.history] == [1, 2, 3, 4]
    assert result.best_epoch == 2 and result.best_val_dice == 0.7
    assert load_checkpoint(result.checkpoint_path).extra["epoch"] == 2


def test_time_limit_cuts_an_epoch_short_and_validates_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fake clock advances 1 s per reading, the limit is 30 s and an epoch has 40 steps: the
    limit falls inside the first epoch, which stops there (not after its 40 steps, and not
    before it starts), is validated, and ends training."""
    import medseg.training.train as train_module

    readings = iter(range(1_000_000))

    class FakeTime:
        @staticmethod
        def perf_counter() -> float:
            return float(next(readings))

    monkeypatch.setattr(train_module, "time", FakeTime)
    config = _config_with(
        load_config(TINY),
        epochs=6,
        samples_per_case=40,
        batch_size=1,
        val_every=5,
        time_limit_min=0.5,
    )
    result = train(config, [_small_case(1)], [_small_case(2)], tmp_path, None)
    assert result.stopped_early
    assert len(result.history) == 1
    steps = len(result.history[0].step_losses)
    assert 10 <= steps < 40  # about one reading per step after the first few
    assert result.history[-1].val_dice is not None  # the cut epoch is validated
    assert load_checkpoint(result.checkpoint_path).extra["epoch"] == 1
    unlimited = _config_with(load_config(TINY), epochs=2, samples_per_case=1, val_every=5)
    readings = iter(range(1_000_000))
    assert (
        len(train(unlimited, [_small_case(1)], [_small_case(2)], tmp_path / "u", None).history) == 2
    )


def test_a_time_paced_schedule_reaches_its_low_rates_when_the_budget_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """lr_schedule_by time: 100 epochs are planned but the 1-minute limit (a fake clock, 1 s per
    reading) ends training after a few; the cosine schedule follows the time spent, so the
    last epochs run at a small fraction of the rate, where pacing by epochs would still be
    near the top."""
    import medseg.training.train as train_module
    from medseg.training.train import lr_factor

    class FakeTime:
        readings = iter(range(1_000_000))

        @classmethod
        def perf_counter(cls) -> float:
            return float(next(cls.readings))

    monkeypatch.setattr(train_module, "time", FakeTime)
    rates = {}
    for pace in ("time", "epochs"):
        FakeTime.readings = iter(range(1_000_000))
        config = _config_with(
            load_config(TINY), epochs=100, samples_per_case=4, batch_size=1, val_every=1000,
            time_limit_min=1.0, lr_schedule="cosine", lr_schedule_by=pace, learning_rate=1e-3,
        )  # fmt: skip
        result = train(config, [_small_case(1)], [_small_case(2)], tmp_path / pace, None)
        assert result.stopped_early and 3 <= len(result.history) < 30
        rates[pace] = [r.learning_rate for r in result.history]
    assert rates["epochs"][-1] > 0.9e-3
    assert rates["time"][-1] < 0.2e-3
    assert rates["time"] == sorted(rates["time"], reverse=True) and rates["time"][0] == 1e-3
    cfg = load_config(TINY).train.model_copy(
        update={"epochs": 100, "lr_schedule": "cosine", "lr_schedule_by": "time"}
    )
    assert lr_factor(cfg, 1, 0.5) == pytest.approx(0.5)  # t = max(1/100, 0.5)
    assert lr_factor(cfg, 99, 0.1) == pytest.approx(lr_factor(cfg, 99))  # epochs ahead of time
    with pytest.raises(ValueError, match="time_limit_min, which is not set"):
        TrainConfig(epochs=2, patch_size=(8, 8, 8), lr_schedule_by="time")


@pytest.mark.parametrize("bars", [False, True], ids=["log-lines", "progress-bars"])
def test_progress_bars_or_log_lines(
    tmp_path: Path, bars: bool, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    config = _config_with(load_config(TINY), epochs=2, samples_per_case=2)
    with caplog.at_level(logging.INFO, logger="medseg.training.train"):
        train(config, [_small_case(1)], [], tmp_path, None, progress=bars)
    lines = [r.getMessage() for r in caplog.records if r.name == "medseg.training.train"]
    assert [line.split(":")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"]
    assert all("train_loss" in line for line in lines)


def test_augmentation_changes_patches_reproducibly(tmp_path: Path) -> None:
    config = _config_with(
        load_config(TINY),
        epochs=2,
        samples_per_case=2,
        deterministic=True,
        augment_flip_axes=(0, 1, 2),
        augment_affine_probability=1.0,
        augment_intensity_probability=1.0,
        augment_noise_std=0.05,
    )
    plain = _config_with(
        config,
        augment_flip_axes=(),
        augment_affine_probability=0.0,
        augment_intensity_probability=0.0,
        augment_noise_std=0.0,
    )
    cases = [_sphere_case(1)]
    runs = [
        train(c, cases, [], tmp_path / n, None)
        for c, n in ((config, "a"), (config, "b"), (plain, "c"))
    ]
    steps = [[loss for r in run.history for loss in r.step_losses] for run in runs]
    assert steps[0] == steps[1]
    assert steps[0] != steps[2]
    assert all(np.isfinite(steps[0]))


def test_augmented_labels_stay_labels() -> None:
    from medseg.training.patches import augmentation, augmented

    config = _config_with(load_config(TINY), augment_flip_axes=(1,), augment_affine_probability=1.0)
    augment = augmentation(config.train)
    rng = np.random.default_rng(0)
    labels = np.zeros((3, 1, 16, 32, 32), dtype=np.int64)
    labels[:, :, 4:12, 8:24, 8:24] = 1
    images = labels.astype(np.float32)
    out_images, out_labels = augmented(augment, images, labels, rng)
    assert out_labels.shape == labels.shape and out_labels.dtype == np.int64
    assert set(np.unique(out_labels)) <= {0, 1}
    assert not np.array_equal(out_labels, labels)
    # the image moved with its labels (nearest for labels, linear for the image)
    agreement = np.mean((out_images > 0.5) == (out_labels == 1))
    assert agreement > 0.97


def test_research_config_builds_a_deeply_supervised_dynunet() -> None:
    import torch

    config = load_config(TINY.parent / "research.yaml")
    network = build_network(config.model)
    network.train()
    out = network(torch.zeros((1, 1, 32, 32, 32)))
    # full-resolution output plus 2 upsampled deep-supervision heads, 2 classes
    assert out.shape == (1, 3, 2, 32, 32, 32)
    network.eval()
    with torch.no_grad():
        assert network(torch.zeros((1, 1, 32, 32, 32))).shape == (1, 2, 32, 32, 32)


_DDP_SCRIPT = """
import json, sys, time
from pathlib import Path

import torch.distributed as dist

sys.path.insert(0, {tests!r})
from test_train import _sphere_case, _tiny_config
from medseg.tracking import Tracker
from medseg.training.train import train

dist.init_process_group("gloo")
rank = dist.get_rank()
tmp = Path({tmp!r})
config = _tiny_config(tmp)
config = config.model_copy(update={{"train": config.train.model_copy(
    update={{"epochs": 2, "samples_per_case": 2, "num_threads": 1}})}})
cases, val = [_sphere_case(1), _sphere_case(3)], [_sphere_case(2)]
if rank == 0:
    with Tracker(config, run_name="ddp") as tracker:
        result = train(config, cases, val, tmp / "out", tracker, progress=False)
else:
    result = train(config, cases, val, tmp / "out", None, progress=False)
returned = time.time()
losses = [loss for r in result.history for loss in r.step_losses]
json.dump({{"losses": losses, "run_id": result.run_id, "returned": returned}},
          open(tmp / f"rank{{rank}}.json", "w"))
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_torchrun_ddp_two_cpu_processes(tmp_path: Path) -> None:
    """2 gloo processes: different patches per rank, one MLflow run, rank 0 writes."""
    import json
    import subprocess
    import sys

    import mlflow

    script = tmp_path / "ddp_train.py"
    script.write_text(_DDP_SCRIPT.format(tests=str(Path(__file__).parent), tmp=str(tmp_path)))
    torchrun = Path(sys.executable).parent / "torchrun"
    done = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", str(script)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert len(ranks[0]["losses"]) == len(ranks[1]["losses"]) == 4
    # same initial weights on both ranks, so a different first loss means different patches
    assert ranks[0]["losses"][0] != ranks[1]["losses"][0]
    assert ranks[0]["run_id"] is not None and ranks[1]["run_id"] is None
    # train() returns on every rank together, after rank 0 has verified and logged (a rank
    # that left early and tore its gloo group down aborted with SIGABRT in CI)
    assert ranks[1]["returned"] >= ranks[0]["returned"] - 0.25
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("test-train")
    assert len(client.search_runs([experiment.experiment_id])) == 1
    # rank 0 verifies best.pt where this CPU computes a faster precision natively
    from medseg import precision

    backend = load_config(TINY).infer.backend
    verified = (
        ["precision_verification.json"] if precision.native_precisions("cpu", backend) else []
    )
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        ["best.pt", "curves.png", "last.pt", *verified]
    )


@pytest.mark.slow
def test_torchrun_launches_the_cli_train_command_with_ddp(tmp_path: Path) -> None:
    """`torchrun --nproc_per_node 2 -m medseg train CONFIG`: one process group, one MLflow run."""
    import subprocess
    import sys

    import mlflow
    import yaml

    from medseg.synthetic import phantom

    dataset = phantom.make_dataset(tmp_path / "phantoms", 3, seed=5)
    raw = yaml.safe_load(TINY.read_text())
    raw["data"]["datalist"] = str(dataset)
    raw["train"].update({"epochs": 2, "samples_per_case": 2, "num_threads": 1, "val_every": 2})
    raw["tracking"].update(
        {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "ddp-cli"}
    )
    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump(raw))
    torchrun = Path(sys.executable).parent / "torchrun"
    done = subprocess.run(
        [
            str(torchrun),
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "medseg",
            "train",
            str(config),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("MLflow run id:") == 1  # rank 0 reports, rank 1 is quiet
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("ddp-cli")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.tags["world_size"] == "2"
    assert run.info.status == "FINISHED"
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 2
    assert {"best.pt", "last.pt"} <= {p.name for p in (tmp_path / "out").iterdir()}


@pytest.mark.parametrize(
    ("sampling", "low", "high"), [("voxel", 0.0, 0.05), ("class_balanced", 0.4, 0.6)]
)
def test_class_balanced_sampling_centres_small_labels_as_often_as_large_ones(
    sampling: str, low: float, high: float
) -> None:
    """A 1000-voxel label next to a 1-voxel label: patch centres per label."""
    import numpy as np

    from medseg.geometry import Geometry
    from medseg.training.patches import prepare_case, sample_patches
    from medseg.volume import Volume, VolumeKind

    config = load_config(TINY)
    config = config.model_copy(
        update={
            "model": ModelConfig.model_validate(
                {
                    **config.model.model_dump(),
                    "labels": [
                        {"label": 1, "name": "large", "type": "GTV"},
                        {"label": 2, "name": "tiny", "type": "GTV"},
                    ],
                }
            ),
            "train": config.train.model_copy(
                update={
                    "foreground_fraction": 1.0,
                    "foreground_sampling": sampling,
                    "samples_per_case": 400,
                    "patch_size": (1, 1, 1),
                }
            ),
        }
    )
    grid = Geometry((20, 40, 40), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    labels = np.zeros(grid.shape, dtype=np.uint8)
    labels[5:15, 5:15, 5:15] = 1
    labels[18, 35, 35] = 2
    image = Volume(np.zeros(grid.shape, np.float32), grid)
    case = prepare_case(image, Volume(labels, grid, VolumeKind.LABELS), config)
    _, patches = sample_patches([case], config, np.random.default_rng(0))
    tiny_share = float(np.mean(patches.ravel() == 2))
    assert low <= tiny_share <= high
    assert np.all(patches > 0)  # foreground_fraction 1: every centre is labelled


def _nnunet_dice_ce(logits: Any, target: Any, batch_dice: bool) -> Any:
    """nnU-Net's DC_and_CE_loss (do_bg=False, smooth 1e-5, weights 1 and 1), written out from
    MemoryEfficientSoftDiceLoss, with MONAI's ``1 - Dice`` for nnU-Net's ``-Dice``."""
    import torch

    probabilities = torch.softmax(logits, 1)[:, 1:]
    onehot = torch.nn.functional.one_hot(target[:, 0], logits.shape[1]).movedim(-1, 1)[:, 1:]
    axes = tuple(range(2, logits.dim()))
    intersect = (probabilities * onehot).sum(axes)
    sum_pred, sum_gt = probabilities.sum(axes), onehot.sum(axes)
    if batch_dice:
        intersect, sum_pred, sum_gt = intersect.sum(0), sum_pred.sum(0), sum_gt.sum(0)
    dice = ((2 * intersect + 1e-5) / (sum_gt + sum_pred + 1e-5)).mean()
    return torch.nn.functional.cross_entropy(logits, target[:, 0]) + 1 - dice


def _loss_case(seed: int) -> tuple[Any, Any]:
    import torch

    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn((2, 3, 4, 8, 8), generator=generator)
    target = torch.randint(0, 3, (2, 1, 4, 8, 8), generator=generator)
    return logits, target


@pytest.mark.parametrize("batch_dice", [True, False], ids=["batch_dice", "per_patch_dice"])
def test_loss_without_background_is_nnunets_dice_and_ce(batch_dice: bool) -> None:
    import torch

    from medseg.training.train import _loss

    logits, target = _loss_case(0)
    cfg = load_config(TINY).train.model_copy(
        update={"loss_include_background": False, "loss_batch_dice": batch_dice}
    )
    expected = _nnunet_dice_ce(logits, target, batch_dice)
    torch.testing.assert_close(_loss(cfg)(logits, target), expected)
    with_background = _loss(cfg.model_copy(update={"loss_include_background": True}))
    assert not torch.isclose(with_background(logits, target), expected)


def test_deep_supervision_heads_use_the_configured_loss() -> None:
    import torch

    from medseg.training.train import _Loop, _loss, _supervised_loss

    cfg = load_config(TINY).train.model_copy(update={"loss_include_background": False})
    heads = [_loss_case(seed)[0] for seed in (1, 2, 3)]
    target = _loss_case(1)[1]
    network = torch.nn.Identity().train()
    loop = _Loop(
        network=network,
        model=network,
        loss_fn=_loss(cfg),
        optimizer=torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1),
        scaler=torch.amp.GradScaler("cpu", enabled=False),
        device=torch.device("cpu"),
        autocast_dtype=None,
        deep_supervision=True,
        grad_clip_norm=None,
    )
    got = _supervised_loss(loop, torch.stack(heads, dim=1), target)
    per_head = [_nnunet_dice_ce(h, target, batch_dice=True) for h in heads]
    weights = [1.0, 0.5, 0.25]
    expected = sum(w * v for w, v in zip(weights, per_head, strict=True)) / sum(weights)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("patch_size", [(16, 32, 32), (8, 32, 32)], ids=["3d", "in-plane"])
def test_nnunet_training_defaults_train_with_finite_loss(
    tmp_path: Path, patch_size: tuple[int, int, int]
) -> None:
    from medseg.config import TrainConfig

    config = load_config(TINY)
    values = {
        **config.train.model_dump(),
        **TrainConfig.nnunet_defaults(patch_size),
        "patch_size": patch_size,
        "epochs": 2,
        "samples_per_case": 2,
    }
    train_cfg = TrainConfig.model_validate(values)
    assert train_cfg.augment_in_plane == (patch_size[0] == 8)
    assert (train_cfg.optimizer, train_cfg.momentum, train_cfg.learning_rate) == ("sgd", 0.99, 1e-2)
    config = config.model_copy(update={"train": train_cfg})
    result = train(config, [_small_case(1)], [], tmp_path, None)
    losses = [loss for r in result.history for loss in r.step_losses]
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert result.history[1].learning_rate < result.history[0].learning_rate  # poly
