"""A :class:`~medseg.planning.rules.Plan` as a complete experiment config, written as YAML whose
comments say why each value was chosen (``medseg plan``).

The plan decides the grid, the intensities, the network, the patch and the batch
(:mod:`medseg.planning.rules`); this module adds nnU-Net v2's training and inference defaults
(``nnUNetTrainer``: Dice without background + cross-entropy, SGD 1e-2 with Nesterov momentum
0.99 and a poly schedule, gradient clipping at 12, foreground oversampling 0.33, its
augmentation set, Gaussian-weighted windows at overlap 0.5 and mirror TTA) and, on a CPU, the
epochs that fit the time budget (:mod:`medseg.planning.budget`) and, when those are too few
steps for nnU-Net's recipe, a short-schedule recipe (:data:`SHORT_SCHEDULE`); a CPU budget
also trains a network that learns in its few thousand steps (:func:`cpu_network`). The YAML
it writes parses with :func:`medseg.config.parse_config` into the same
:class:`~medseg.config.ExperimentConfig`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from medseg.config import ExperimentConfig, TrainConfig
from medseg.nomenclature import laterality
from medseg.planning.fingerprint import Fingerprint
from medseg.planning.rules import ANISOTROPY_THRESHOLD, Plan
from medseg.structures import type_for_name

__all__ = [
    "PLAN_TRAIN_PRECISION",
    "PlannedExperiment",
    "cpu_network",
    "experiment_from_plan",
    "render_yaml",
]

#: nnU-Net v2's iterations per epoch (``nnUNetTrainer.num_iterations_per_epoch``) and epochs.
NNUNET_ITERATIONS_PER_EPOCH = 250
NNUNET_EPOCHS = 1000
#: Below this many planned optimiser steps a CPU plan trains with :data:`SHORT_SCHEDULE`
#: instead of nnU-Net's recipe. nnU-Net's SGD (lr 1e-2, Nesterov 0.99, poly) with deep
#: supervision and its full augmentation is tuned for 250,000 steps: on the 21-organ H&N
#: phantoms a 30-minute CPU plan trained 1,534 steps with it and still predicted background
#: everywhere (benchmarks/plan_vs_hand.py, mean Dice 0.000), while Adam at 3e-3 with
#: foreground-heavy class-balanced patches and no augmentation reached a mean Dice of 0.34 in
#: 2,400 steps (benchmarks/train_hn_oar.py). Spatial augmentation and mirroring regularise a
#: long schedule; in a few thousand steps the network has not yet fitted the unaugmented data
#: (organs; a plan with a target keeps them: :data:`SHORT_SCHEDULE_TARGET_KEEPS`).
#: nnU-Net's intensity augmentation (:data:`SHORT_SCHEDULE_INTENSITY`) is kept: it costs no
#: fitting speed, and without it the small organs overfit the five training scans' HU (in
#: 2,400 steps lenses 0.27/0.35, after 10,751 steps 0.14/0.32).
SHORT_SCHEDULE_STEPS = 20_000
#: A time-paced short schedule plans this many times the epochs the step timing predicts, so
#: that the time limit, not the epoch count, ends training: the planner times the network's
#: step on random patches, and on the 21-organ H&N phantoms training then ran 1,750 planned
#: steps in 61 % of its 30 minutes (the real steps were faster than the probe's). The cosine
#: follows the clock (``lr_schedule_by: time``), so it still ends at its low rates.
BUDGET_FILL_FACTOR = 3
#: The keys of ``TrainConfig.nnunet_defaults`` that :data:`SHORT_SCHEDULE` leaves as nnU-Net
#: sets them: nnU-Net's brightness, contrast and gamma transforms at nnU-Net's probabilities.
#: On the 21-organ H&N phantoms (5 training scans whose organs' HU differ by a per-scan shift)
#: a 30-minute CPU plan reached a mean Dice of 0.591 with them and 0.578 without
#: (benchmarks/plan_vs_hand.py; lenses 0.28/0.29 instead of 0.14/0.32, orbits, optic nerves
#: and submandibular glands up too).
SHORT_SCHEDULE_INTENSITY: tuple[str, ...] = (
    "augment_brightness_probability",
    "augment_contrast_probability",
    "augment_gamma_probability",
    "augment_inverted_gamma_probability",
)
#: The short-schedule training recipe of a CPU plan (see :data:`SHORT_SCHEDULE_STEPS`); the
#: schedule is paced by the time budget (``lr_schedule_by: time``), so it reaches its low
#: learning rates however fast the steps turn out to be.
SHORT_SCHEDULE: Mapping[str, Any] = {
    "optimizer": "adamw",
    "learning_rate": 3e-3,
    "weight_decay": 3e-5,
    "lr_schedule": "cosine",
    "lr_schedule_by": "time",
    "warmup_epochs": 1,
    "grad_clip_norm": 12.0,
    "foreground_fraction": 0.9,
    "foreground_sampling": "class_balanced",
    "augment_flip_axes": [],
    "augment_rotation_probability": 0.0,
    "augment_scaling_probability": 0.0,
    "augment_noise_probability": 0.0,
    "augment_blur_probability": 0.0,
    "augment_low_resolution_probability": 0.0,
}

#: The keys of :data:`SHORT_SCHEDULE` that a plan with a target structure (GTV, CTV or PTV by
#: its ``type``) leaves as nnU-Net sets them: a third of the patches on a structure, mirroring,
#: rotation, scaling, noise, blur and simulated low resolution. A tumour lies, turns and grows
#: differently in every patient, where an organ at risk keeps its place, so a target model
#: needs the invariances that the organ-only short schedule trades for fitting speed. On
#: lung-gtv-ct (leave one patient out, 3 folds, 8 minutes each, one run of
#: benchmarks/plan_vs_hand.py), the short schedule without them memorised the two training
#: patients' GTVs (training loss 0.07-0.11) and reached a mean Dice of 0.001 (research.yaml
#: 0.070); with them it reached 0.089 (training loss 0.38-0.65), and 0.056 against
#: research.yaml's 0.043 when both trained side by side in one later run.
SHORT_SCHEDULE_TARGET_KEEPS: tuple[str, ...] = (
    "foreground_fraction",
    "augment_flip_axes",
    "augment_rotation_probability",
    "augment_scaling_probability",
    "augment_noise_probability",
    "augment_blur_probability",
    "augment_low_resolution_probability",
)


#: ``train.precision`` of every plan: bfloat16 mixed precision on CUDA and on a CPU that
#: computes bfloat16 natively (AVX512-BF16 or AMX), else float32 (``medseg.training.train``).
#: On such a CPU a step of the H&N plan's UNet took 90 ms instead of 153 ms (2 threads), so a
#: time budget trains 1.7x the steps.
PLAN_TRAIN_PRECISION = "auto"


#: Residual units per level of a CPU plan's network (:func:`cpu_network`).
CPU_RESIDUAL_UNITS = 1


def _has_kernel_one(plan: Plan) -> bool:
    """Whether nnU-Net gives some stage of ``plan`` a kernel of 1 along an axis."""
    return any(tuple(k) != (3, 3, 3) for k in plan.kernel_sizes)


def cpu_network(plan: Plan) -> dict[str, Any] | None:
    """The ``model`` section (without labels) a CPU-budget plan trains, or ``None`` where it
    keeps nnU-Net's DynUNet.

    A CPU budget affords a few thousand steps of a narrow network (base width 8 or 16, where
    nnU-Net's is 32). There MONAI's ``UNet`` with one residual unit per level (strided
    convolutions down, PReLU) at the plan's widths and per-axis strides learns far faster
    than nnU-Net's plain DynUNet. Measured on the 21-organ H&N phantoms
    (``benchmarks/plan_vs_hand.py`` data; 2,400 steps of the same 8.5-minute plan: spacing
    3.8 x 1.9 x 1.9 mm, patch 24 x 48 x 48, features 8-64, AdamW cosine, class-balanced
    patches, 1 thread each), mean Dice over the 21 organs on the two held-out scans: DynUNet
    0.072 without and 0.106 with deep supervision, 0.111 with residual blocks, 0.131 with a
    [-500, 500] HU window, 0.135 with background in the Dice, 0.148 with Adam at a constant
    rate (no warm-up, no clipping); UNet 0.404 (17 of 21 organs found, against 3-4), at 0.7x
    DynUNet's time per step (seeds 1 and 2: 0.403 and 0.398). Tried on that UNet (2,400 steps
    each): lr 1e-2 0.382 (worse), per-sample Dice 0.403 and 2.9 x 1.47 x 1.47 mm 0.404 (within
    the seeds' spread), features 16-128 0.421 at 1.16x the time per step, but in the 30-minute
    budget 0.566 against 0.564 at 8-64; none is planned.

    ``UNet`` has one kernel size for every level: where nnU-Net gives a stage kernel 1 along
    a coarse axis (spacing over 2x the finest), the UNet convolves it with 3, as long as the
    plan's spacing is not anisotropic by nnU-Net's own definition (coarsest over
    :data:`~medseg.planning.rules.ANISOTROPY_THRESHOLD` x the finest); an anisotropic plan
    keeps the DynUNet and its kernels. Measured on the H&N phantoms at 3.67 x 1.44 x 1.44 mm
    (a ratio of 2.55, nnU-Net's strides (1,2,2), (2,2,2), (2,2,2); 30 minutes): the UNet with
    3 x 3 x 3 kernels reached a mean Dice of 0.607 in 8,032 steps, where the DynUNet with
    nnU-Net's (1,3,3) first stage took 0.53 s per step.
    """
    ratio = max(plan.spacing) / min(plan.spacing)
    if ratio > ANISOTROPY_THRESHOLD and _has_kernel_one(plan):
        return None
    return {
        "name": "unet",
        "channels": list(plan.features),
        "strides": [list(s) for s in plan.strides[1:]],
        "kernel_sizes": None,
        "num_res_units": CPU_RESIDUAL_UNITS,
        "deep_supervision": False,
    }


@dataclass(frozen=True, slots=True)
class PlannedExperiment:
    """An experiment config with the reasons for its values.

    Attributes:
        config: the experiment (validated).
        reasons: ``"section.key"`` -> one line saying why; written as YAML comments.
        header: lines written at the top of the YAML (what was planned from what).
    """

    config: ExperimentConfig
    reasons: Mapping[str, str] = field(default_factory=dict)
    header: tuple[str, ...] = ()


def experiment_from_plan(
    plan: Plan,
    fingerprint: Fingerprint,
    *,
    data: Mapping[str, Any],
    device: str,
    epochs: int | None = None,
    iterations_per_epoch: int = NNUNET_ITERATIONS_PER_EPOCH,
    num_threads: int = 2,
    experiment_name: str = "medseg-plan",
    extra_reasons: Mapping[str, str] | None = None,
    header: tuple[str, ...] = (),
    plan_section: Mapping[str, Any] | None = None,
    time_limit_min: float | None = None,
) -> PlannedExperiment:
    """The experiment config that trains and applies ``plan`` as nnU-Net would.

    Args:
        plan: the planned grid, intensities, network, patch and batch.
        fingerprint: the dataset it was planned from (labels, case count, modality).
        data: the ``data`` section (a datalist or a DICOM root with label patterns).
        device: ``"cpu"`` or ``"cuda"``.
        epochs: training epochs (default nnU-Net's 1000).
        iterations_per_epoch: optimiser steps per epoch (default nnU-Net's 250), whose
            ``plan.batch_size`` patches are spread over the cases as ``samples_per_case``.
        num_threads: torch threads for training.
        experiment_name: the MLflow experiment.
        extra_reasons: more ``"section.key"`` reasons (the CPU budget's), overriding these.
        header: lines for the top of the YAML.
        plan_section: the config's ``plan`` section (provenance), if any.
        time_limit_min: ``train.time_limit_min`` (a CPU plan's budget).

    Raises:
        ConfigError: if the result is not a valid experiment (a planner bug, or labels that
            medseg cannot represent).
    """
    from medseg.config import parse_config

    n_cases = max(1, len(fingerprint.cases))
    n_stages = len(plan.features)
    if n_stages < 3:
        from medseg.errors import InputError

        raise InputError(
            f"the planned network has {n_stages} stages (patch {tuple(plan.patch_size)}): the "
            "images are too small for the 3 levels medseg's DynUNet needs"
        )
    samples_per_case = max(1, math.ceil(iterations_per_epoch * plan.batch_size / n_cases))
    if epochs is None:
        epochs = NNUNET_EPOCHS
    ct = plan.normalisation == "clip_zscore"
    reasons: dict[str, str] = {}

    # ---- preprocess
    if ct:
        assert plan.clip_lower is not None and plan.clip_upper is not None
        assert plan.mean is not None and plan.std is not None
        lower, upper = float(plan.clip_lower), float(plan.clip_upper)
        preprocess: dict[str, Any] = {
            "lower_hu": lower,
            "upper_hu": upper,
            "intensity": "clip_zscore",
            "intensity_mean": float(plan.mean),
            "intensity_std": float(plan.std),
        }
        reasons["preprocess.lower_hu"] = "foreground p0.5 of the dataset (nnU-Net CTNormalization)"
        reasons["preprocess.upper_hu"] = "foreground p99.5 of the dataset"
        reasons["preprocess.intensity_mean"] = "foreground mean (voxels inside the labels)"
        reasons["preprocess.intensity_std"] = "foreground standard deviation"
    else:
        # Per-image z-score uses no window; lower_hu stays what medseg treats as air (outside
        # the body): the background of an MR is 0.
        fg = fingerprint.foreground
        lower = 0.0 if fg.min > 0 else math.floor(fg.min) - 1.0
        upper = max(lower + 1.0, math.ceil(fg.max) + 1.0)
        preprocess = {"lower_hu": lower, "upper_hu": upper, "intensity": "image_zscore"}
        reasons["preprocess.lower_hu"] = (
            "not a window (per-image z-score): voxels at or below it count as outside the body"
        )
        reasons["preprocess.upper_hu"] = "above the foreground maximum: nothing is clipped"
    reasons["preprocess.intensity"] = plan.reasons.get(
        "normalisation", "CT: clip + dataset z-score; other modalities: per-image z-score"
    )
    preprocess["spacing_mm"] = [float(s) for s in plan.spacing]
    reasons["preprocess.spacing_mm"] = plan.reasons.get("spacing", "median spacing")
    preprocess["crop_foreground"] = True
    reasons["preprocess.crop_foreground"] = (
        "training crops to the body, as nnU-Net crops to non-zero"
    )
    preprocess["resample_separate_z"] = plan.anisotropic_axis is not None
    reasons["preprocess.resample_separate_z"] = (
        f"axis {plan.anisotropic_axis} is over 3x coarser than the others: resampled along it "
        "by nearest neighbour, as nnU-Net"
        if plan.anisotropic_axis is not None
        else "spacing within 3x on every axis: one 3-D resampling"
    )

    # ---- model
    deep_levels = n_stages - 2
    model: dict[str, Any] = {
        "name": "dynunet",
        "channels": list(plan.features),
        "strides": [list(s) for s in plan.strides[1:]],
        "kernel_sizes": [list(k) for k in plan.kernel_sizes],
        "num_res_units": 0,
        "labels": {value: name for value, name in sorted(fingerprint.labels.items())},
        "deep_supervision": deep_levels >= 1,
    }
    if deep_levels >= 1:
        model["deep_supervision_levels"] = deep_levels
    reasons["model.name"] = "nnU-Net's plain convolutional U-Net (MONAI DynUNet)"
    reasons["model.channels"] = "32 * 2^k features per stage, at most 320 (nnU-Net)"
    reasons["model.strides"] = plan.reasons.get("topology", "nnU-Net's pooling rules")
    reasons["model.kernel_sizes"] = (
        "kernel 1 along an axis while it is over 2x coarser than the finest (nnU-Net)"
    )
    reasons["model.num_res_units"] = "plain convolutions, two per stage"
    reasons["model.deep_supervision"] = (
        f"loss on the {deep_levels} decoder outputs above the lowest too (nnU-Net)"
        if deep_levels >= 1
        else "too few stages for deep supervision"
    )
    cpu_model = cpu_network(plan) if device == "cpu" and time_limit_min is not None else None
    if cpu_model is not None:
        model.pop("deep_supervision_levels", None)
        model.update(cpu_model)
        why = "CPU budget: medseg.planning.experiment.cpu_network"
        reasons["model.name"] = (
            "MONAI UNet, residual units: in a CPU budget's few thousand steps a narrow UNet "
            f"learns far faster than nnU-Net's plain DynUNet ({why})"
        )
        reasons["model.num_res_units"] = f"one residual unit per level ({why})"
        reasons["model.kernel_sizes"] = (
            "3 x 3 x 3 at every level (UNet has one kernel size; the spacing is within "
            f"{ANISOTROPY_THRESHOLD}x on every axis, so no axis needs nnU-Net's kernel 1)"
            if _has_kernel_one(plan)
            else "3 x 3 x 3 at every level, as the plan's kernels"
        )
        reasons["model.deep_supervision"] = f"off: UNet has one output ({why})"

    # ---- train
    patch = tuple(int(p) for p in plan.patch_size)
    batch_dice = math.prod(patch) < 0.25 * math.prod(plan.median_shape)
    train: dict[str, Any] = {
        "epochs": int(epochs),
        "patch_size": list(patch),
        "batch_size": int(plan.batch_size),
        "samples_per_case": int(samples_per_case),
        **json.loads(json.dumps(TrainConfig.nnunet_defaults((patch[0], patch[1], patch[2])))),
        "loss_batch_dice": batch_dice,
        "precision": PLAN_TRAIN_PRECISION,
        "device": device,
        "num_threads": int(num_threads),
        "val_every": max(1, min(50, epochs // 10 or 1)),
        "hd95": False,
        "time_limit_min": time_limit_min,
    }
    anisotropic_patch = bool(train["augment_in_plane"])
    planned_steps = int(epochs) * int(iterations_per_epoch)
    short = device == "cpu" and planned_steps < SHORT_SCHEDULE_STEPS and time_limit_min is not None
    reasons["train.epochs"] = f"nnU-Net trains {NNUNET_EPOCHS} epochs"
    extra = dict(extra_reasons or {})
    targets = sorted(n for n in fingerprint.labels.values() if _is_target(n))
    if short:
        train.update(
            {
                k: v
                for k, v in SHORT_SCHEDULE.items()
                if not (targets and k in SHORT_SCHEDULE_TARGET_KEEPS)
            }
        )
        train["epochs"] = int(epochs) * BUDGET_FILL_FACTOR
        predicted = extra.pop("train.epochs", f"{epochs} epochs")
        reasons["train.epochs"] = (
            f"at most {BUDGET_FILL_FACTOR}x the epochs predicted ({predicted}): the time limit "
            "ends training, whatever the real step time"
        )
    if time_limit_min is not None:
        reasons["train.time_limit_min"] = "the CPU budget: training stops when it is spent"
    reasons["train.patch_size"] = plan.reasons.get("patch_size", "from the memory target")
    reasons["train.batch_size"] = plan.reasons.get(
        "batch_size", "at least 2, at most 5 % of voxels"
    )
    reasons["train.samples_per_case"] = (
        f"{iterations_per_epoch} iterations of {plan.batch_size} patches per epoch over "
        f"{n_cases} case(s)"
        + (", as nnU-Net" if iterations_per_epoch == NNUNET_ITERATIONS_PER_EPOCH else "")
    )
    reasons["train.foreground_fraction"] = "nnU-Net oversamples foreground in 1/3 of patches"
    reasons["train.precision"] = (
        "bfloat16 mixed precision where this machine computes it natively (CUDA; a CPU with "
        "AVX512-BF16 or AMX), else float32"
    )
    reasons["train.loss_include_background"] = "Dice over the structures only, CE over all"
    reasons["train.optimizer"] = "SGD, Nesterov momentum 0.99, lr 1e-2, poly 0.9 (nnU-Net)"
    reasons["train.loss_batch_dice"] = (
        "Dice over the whole batch: nnU-Net's choice when the patch holds under 25 % of the "
        "median image (it then also plans 3d_lowres)"
        if batch_dice
        else "Dice per patch: nnU-Net's choice when the patch covers 25 % or more of the image"
    )
    reasons["train.augment_in_plane"] = (
        "patch is anisotropic (in-plane over 3x the slices): 2-D augmentation in each slice, "
        "rotation about the slice axis up to 180 degrees (nnU-Net's dummy 2-D augmentation)"
        if anisotropic_patch
        else "3-D augmentation, rotations up to 30 degrees about every axis"
    )
    reasons["train.augment_flip_axes"] = "nnU-Net's augmentation set (nnUNetTrainer)"
    if short:
        why = f"{planned_steps} steps in the CPU budget, under {SHORT_SCHEDULE_STEPS}"
        recipe = SHORT_SCHEDULE
        reasons["train.optimizer"] = (
            f"{recipe['optimizer']}, lr {recipe['learning_rate']:g}, {recipe['lr_schedule']} after "
            f"{recipe['warmup_epochs']} warm-up epoch(s): {why}; nnU-Net's SGD recipe needs "
            "~10^5 steps (medseg.planning.experiment.SHORT_SCHEDULE_STEPS)"
        )
        reasons["train.lr_schedule_by"] = (
            "the schedule follows the time budget, so it ends when the budget does"
        )
        if targets:
            kept = (
                f"{_names(targets)} {'is a target' if len(targets) == 1 else 'are targets'}"
                ", whose place, shape and size differ between patients: nnU-Net's "
                "sampling and augmentation stay in the short schedule "
                "(medseg.planning.experiment.SHORT_SCHEDULE_TARGET_KEEPS)"
            )
            reasons["train.foreground_fraction"] = (
                f"nnU-Net's 1/3 of patches on a structure: {kept}"
            )
            reasons["train.augment_flip_axes"] = (
                f"nnU-Net's mirroring and spatial augmentation: {kept}"
            )
        else:
            reasons["train.foreground_fraction"] = (
                f"{recipe['foreground_fraction']:.0%} of patches centred on a structure "
                f"({recipe['foreground_sampling']}): {why}"
            )
            reasons["train.augment_flip_axes"] = (
                f"no mirroring or spatial augmentation: {why}, too few for the network to fit "
                "even the spatially unaugmented data (the intensity augmentation stays)"
            )
            reasons["train.augment_in_plane"] = "no spatial augmentation (short schedule)"
        reasons["train.augment_brightness_probability"] = (
            "nnU-Net's intensity augmentation (brightness, contrast, gamma at nnU-Net's "
            "probabilities) is kept in the short schedule: it regularises without slowing the "
            "fit (medseg.planning.experiment.SHORT_SCHEDULE_INTENSITY)"
        )

    lateral = sorted(n for n in fingerprint.labels.values() if laterality(n) is not None)
    if lateral and train["augment_flip_axes"]:
        train["augment_flip_axes"] = []
        reasons["train.augment_flip_axes"] = (
            f"no mirroring: {_names(lateral)} name one side, and a mirrored patch would show a "
            "left structure under its right one's label (nnU-Net mirrors every axis; "
            "TotalSegmentator trains it without mirroring for this reason)"
        )

    # ---- infer
    infer: dict[str, Any] = {
        "roi_size": list(plan.patch_size),
        "overlap": 0.5,
        "blend": "gaussian",
        "sw_batch_size": 1 if device == "cpu" else 2,
        "flip_tta": [0, 1, 2] if device == "cuda" and not lateral else [],
    }
    if not ct:
        infer["body_threshold_hu"] = lower
        reasons["infer.body_threshold_hu"] = "the body is every voxel above lower_hu (MR)"
    reasons["infer.roi_size"] = "the training patch"
    reasons["infer.overlap"] = "nnU-Net's step size 0.5, Gaussian-weighted"
    reasons["infer.flip_tta"] = (
        f"no mirror TTA: {_names(lateral)} name one side (a mirrored image swaps left and right)"
        if lateral
        else "mirroring along every axis, as nnU-Net (8x the network time)"
        if device == "cuda"
        else "off on a CPU: mirroring costs 8x the network time; set [0, 1, 2] for nnU-Net's TTA"
    )

    document: dict[str, Any] = {
        "seed": 0,
        "data": dict(data),
        "preprocess": preprocess,
        "model": model,
        "train": train,
        "infer": infer,
        "tracking": {"experiment": experiment_name},
    }
    if plan_section is not None:
        document["plan"] = dict(plan_section)
    reasons.update(extra)
    text = yaml.safe_dump(document, sort_keys=False)
    config = parse_config(text, source="<planned experiment>")
    return PlannedExperiment(config=config, reasons=reasons, header=header)


def _is_target(name: str) -> bool:
    """Whether a label name is a GTV, CTV or PTV (the type medseg.structures gives it)."""
    decided = type_for_name(name)
    return decided is not None and decided.is_target


def _names(names: list[str], most: int = 3) -> str:
    """``"Lens_L, Lens_R, Parotid_L and 3 more"``."""
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def render_yaml(planned: PlannedExperiment) -> str:
    """The experiment as YAML: every key of every section (defaults included, so the file is
    complete), one per line, with its reason as a comment where there is one.

    Hand-written rather than ``yaml.safe_dump`` because PyYAML writes no comments; each value
    is dumped by PyYAML in flow style, so the text parses back to the same config (tested).
    """
    raw = yaml.safe_load(planned.config.to_yaml())
    lines = [f"# {line}" if line else "#" for line in planned.header]
    for section, value in raw.items():
        if not isinstance(value, dict):
            lines.append(_line(section, value, planned.reasons.get(section), indent=""))
            continue
        lines.append(f"{section}:")
        for key, item in value.items():
            lines.append(_line(key, item, planned.reasons.get(f"{section}.{key}"), indent="  "))
    return "\n".join(lines) + "\n"


def _line(key: str, value: Any, reason: str | None, *, indent: str) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    if text.endswith("\n..."):
        text = text.removesuffix("\n...").strip()
    text = text.removesuffix("...").strip()
    comment = f"  # {' '.join(reason.split())}" if reason else ""
    return f"{indent}{key}: {text}{comment}"
