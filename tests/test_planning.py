"""``medseg plan``: the nnU-Net raw layout as a datalist, the plan YAML (complete, commented,
parsed back to the same config), the CLI's outputs and refusals, and the CPU budget."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medseg.config import parse_config
from medseg.errors import ConfigError
from medseg.geometry import Geometry
from medseg.io import nifti
from medseg.training.data import load_training_cases
from medseg.volume import Volume, VolumeKind


def _nnunet_raw(root: Path, n_cases: int = 3, *, seed: int = 0) -> Path:
    """A tiny nnU-Net v2 raw dataset: CT-like images with one cube label each."""
    rng = np.random.default_rng(seed)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i in range(n_cases):
        grid = Geometry((12, 32, 30 + i), (3.0, 0.8, 0.8), (0.0, 0.0, 0.0))
        image = rng.normal(40.0, 20.0, grid.shape).astype(np.int16)
        image[:, :4] = -1000
        labels = np.zeros(grid.shape, np.uint8)
        labels[4:8, 10:20, 10:18] = 1
        nifti.save(Volume(image, grid), root / "imagesTr" / f"case_{i:03d}_0000.nii.gz")
        nifti.save(
            Volume(labels, grid, kind=VolumeKind.LABELS), root / "labelsTr" / f"case_{i:03d}.nii.gz"
        )
    dataset = {
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "tumour": 1},
        "numTraining": n_cases,
        "file_ending": ".nii.gz",
    }
    path = root / "dataset.json"
    path.write_text(json.dumps(dataset), encoding="utf-8")
    return path


def test_an_nnunet_raw_dataset_is_a_datalist(tmp_path: Path) -> None:
    path = _nnunet_raw(tmp_path / "Dataset001_toy")
    cases = load_training_cases(path)
    assert [c.case_id for c in cases] == ["training_000", "training_001", "training_002"]
    assert [c.image.array.shape[2] for c in cases] == [30, 31, 32]  # sorted by case name
    assert all(int(c.labels.array.max()) == 1 for c in cases)


def test_an_nnunet_raw_dataset_missing_an_image_is_named(tmp_path: Path) -> None:
    path = _nnunet_raw(tmp_path / "Dataset001_toy")
    (path.parent / "imagesTr" / "case_001_0000.nii.gz").unlink()
    with pytest.raises(
        ConfigError, match=r"case_001\.nii\.gz: missing image imagesTr/case_001_0000\.nii\.gz"
    ):
        load_training_cases(path)


def test_an_nnunet_raw_dataset_of_two_channels_is_refused(tmp_path: Path) -> None:
    path = _nnunet_raw(tmp_path / "Dataset001_toy")
    raw = json.loads(path.read_text())
    raw["channel_names"] = {"0": "T1", "1": "T2"}
    path.write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match="2 input channels"):
        load_training_cases(path)


def test_plan_section_resolves_the_fingerprint_beside_the_yaml(tmp_path: Path) -> None:
    from medseg.config import builtin_config_path, load_config

    text = builtin_config_path("tiny.yaml").read_text()
    text += "plan: {generated_by: medseg plan 0.1.0, fingerprint: fingerprint.json}\n"
    (tmp_path / "plan.yaml").write_text(text)
    config = load_config(tmp_path / "plan.yaml")
    assert config.plan is not None
    assert config.plan.fingerprint == (tmp_path / "fingerprint.json").resolve()
    assert config.plan.source == (tmp_path / "plan.yaml").resolve()
    assert "source" not in config.to_yaml()  # where it was read from is never written
    assert parse_config(config.to_yaml()).plan is not None


# ---------------------------------------------------------------------------------------------
# the plan YAML and the command


def _plan_cli(*args: str) -> tuple[int, str]:
    from typer.testing import CliRunner

    from medseg.cli import app

    result = CliRunner().invoke(app, ["plan", *args])
    return result.exit_code, result.output


def test_plan_yaml_is_complete_commented_and_parses_to_the_same_config(tmp_path: Path) -> None:
    from medseg.config import load_config

    data = _nnunet_raw(tmp_path / "Dataset001_toy")
    out = tmp_path / "plan" / "plan.yaml"
    code, output = _plan_cli(str(data), "--out", str(out), "--device", "cuda")
    assert code == 0, output
    text = out.read_text()
    assert text.startswith("# medseg plan ")
    config = load_config(out)
    from medseg.planning.command import plan_experiment

    again = plan_experiment(data, tmp_path / "again" / "plan.yaml", device="cuda")
    # every section and key is written (the defaults too), and it reads back as planned
    assert config.model_dump(exclude={"plan"}) == again.planned.config.model_dump(exclude={"plan"})
    for key in ("postprocess:", "export:", "ingest:", "privacy:", "plan:", "augment_gamma_range"):
        assert key in text
    comments = {
        line.split(":")[0].strip(): line.split("#", 1)[1]
        for line in text.splitlines()
        if not line.startswith("#") and "#" in line
    }
    for key in ("spacing_mm", "patch_size", "batch_size", "strides", "channels", "lower_hu"):
        assert comments.get(key, "").strip(), f"{key} has no reason"
    assert "anisotropic" in comments["spacing_mm"]
    assert config.preprocess.intensity == "clip_zscore"
    assert config.preprocess.resample_separate_z  # 3 mm slices of 0.8 mm pixels
    assert config.train.augment_in_plane is (
        max(config.train.patch_size[1:]) / config.train.patch_size[0] > 3
    )
    assert config.plan is not None and config.plan.fingerprint == out.parent / "fingerprint.json"


def test_the_same_data_gives_the_same_plan(tmp_path: Path) -> None:
    data = _nnunet_raw(tmp_path / "Dataset001_toy")
    outs = [tmp_path / f"p{i}" / "plan.yaml" for i in range(2)]
    for out in outs:
        assert _plan_cli(str(data), "--out", str(out), "--device", "cuda")[0] == 0
    assert outs[0].read_bytes() == outs[1].read_bytes()
    assert (outs[0].parent / "fingerprint.json").read_bytes() == (
        outs[1].parent / "fingerprint.json"
    ).read_bytes()


def test_plan_refuses_outputs_it_must_not_write(tmp_path: Path) -> None:
    data = _nnunet_raw(tmp_path / "Dataset001_toy")
    before = {p: p.read_bytes() for p in data.parent.rglob("*") if p.is_file()}
    # inside the dataset
    code, output = _plan_cli(str(data), "--out", str(data.parent / "plan.yaml"), "--device", "cuda")
    assert code == 2 and "inside the input" in output and len(output.strip().splitlines()) == 1
    # someone else's file
    mine = tmp_path / "notes" / "plan.yaml"
    mine.parent.mkdir()
    mine.write_text("my notes\n")
    code, output = _plan_cli(str(data), "--out", str(mine), "--device", "cuda", "--overwrite")
    assert code == 2 and str(mine) in output
    assert mine.read_text() == "my notes\n"
    # an existing plan: only with --overwrite
    out = tmp_path / "plan" / "plan.yaml"
    assert _plan_cli(str(data), "--out", str(out), "--device", "cuda")[0] == 0
    code, output = _plan_cli(str(data), "--out", str(out), "--device", "cuda")
    assert code == 2 and "exists" in output
    assert _plan_cli(str(data), "--out", str(out), "--device", "cuda", "--overwrite")[0] == 0
    # a dataset that is not one
    bad = tmp_path / "bad" / "bad.json"
    bad.parent.mkdir()
    bad.write_text("[1, 2]")
    code, output = _plan_cli(str(bad), "--out", str(tmp_path / "b" / "plan.yaml"))
    assert code == 2 and "bad.json" in output
    assert {p: p.read_bytes() for p in data.parent.rglob("*") if p.is_file()} == before


def test_an_mr_plan_zscores_each_image_and_finds_the_body_above_zero(tmp_path: Path) -> None:
    from medseg.config import load_config

    data = _nnunet_raw(tmp_path / "Dataset002_mr")
    raw = json.loads(data.read_text())
    raw["channel_names"] = {"0": "MR"}
    data.write_text(json.dumps(raw))
    for path in (data.parent / "imagesTr").iterdir():  # MR-like: background 0, tissue > 0
        image = nifti.load(path)
        nifti.save(image.with_array(np.abs(np.asarray(image.array)) + 1), path)
    out = tmp_path / "plan" / "plan.yaml"
    assert _plan_cli(str(data), "--out", str(out), "--device", "cuda")[0] == 0
    config = load_config(out)
    assert config.preprocess.intensity == "image_zscore"
    assert config.preprocess.lower_hu == 0.0
    assert config.infer.body_threshold_hu == 0.0


def test_a_plan_from_a_dicom_root_config_keeps_its_data_section(tmp_path: Path) -> None:
    from medseg.config import builtin_config_path, load_config
    from tests.conftest import require_data

    root = require_data("lung-gtv-ct")
    text = builtin_config_path("tiny.yaml").read_text()
    config_path = tmp_path / "lung.yaml"
    config_path.write_text(
        text + f"\ndata: {{dicom_root: {root}, labels: {{1: ['GTV*']}}, num_folds: 3}}\n"
        if "data:" not in text
        else text.replace("data:", f"data:\n  dicom_root: {root}\n  labels: {{1: ['GTV*']}}\n", 1)
    )
    out = tmp_path / "plan" / "plan.yaml"
    code, output = _plan_cli(str(config_path), "--out", str(out), "--device", "cuda")
    assert code == 0, output
    config = load_config(out)
    assert config.data.dicom_root == root.resolve()
    assert config.data.labels == {1: ("GTV*",)}
    assert config.preprocess.spacing_mm == pytest.approx((3.0, 0.977, 0.977), abs=1e-3)
    assert list(config.train.patch_size) == [48, 160, 160]  # ../shared/FINDINGS.md, nnU-Net


# ---------------------------------------------------------------------------------------------
# the CPU budget


def _toy_fingerprint(tmp_path: Path):  # type: ignore[no-untyped-def]
    from medseg.planning.datasets import fingerprint_dataset

    return fingerprint_dataset(_nnunet_raw(tmp_path / "Dataset001_toy"))


def _lung_like():  # type: ignore[no-untyped-def]
    from medseg.planning.fingerprint import CaseFingerprint, Fingerprint, IntensityStats

    cases = tuple(
        CaseFingerprint(f"case_{i:03d}", (3.0, 0.977, 0.977), s, s, {1: 1}, {1: 1.0})
        for i, s in enumerate([(41, 138, 141), (46, 130, 150), (60, 150, 139)])
    )
    stats = IntensityStats(-100.0, -50.0, 240.0, -1000.0, 400.0, -846.0, 149.0)
    return Fingerprint("CT", {1: "GTV"}, cases, stats, 1.0)


def test_cpu_budget_takes_the_widest_network_whose_steps_fit(tmp_path: Path) -> None:
    """With a step time proportional to nnU-Net's memory estimate (a deterministic machine),
    the chosen plan fits the budget, and the next larger memory target would not."""
    from medseg.planning.budget import MIN_STEPS, OVERHEAD_FRACTION, cpu_candidate, fit_cpu_budget
    from medseg.planning.rules import plan_3d_fullres

    seconds_per_unit = 1e-9
    timed: list[tuple[int, ...]] = []

    def timer(plan, n_labels, threads):  # type: ignore[no-untyped-def]
        timed.append(plan.patch_size)
        return seconds_per_unit * plan.batch_size * plan.memory_estimate

    fingerprint = _lung_like()
    choice = fit_cpu_budget(fingerprint, time_budget_min=30, num_threads=2, timer=timer)
    allowed = 30 * 60 * (1 - OVERHEAD_FRACTION) / MIN_STEPS
    assert choice.step_seconds <= allowed
    assert choice.step_seconds == timer(choice.plan, 1, 2)
    bigger = cpu_candidate(
        fingerprint, gpu_memory_gb=choice.memory_gb * 2, base_features=choice.base_features
    )
    if bigger.patch_size != choice.plan.patch_size:
        assert timer(bigger, 1, 2) > allowed
    total = choice.epochs * choice.iterations_per_epoch
    assert total * choice.step_seconds <= 30 * 60
    assert any("gave up" in line for line in choice.gave_up)
    assert len(timed) < 20  # a search, not every candidate
    # a faster machine affords the full nnU-Net plan
    fast = fit_cpu_budget(
        fingerprint, time_budget_min=30, num_threads=2, timer=lambda p, n, t: 1e-4
    )
    assert fast.plan == plan_3d_fullres(fingerprint, gpu_memory_gb=8.0)


def _hn_like():  # type: ignore[no-untyped-def]
    """21 organs on H&N-like CTs: 204 x 512 x 512 voxels at 2.5 x 0.98 x 0.98 mm, nothing to
    crop (a slice/row ratio of 2.55: not anisotropic, but the slice axis over 2x the finest)."""
    from medseg.planning.fingerprint import CaseFingerprint, Fingerprint, IntensityStats

    shape = (204, 512, 512)
    cases = tuple(
        CaseFingerprint(f"hn_{i}", (2.5, 0.98, 0.98), shape, shape, {1: 1}, {1: 1.0})
        for i in range(5)
    )
    stats = IntensityStats(40.0, 40.0, 30.0, -1000.0, 400.0, -20.0, 120.0)
    return Fingerprint("CT", {k: f"organ{k}" for k in range(1, 22)}, cases, stats, 1.0)


def test_a_cpu_plan_of_large_images_coarsens_the_spacing_before_the_patch() -> None:
    """H&N-like CTs: a small memory target takes the 3d_lowres spacing search (capped at
    CPU_MAX_COARSENING x the 3d_fullres spacing per axis) and keeps a quarter of the GPU plan's
    field of view; where nnU-Net plans no 3d_lowres (a small image), the candidate is its
    3d_fullres plan."""
    from medseg.planning.budget import (
        CPU_MAX_COARSENING,
        MIN_PATCH_SHARE,
        cpu_candidate,
        fit_cpu_budget,
    )
    from medseg.planning.rules import plan_3d_fullres, plan_3d_lowres

    fingerprint = _hn_like()
    gpu = plan_3d_fullres(fingerprint, gpu_memory_gb=8.0)
    choice = fit_cpu_budget(
        fingerprint, time_budget_min=30, num_threads=2,
        timer=lambda p, n, t: 2e-9 * p.batch_size * p.memory_estimate,
    )  # fmt: skip
    plan = choice.plan
    assert choice.configuration == "3d_lowres"
    coarsening = [c / g for c, g in zip(plan.spacing, gpu.spacing, strict=True)]
    assert all(1.0 < c <= CPU_MAX_COARSENING + 1e-9 for c in coarsening[1:]), coarsening
    fov = [p * s for p, s in zip(plan.patch_size, plan.spacing, strict=True)]
    gpu_fov = [p * s for p, s in zip(gpu.patch_size, gpu.spacing, strict=True)]
    assert np.prod(fov) >= MIN_PATCH_SHARE * np.prod(gpu_fov)
    assert any(line.startswith("gave up resolution") for line in choice.gave_up)
    width = [line for line in choice.gave_up if line.startswith("gave up width")]
    assert bool(width) == (plan.features[0] != gpu.features[0]), choice.gave_up
    # the first stage's width kept, two stages fewer: no "gave up width" (the stages say it)
    import dataclasses

    from medseg.planning.budget import _gave_up

    fewer = dataclasses.replace(gpu, features=gpu.features[:4])
    lines = _gave_up(gpu, fewer, 0.2, 9000, 30.0)
    assert not any(line.startswith("gave up width") for line in lines), lines
    assert f"4 stages instead of {len(gpu.features)}" in lines
    # the candidate at the chosen target is the capped lowres plan; nnU-Net's own goes further
    assert plan == cpu_candidate(
        fingerprint, gpu_memory_gb=choice.memory_gb, base_features=choice.base_features
    )
    uncapped = plan_3d_lowres(
        fingerprint, gpu_memory_gb=choice.memory_gb, base_features=choice.base_features
    )
    assert uncapped is not None and max(uncapped.spacing) > max(plan.spacing)
    assert "CPU cap" in plan.reasons["spacing"]
    small = _lung_like()  # its 8 GB plan holds the median image: no 3d_lowres
    assert cpu_candidate(small, gpu_memory_gb=8.0, base_features=32) == plan_3d_fullres(
        small, gpu_memory_gb=8.0
    )


def test_the_cpu_cap_stops_each_axis_at_its_own_limit() -> None:
    """The capped 3d_lowres search: no axis grows over its cap; an axis at its cap stays while
    the others go on, so on the H&N-like CTs (the row and column axes grow first, as nnU-Net's
    rule, and reach the cap first) every axis ends within one step of its cap, where a search
    stopped by the first capped axis left the slice axis at 1.5x (3.78 x 1.93 x 1.93 mm at a
    2x cap). Uncapped, the search is nnU-Net's (tests/test_planning_rules.py)."""
    from medseg.planning.rules import LOWRES_SPACING_INCREASE, plan_3d_fullres, plan_3d_lowres

    fingerprint = _hn_like()
    fullres = np.array(plan_3d_fullres(fingerprint, gpu_memory_gb=8.0).spacing)
    for cap in (1.5, 2.0):
        for gb in (0.0625, 0.25, 1.0):
            plan = plan_3d_lowres(
                fingerprint, gpu_memory_gb=gb, base_features=32, max_coarsening=cap
            )
            assert plan is not None
            coarsening = np.array(plan.spacing) / fullres
            assert np.all(coarsening <= cap + 1e-9), (cap, gb, coarsening)
            assert np.all(coarsening > cap / LOWRES_SPACING_INCREASE), (cap, gb, coarsening)
            assert f"over {cap:g}× its 3d_fullres spacing" in plan.reasons["spacing"]
        uncapped = plan_3d_lowres(fingerprint, gpu_memory_gb=1.0, base_features=32)
        assert uncapped is not None and np.all(np.array(uncapped.spacing) / fullres > cap)
    # a cap the search cannot shrink the median image 2x under: no 3d_lowres (nnU-Net's rule)
    assert plan_3d_lowres(fingerprint, gpu_memory_gb=0.25, max_coarsening=1.1) is None
    with pytest.raises(ConfigError, match="max_coarsening"):
        plan_3d_lowres(fingerprint, max_coarsening=1.0)


def test_a_short_cpu_budget_trains_with_the_short_schedule_recipe() -> None:
    """A CPU plan that affords fewer than SHORT_SCHEDULE_STEPS steps trains with AdamW, a
    time-paced cosine schedule, foreground-heavy patches, nnU-Net's intensity augmentation but
    no mirroring or spatial augmentation, and says why; a GPU plan, or a CPU budget long enough
    for nnU-Net's schedule, keeps nnU-Net's recipe."""
    import dataclasses

    from medseg.config import TrainConfig
    from medseg.planning.experiment import (
        BUDGET_FILL_FACTOR,
        SHORT_SCHEDULE,
        SHORT_SCHEDULE_INTENSITY,
        SHORT_SCHEDULE_STEPS,
        experiment_from_plan,
    )
    from medseg.planning.rules import plan_3d_fullres

    # an organ (not a target, no side): the organ-only short schedule
    fingerprint = dataclasses.replace(_lung_like(), labels={1: "Esophagus"})
    plan = plan_3d_fullres(fingerprint, gpu_memory_gb=8.0, base_features=8)
    data = {"datalist": "unused.json"}

    def planned(device: str, epochs: int, limit: float | None):  # type: ignore[no-untyped-def]
        return experiment_from_plan(
            plan, fingerprint, data=data, device=device, epochs=epochs,
            iterations_per_epoch=50, time_limit_min=limit,
        )  # fmt: skip

    short = planned("cpu", 30, 30.0)
    train = short.config.train
    # the time limit ends a short schedule, not the epochs the step timing predicted
    assert train.epochs == 30 * BUDGET_FILL_FACTOR and train.val_every == 3
    assert "the time limit ends training" in short.reasons["train.epochs"]
    assert (train.optimizer, train.learning_rate, train.lr_schedule) == ("adamw", 3e-3, "cosine")
    assert train.lr_schedule_by == "time" and train.time_limit_min == 30.0
    assert train.foreground_fraction == 0.9 and train.augment_flip_axes == ()
    assert train.augment_rotation_probability == train.augment_scaling_probability == 0.0
    assert train.augment_noise_probability == train.augment_low_resolution_probability == 0.0
    # nnU-Net's intensity transforms at nnU-Net's own probabilities
    nnunet = TrainConfig.nnunet_defaults(tuple(train.patch_size))
    assert not set(SHORT_SCHEDULE_INTENSITY) & set(SHORT_SCHEDULE)
    assert all(getattr(train, key) == nnunet[key] for key in SHORT_SCHEDULE_INTENSITY)
    assert train.augment_brightness_probability == train.augment_contrast_probability == 0.15
    assert (train.augment_gamma_probability, train.augment_inverted_gamma_probability) == (
        0.3,
        0.1,
    )
    assert "intensity augmentation" in short.reasons["train.augment_brightness_probability"]
    assert "no mirroring or spatial" in short.reasons["train.augment_flip_axes"]
    assert (
        f"1500 steps in the CPU budget, under {SHORT_SCHEDULE_STEPS}"
        in (short.reasons["train.optimizer"])
    )
    assert all(getattr(train, key) == pytest.approx(value) or list(getattr(train, key)) == value
               for key, value in SHORT_SCHEDULE.items())  # fmt: skip
    for long in (planned("cpu", SHORT_SCHEDULE_STEPS // 50, 600.0), planned("cuda", 1000, None)):
        train = long.config.train
        assert (train.optimizer, train.learning_rate, train.lr_schedule) == ("sgd", 1e-2, "poly")
        assert train.lr_schedule_by == "epochs" and train.augment_flip_axes == (0, 1, 2)
        assert train.epochs in (SHORT_SCHEDULE_STEPS // 50, 1000)  # as planned
        assert "nnU-Net" in long.reasons["train.optimizer"]


def test_a_short_schedule_with_a_target_keeps_nnunets_sampling_and_augmentation() -> None:
    """A GTV, CTV or PTV among the structures: the short schedule's optimiser and intensity
    augmentation as for organs, but nnU-Net's third of patches on a structure, mirroring,
    rotation, scaling, noise, blur and low resolution, with the reason naming the targets."""
    import dataclasses

    from medseg.config import TrainConfig
    from medseg.planning.experiment import (
        SHORT_SCHEDULE,
        SHORT_SCHEDULE_TARGET_KEEPS,
        experiment_from_plan,
    )
    from medseg.planning.rules import plan_3d_fullres

    data = {"datalist": "unused.json"}
    organ = dataclasses.replace(_lung_like(), labels={1: "Esophagus"})
    plan = plan_3d_fullres(organ, gpu_memory_gb=8.0, base_features=8)
    assert set(SHORT_SCHEDULE_TARGET_KEEPS) < set(SHORT_SCHEDULE)

    def short(labels: dict[int, str]):  # type: ignore[no-untyped-def]
        fingerprint = dataclasses.replace(organ, labels=labels)
        return experiment_from_plan(
            plan, fingerprint, data=data, device="cpu", epochs=30,
            iterations_per_epoch=50, time_limit_min=30.0,
        )  # fmt: skip

    nnunet = TrainConfig.nnunet_defaults(tuple(plan.patch_size))
    for labels in ({1: "GTV"}, {1: "CTV_High", 2: "Esophagus"}, {1: "PTV_60"}, {1: "Tumour"}):
        planned = short(labels)
        train = planned.config.train
        assert (train.optimizer, train.lr_schedule_by) == ("adamw", "time"), labels
        for key in SHORT_SCHEDULE_TARGET_KEEPS:
            assert getattr(train, key) == pytest.approx(nnunet[key]), (labels, key)
        assert train.foreground_fraction == 0.33 and train.augment_flip_axes == (0, 1, 2)
        assert train.augment_rotation_probability == train.augment_scaling_probability == 0.2
        target = next(n for n in labels.values() if n != "Esophagus")
        assert f"{target} is a target" in planned.reasons["train.augment_flip_axes"]
        assert "nnU-Net's 1/3" in planned.reasons["train.foreground_fraction"]
    organs = short({1: "Esophagus", 2: "SpinalCord"}).config.train
    assert organs.foreground_fraction == 0.9 and organs.augment_flip_axes == ()
    assert organs.augment_rotation_probability == 0.0
    # a target beside lateral organs: spatial augmentation, but no mirroring
    sided = short({1: "GTVp", 2: "Parotid_L"})
    assert sided.config.train.augment_flip_axes == ()
    assert sided.config.train.augment_rotation_probability == 0.2
    assert "Parotid_L name one side" in sided.reasons["train.augment_flip_axes"]


def test_a_plan_with_lateral_structures_does_not_mirror() -> None:
    """Structures that name a side (Parotid_L, lens_right): the plan neither mirrors training
    patches nor runs mirror TTA, on a GPU too, and says why; a plan without them mirrors every
    axis as nnU-Net."""
    import dataclasses

    from medseg.planning.experiment import experiment_from_plan
    from medseg.planning.rules import plan_3d_fullres

    fingerprint = _lung_like()
    plan = plan_3d_fullres(fingerprint, gpu_memory_gb=8.0)
    data = {"datalist": "unused.json"}
    plain = experiment_from_plan(plan, fingerprint, data=data, device="cuda")
    assert plain.config.train.augment_flip_axes == (0, 1, 2)
    assert plain.config.infer.flip_tta == (0, 1, 2)
    sided = dataclasses.replace(fingerprint, labels={1: "GTV", 2: "Parotid_L", 3: "lens_right"})
    lateral = experiment_from_plan(plan, sided, data=data, device="cuda")
    assert lateral.config.train.augment_flip_axes == ()
    assert lateral.config.infer.flip_tta == ()
    assert "Parotid_L, lens_right name one side" in lateral.reasons["train.augment_flip_axes"]
    assert "swaps left and right" in lateral.reasons["infer.flip_tta"]
    # the other augmentations stay nnU-Net's
    assert lateral.config.train.augment_rotation_probability == (
        plain.config.train.augment_rotation_probability
    )


def _isotropic_like():  # type: ignore[no-untyped-def]
    from medseg.planning.fingerprint import CaseFingerprint, Fingerprint, IntensityStats

    cases = tuple(
        CaseFingerprint(f"case_{i:03d}", (1.5, 1.0, 1.0), s, s, {1: 1}, {1: 1.0})
        for i, s in enumerate([(80, 120, 120), (90, 110, 130)])
    )
    stats = IntensityStats(-100.0, -50.0, 240.0, -1000.0, 400.0, -846.0, 149.0)
    return Fingerprint("CT", {1: "organ"}, cases, stats, 1.0)


def test_a_cpu_budget_plan_trains_a_residual_unet_unless_it_is_anisotropic(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A CPU-budget plan whose kernels are all 3 x 3 x 3 trains MONAI's UNet with residual
    units at the plan's widths and per-axis strides (and its step is timed on that network),
    and so does one with nnU-Net's kernel 1 along an axis over 2x the finest as long as the
    spacing is not anisotropic (at most 3x); a GPU plan, and an anisotropic plan (the lung CTs'
    3 mm slices over 3x their 0.98 mm pixels) with kernel 1, keep the DynUNet."""
    import medseg.training.train as train_module
    from medseg.model import build_network
    from medseg.planning.budget import measure_step
    from medseg.planning.experiment import experiment_from_plan
    from medseg.planning.rules import plan_3d_fullres, plan_3d_lowres

    data = {"datalist": "unused.json"}
    fingerprint = _isotropic_like()
    plan = plan_3d_fullres(fingerprint, gpu_memory_gb=8.0, base_features=8)
    assert all(tuple(k) == (3, 3, 3) for k in plan.kernel_sizes)

    def planned(fp, p, device, limit):  # type: ignore[no-untyped-def]
        return experiment_from_plan(
            p, fp, data=data, device=device, epochs=30, iterations_per_epoch=50,
            time_limit_min=limit,
        )  # fmt: skip

    cpu = planned(fingerprint, plan, "cpu", 30.0)
    model = cpu.config.model
    assert (model.name, model.num_res_units, model.deep_supervision) == ("unet", 1, False)
    assert model.kernel_sizes is None and list(model.channels) == list(plan.features)
    assert [tuple(s) for s in model.strides] == [tuple(s) for s in plan.strides[1:]]
    assert "CPU budget" in cpu.reasons["model.name"]
    patch = tuple(cpu.config.train.patch_size)
    with torch.no_grad():
        out = build_network(model).eval()(torch.zeros(1, 1, *patch))
    assert tuple(out.shape) == (1, 2, *patch)

    gpu = planned(fingerprint, plan, "cuda", None).config.model
    assert (gpu.name, gpu.deep_supervision) == ("dynunet", True)
    lung = _lung_like()
    coarse = plan_3d_fullres(lung, gpu_memory_gb=8.0, base_features=8)
    assert any(tuple(k) != (3, 3, 3) for k in coarse.kernel_sizes)
    assert max(coarse.spacing) / min(coarse.spacing) > 3
    assert planned(lung, coarse, "cpu", 30.0).config.model.name == "dynunet"
    hn = _hn_like()
    kernel_1 = plan_3d_lowres(hn, gpu_memory_gb=0.25, max_coarsening=1.5)
    assert kernel_1 is not None and tuple(kernel_1.kernel_sizes[0]) == (1, 3, 3)
    assert tuple(kernel_1.strides[1]) == (1, 2, 2)
    assert 2 < max(kernel_1.spacing) / min(kernel_1.spacing) <= 3
    hn_planned = planned(hn, kernel_1, "cpu", 30.0)
    hn_model = hn_planned.config.model
    assert (hn_model.name, hn_model.kernel_sizes) == ("unet", None)
    assert "no axis needs nnU-Net's kernel 1" in hn_planned.reasons["model.kernel_sizes"]
    assert "as the plan's kernels" in cpu.reasons["model.kernel_sizes"]
    assert [tuple(s) for s in hn_model.strides] == [tuple(s) for s in kernel_1.strides[1:]]
    hn_patch = tuple(kernel_1.patch_size)
    with torch.no_grad():
        out = build_network(hn_model).eval()(torch.zeros(1, 1, *hn_patch))
    assert tuple(out.shape) == (1, 22, *hn_patch)

    timed: list[tuple[str, str]] = []
    monkeypatch.setattr(
        train_module,
        "time_training_step",
        lambda config, *a, **k: timed.append((config.name, k["precision"])) or 0.1,
    )
    measure_step(plan, 1, 2)
    measure_step(coarse, 1, 2)
    # timed in the precision the plan trains in (bfloat16 where this CPU has it natively)
    assert cpu.config.train.precision == "auto"
    assert timed == [("unet", "auto"), ("dynunet", "auto")]


def test_measure_step_times_a_real_training_step(tmp_path: Path) -> None:
    from medseg.planning.budget import measure_step
    from medseg.planning.rules import plan_3d_fullres

    plan = plan_3d_fullres(_toy_fingerprint(tmp_path), gpu_memory_gb=8.0, base_features=4)
    seconds = measure_step(plan, 1, 2, max_steps=3)
    assert 0.0 < seconds < 30.0


def test_training_from_a_plan_logs_the_plan_and_fingerprint_to_mlflow(tmp_path: Path) -> None:
    """`medseg train PLAN.yaml` (here shortened to one epoch on the CPU) logs the plan's YAML,
    comments and all, and fingerprint.json as ``plan/`` artifacts, and tags the run."""
    import re

    import mlflow

    data = _nnunet_raw(tmp_path / "Dataset001_toy")
    out = tmp_path / "plan" / "plan.yaml"
    assert _plan_cli(str(data), "--out", str(out), "--device", "cuda")[0] == 0
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    text = out.read_text()
    for key, value in {
        "epochs": "1",
        "samples_per_case": "1",
        "device": "cpu",
        "tracking_uri": store,
        "flip_tta": "[]",
    }.items():
        text = re.sub(rf"(?m)^(  {key}): [^#\n]*", rf"\1: {value}  ", text, count=1)
    short = out.parent / "short.yaml"
    short.write_text(text)
    from typer.testing import CliRunner

    from medseg.cli import app

    result = CliRunner().invoke(app, ["train", str(short), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    client = mlflow.MlflowClient(store)
    (run,) = client.search_runs(
        [client.get_experiment_by_name("medseg-plan-Dataset001_toy").experiment_id]
    )
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plan")}
    assert artifacts == {"plan/short.yaml", "plan/fingerprint.json"}
    assert run.data.tags["planned_by"].startswith("medseg plan ")
    assert run.data.params["preprocess.intensity"] == "clip_zscore"
    logged = client.download_artifacts(run.info.run_id, "plan/short.yaml", str(tmp_path))
    assert Path(logged).read_text() == text
