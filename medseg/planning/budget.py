"""Scaling a plan to a CPU and a time budget (``medseg plan --device cpu --time-budget-min M``).

nnU-Net plans for a GPU: its 3d_fullres network on a lung CT (48 x 160 x 160 patches, 32-320
features) took 44 s per training step on 2 CPU cores, and it trains 250,000 steps. A CPU plan
keeps nnU-Net's rules (normalisation, pooling, kernel sizes, the memory estimate) and gives up
width, resolution and patch: the same rules are run for smaller base widths (32, 16, 8
features) and smaller memory targets, each at the spacing of nnU-Net's 3d_lowres search for
that target (capped at :data:`CPU_MAX_COARSENING` x the 3d_fullres spacing, so a small patch
still sees its organs' surroundings), one training step of a candidate is measured on this
machine (as nnU-Net instantiates networks to estimate their memory, medseg times them), and the
widest candidate that keeps enough of the GPU plan's field of view and affords
:data:`MIN_STEPS` steps in the budget is chosen. The epochs then fill the budget.

The cost of a step is predicted from nnU-Net's memory estimate (the feature-map voxels of the
network, which the convolutions' arithmetic follows) calibrated by one measurement, and the
chosen candidate is measured again; the prediction is only used to avoid timing every
candidate (a large one costs a minute per step).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

from medseg.planning.fingerprint import Fingerprint
from medseg.planning.rules import Plan, plan_3d_fullres, plan_3d_lowres

__all__ = [
    "CPU_MAX_COARSENING",
    "MIN_STEPS",
    "BudgetChoice",
    "cpu_candidate",
    "fit_cpu_budget",
    "measure_step",
]

_log = logging.getLogger(__name__)

#: Fewest optimiser steps a CPU plan must afford within its budget. nnU-Net's schedule is
#: 250,000 steps; in a CPU budget steps beat width. On the 21-organ H&N phantoms
#: (benchmarks/plan_vs_hand.py, 30 minutes on 2 cores) the search chose, at 1,500, features
#: 16-256 at 0.65-0.76 s per step (mean Dice 0.08, 3 of 21 organs learned); at 4,000,
#: features 8-64 with patch 32 x 64 x 56 (3,706 steps trained, mean Dice 0.253); at 8,000,
#: features 8-64 with patch 24 x 48 x 48 at the same 3.8 x 1.9 x 1.9 mm (7,671 steps, 0.270,
#: both lungs at 0.93 instead of 0.46/0.71); with the CPU plan's UNet
#: (:func:`medseg.planning.experiment.cpu_network`) the same plan steps in 0.14 s: 12,225 steps,
#: mean Dice 0.564 (20 of 21 organs found).
MIN_STEPS = 8000
#: Share of the budget left for validation, checkpoints and loading.
OVERHEAD_FRACTION = 0.15
#: Iterations per epoch of a CPU plan (nnU-Net: 250); smaller, so that a short budget still
#: has several epochs to validate and schedule the learning rate over.
CPU_ITERATIONS_PER_EPOCH = 50
#: A candidate must keep at least this share of the GPU plan's field of view (the patch's
#: extent in mm³) before a narrower network is tried: context matters more than width.
MIN_PATCH_SHARE = 0.25
#: A candidate's spacing: nnU-Net's 3d_lowres search at its memory target, with no axis grown
#: over this multiple of its 3d_fullres spacing (an axis at its cap stays, the others go on;
#: :func:`~medseg.planning.rules.plan_3d_lowres`). A small target then keeps its field of view
#: by coarser voxels instead of a smaller patch: the 30-minute H&N plan at 2.5 x 0.98 x 0.98 mm
#: saw 70 x 78 x 78 mm and learned 2 of 21 organs (mean Dice 0.05), where
#: ``benchmarks/train_hn_oar.py`` at 3 x 2 x 2 mm sees 96 mm and reaches 0.34. How far: on the
#: 21-organ H&N phantoms (30 minutes, 2 cores, the CPU plan's UNet 32-256 with a 28 x 48 x 48
#: patch), 3.78 x 1.93 x 1.93 mm (a 2x cap, the search stopped by the first capped axis)
#: reached a mean Dice of 0.591 and 0.596 (two seeds), 3.67 x 1.44 x 1.44 mm (1.5x on every
#: axis) 0.607 and 3.75 x 1.45 x 1.45 mm 0.606: the lenses (0.38-0.43 instead of 0.28-0.29)
#: and optic nerves (0.47-0.49) need the finer pixels more than the organs need the context.
#: The plan at this cap (``benchmarks/plan_vs_hand.py``: 3.67 x 1.44 x 1.44 mm, patch
#: 20 x 56 x 48, 9,433 steps) reached 0.608.
CPU_MAX_COARSENING = 1.5
#: Fewest stages of a candidate (MONAI's DynUNet needs 3 levels).
MIN_STAGES = 3
#: Base widths tried, widest first.
BASE_FEATURES = (32, 16, 8)
#: Memory targets tried: the GPU target halved this many times at most.
MAX_HALVINGS = 8

#: Measures one training step: (plan, labels, threads) -> seconds.
StepTimer = Callable[[Plan, int, int], float]


@dataclass(frozen=True, slots=True)
class BudgetChoice:
    """The plan chosen for a CPU budget.

    Attributes:
        plan: the chosen plan (nnU-Net's rules at ``base_features`` and ``memory_gb``).
        base_features: its first-stage width.
        memory_gb: the memory target its patch was planned for.
        step_seconds: measured seconds per training step on this machine.
        epochs: epochs that fit the budget.
        iterations_per_epoch: optimiser steps per epoch.
        gave_up: lines saying what the CPU plan gave up against the GPU plan.
        measured: candidate description -> measured seconds per step.
        configuration: the nnU-Net rules the plan follows: ``"3d_fullres"``, or
            ``"3d_lowres"`` where its spacing is the (capped) 3d_lowres search's.
    """

    plan: Plan
    base_features: int
    memory_gb: float
    step_seconds: float
    epochs: int
    iterations_per_epoch: int
    gave_up: tuple[str, ...]
    measured: tuple[tuple[str, float], ...]
    configuration: str = "3d_fullres"


def fit_cpu_budget(
    fingerprint: Fingerprint,
    *,
    time_budget_min: float,
    num_threads: int,
    gpu_memory_gb: float = 8.0,
    min_steps: int = MIN_STEPS,
    timer: StepTimer | None = None,
) -> BudgetChoice:
    """The widest nnU-Net plan whose training affords ``min_steps`` steps in the budget.

    Args:
        fingerprint: the dataset.
        time_budget_min: wall-clock minutes the whole training may take.
        num_threads: torch threads training will use.
        gpu_memory_gb: the GPU plan's memory target (what the CPU plan is compared with).
        min_steps: fewest steps the budget must afford.
        timer: measures one step (default :func:`measure_step`; tests pass their own).
    """
    timer = timer or measure_step
    budget_s = time_budget_min * 60.0 * (1.0 - OVERHEAD_FRACTION)
    allowed = budget_s / min_steps
    n_labels = len(fingerprint.labels)
    reference = plan_3d_fullres(fingerprint, gpu_memory_gb=gpu_memory_gb)
    measured: list[tuple[str, float]] = []

    def describe(plan: Plan) -> str:
        return f"features {plan.features[0]}-{plan.features[-1]}, patch {tuple(plan.patch_size)}"

    def cost(plan: Plan) -> float:
        return float(plan.batch_size * plan.memory_estimate)

    def seconds(plan: Plan) -> float:
        value = timer(plan, n_labels, num_threads)
        measured.append((describe(plan), value))
        _log.info("training step of %s: %.2f s", describe(plan), value)
        return value

    targets = [gpu_memory_gb / 2**k for k in range(MAX_HALVINGS, -1, -1)]  # smallest first

    @functools.cache
    def planned(base: int, gb: float) -> Plan:
        return cpu_candidate(fingerprint, gpu_memory_gb=gb, base_features=base)

    @functools.cache
    def timed(base: int, gb: float) -> tuple[Plan, float]:
        plan = planned(base, gb)
        # a patch too small for the 3 levels DynUNet needs is no candidate
        return plan, math.inf if len(plan.features) < MIN_STAGES else seconds(plan)

    def keeps_patch(plan: Plan) -> bool:
        return _field_of_view(plan) >= MIN_PATCH_SHARE * _field_of_view(reference)

    fits: list[tuple[Plan, int, float, float]] = []  # (plan, base, gb, seconds)
    for base in BASE_FEATURES:
        best = _largest_fit(
            base,
            targets,
            allowed,
            timed,
            cost_of=lambda b, g: cost(planned(b, g)),
        )
        if best is None:
            continue
        plan, gb, step = best
        fits.append((plan, base, gb, step))
        if keeps_patch(plan):
            break
    if fits:  # the first width that keeps the patch (the last tried), else the largest patch
        plan, base, gb, step = (
            fits[-1] if keeps_patch(fits[-1][0]) else max(fits, key=lambda f: _field_of_view(f[0]))
        )
    else:  # not even the smallest fits: take it, and say so
        base, gb = BASE_FEATURES[-1], targets[0]
        plan, step = timed(base, gb)

    total_steps = max(1, int(budget_s / step))
    iterations = min(CPU_ITERATIONS_PER_EPOCH, total_steps)
    epochs = max(1, total_steps // iterations)
    gave_up = _gave_up(reference, plan, step, total_steps, time_budget_min)
    return BudgetChoice(
        plan=plan,
        base_features=base,
        memory_gb=gb,
        step_seconds=step,
        epochs=epochs,
        iterations_per_epoch=iterations,
        gave_up=gave_up,
        measured=tuple(measured),
        configuration="3d_fullres" if plan.spacing == reference.spacing else "3d_lowres",
    )


def cpu_candidate(fingerprint: Fingerprint, *, gpu_memory_gb: float, base_features: int) -> Plan:
    """The plan a CPU budget considers for a memory target and width: nnU-Net's 3d_lowres
    search capped at :data:`CPU_MAX_COARSENING` (where nnU-Net would make a 3d_lowres
    configuration), else its 3d_fullres plan."""
    lowres = plan_3d_lowres(
        fingerprint,
        gpu_memory_gb=gpu_memory_gb,
        base_features=base_features,
        max_coarsening=CPU_MAX_COARSENING,
    )
    return lowres or plan_3d_fullres(
        fingerprint, gpu_memory_gb=gpu_memory_gb, base_features=base_features
    )


def _field_of_view(plan: Plan) -> float:
    """The patch's extent in mm³."""
    return math.prod(p * s for p, s in zip(plan.patch_size, plan.spacing, strict=True))


def _largest_fit(
    base: int,
    targets: list[float],
    allowed: float,
    timed: Callable[[int, float], tuple[Plan, float]],
    cost_of: Callable[[int, float], float],
) -> tuple[Plan, float, float] | None:
    """The largest memory target (ascending ``targets``) whose measured step at width
    ``base`` takes at most ``allowed`` seconds: a search over the targets, which jumps to the
    largest one a straight line through the last fitting measurement allows (an upper bound
    of the cost: small networks are dominated by fixed overheads) and halves the range when
    a jump overshoots."""
    plan, step = timed(base, targets[0])
    if step > allowed:
        return None
    low, high = 0, len(targets)  # targets[low] fits; targets[high:] are known not to
    best = (plan, targets[0], step)
    overshot = False
    while low + 1 < high:
        if overshot:
            probe = (low + high) // 2
        else:
            rate = step / max(cost_of(base, targets[low]), 1.0)
            predicted = [
                i for i in range(low + 1, high) if rate * cost_of(base, targets[i]) <= allowed
            ]
            probe = max(predicted) if predicted else low + 1
        candidate, seconds = timed(base, targets[probe])
        if seconds <= allowed:
            low, step, best = probe, seconds, (candidate, targets[probe], seconds)
        else:
            high, overshot = probe, True
    return best


def _gave_up(
    reference: Plan, plan: Plan, step: float, total_steps: int, budget_min: float
) -> tuple[str, ...]:
    gpu = (
        f"GPU plan (nnU-Net): features {'-'.join(map(str, reference.features))}, patch "
        f"{tuple(reference.patch_size)}, batch {reference.batch_size}, 1000 epochs x 250 steps"
    )
    cpu = (
        f"CPU plan: features {'-'.join(map(str, plan.features))}, patch "
        f"{tuple(plan.patch_size)}, batch {plan.batch_size}: {step:.2f} s per step measured "
        f"here, {total_steps} steps in {budget_min:g} min"
    )
    lines = [gpu, cpu]
    if plan.features[0] != reference.features[0]:  # fewer stages: said below
        lines.append(
            f"gave up width: first stage {plan.features[0]} instead of "
            f"{reference.features[0]} features"
        )
    if plan.spacing != reference.spacing:
        lines.append(
            "gave up resolution: spacing "
            + " x ".join(f"{s:.3g}" for s in plan.spacing)
            + " mm instead of "
            + " x ".join(f"{s:.3g}" for s in reference.spacing)
            + f" (nnU-Net's 3d_lowres rule, an axis at most {CPU_MAX_COARSENING:g}x coarser)"
        )
    share = _field_of_view(plan) / _field_of_view(reference)
    if share < 1.0:
        lines.append(f"gave up context: the patch spans {share:.0%} of the GPU plan's mm³")
    if len(plan.features) != len(reference.features):
        lines.append(f"{len(plan.features)} stages instead of {len(reference.features)}")
    lines.append(f"gave up steps: {total_steps} instead of nnU-Net's 250000")
    return tuple(lines)


def measure_step(plan: Plan, n_labels: int, num_threads: int, *, max_steps: int = 12) -> float:
    """Seconds of one training step (forward, Dice + CE, backward, SGD) of the network a CPU
    plan trains for ``plan`` (:func:`medseg.planning.experiment.cpu_network`) on a batch of
    random patches on this CPU, in the precision the plan trains in
    (:data:`medseg.planning.experiment.PLAN_TRAIN_PRECISION`: bfloat16 where this CPU has it
    natively), once it is steady: steps run until the last three agree
    within 30 % (or ``max_steps`` ran, or 60 s passed) and their median is returned. oneDNN prepares its kernels for new shapes over the first steps: measured 2–3.6 s
    for each of the first five steps of a network whose steps then take 0.4–0.6 s."""
    from medseg.config import ModelConfig
    from medseg.planning.experiment import PLAN_TRAIN_PRECISION, cpu_network
    from medseg.training.train import time_training_step

    network = cpu_network(plan) or {
        "name": "dynunet",
        "channels": list(plan.features),
        "strides": [list(s) for s in plan.strides[1:]],
        "kernel_sizes": [list(k) for k in plan.kernel_sizes],
        "num_res_units": 0,
    }
    config = ModelConfig.model_validate(
        {
            **network,
            "labels": [
                {"label": i, "name": f"label {i}", "type": "ORGAN"} for i in range(1, n_labels + 1)
            ],
        }
    )
    return time_training_step(
        config,
        plan.patch_size,
        plan.batch_size,
        num_threads,
        precision=PLAN_TRAIN_PRECISION,
        max_steps=max_steps,
    )
