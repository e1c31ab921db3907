"""``medseg plan`` against the hand-written research config, under the same wall-clock budget.

Usage: .venv/bin/python benchmarks/plan_vs_hand.py [--data ROOT] [--work DIR]
       [--budget-min M] [--threads N] [--datasets hn,lung] [--experiments hand,plan]
       [--min-steps N]

For each dataset, in one process run, two experiments train under the same budget
(``train.time_limit_min``, default 30 minutes each) on this machine's CPU:

(a) ``configs/research.yaml`` adapted only in its labels (and data, device, threads, budget);
(b) the plan ``medseg plan --device cpu --time-budget-min M`` writes for the training cases
    (the planner's own time, fingerprint and step timing, is printed apart).

Datasets:

- ``hn``: the 21-organ head-and-neck phantoms (:func:`medseg.synthetic.phantom.ct_from_label_maps`
  on the DeepMind ``hn-oar-labels`` grids, oncologist contours): the first 5 scans train, the
  last 2 validate.
- ``lung``: ``lung-gtv-ct`` (3 CTs with a clinical GTV), leave one patient out (3 trainings per
  experiment).

Per structure it prints Dice, HD95 (mm) and surface Dice at 2 mm of both experiments on the
held-out scans (:func:`medseg.metrics.compute_metrics`), their means, and for the H&N organs the
radiographer-vs-oncologist agreement of the same organ on the same scans (the inter-observer
range a model is measured against). With the default budget the run takes about 2 x 30 min for
``hn`` and 6 x 30 min for ``lung`` plus planning and inference.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medseg.config import ExperimentConfig, parse_config
from medseg.io import nifti
from medseg.volume import Volume, VolumeKind

#: Surface Dice tolerance (mm) of the table.
TOLERANCE_MM = 2.0


def _hand_config(
    labels: dict[int, str], datalist: Path, budget_min: float, threads: int
) -> ExperimentConfig:
    """``configs/research.yaml`` with only labels, data, device, threads and budget changed."""
    raw = yaml.safe_load((ROOT / "configs" / "research.yaml").read_text())
    raw["data"] = {"datalist": str(datalist)}
    raw["model"]["labels"] = {value: name for value, name in labels.items()}
    raw["train"].update(
        {
            "device": "cpu",
            "num_threads": threads,
            "time_limit_min": budget_min,
        }
    )
    raw["infer"]["num_threads"] = threads
    return parse_config(yaml.safe_dump(raw), "research.yaml (adapted)")


def _write_datalist(
    folder: Path, cases: Sequence[tuple[str, Volume, Volume]], labels: dict[int, str]
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for case_id, image, label in cases:
        nifti.save(image, folder / f"{case_id}_image.nii.gz")
        nifti.save(label, folder / f"{case_id}_labels.nii.gz")
        entries.append({"image": f"{case_id}_image.nii.gz", "label": f"{case_id}_labels.nii.gz"})
    path = folder / "dataset.json"
    path.write_text(
        json.dumps(
            {
                "modality": {"0": "CT"},
                "labels": {"0": "background", **{str(k): v for k, v in labels.items()}},
                "training": entries,
            },
            indent=2,
        )
    )
    return path


def _train(config: ExperimentConfig, cases: Sequence[tuple[str, Volume, Volume]], out: Path) -> Any:
    from medseg.model import load_checkpoint
    from medseg.training.train import train

    started = time.perf_counter()
    result = train(config, [(i, lab) for _, i, lab in cases], [], out, None, progress=False)
    steps = sum(len(r.step_losses) for r in result.history)
    print(
        f"    trained {len(result.history)} epochs, {steps} steps in "
        f"{time.perf_counter() - started:.0f} s, final loss {result.final_train_loss:.3f}",
        flush=True,
    )
    return load_checkpoint(result.checkpoint_path)


def _plan(
    datalist: Path, out: Path, budget_min: float, threads: int, min_steps: int | None
) -> ExperimentConfig:
    from medseg.config import load_config
    from medseg.planning.command import plan_experiment

    started = time.perf_counter()
    result = plan_experiment(
        datalist,
        out / "plan.yaml",
        device="cpu",
        time_budget_min=budget_min,
        num_threads=threads,
        min_steps=min_steps,
    )
    c = result.planned.config
    print(
        f"    plan in {time.perf_counter() - started:.0f} s: spacing "
        f"{[round(s, 2) for s in c.preprocess.spacing_mm or ()]}, patch {list(c.train.patch_size)}, "
        f"features {list(c.model.channels)}, batch {c.train.batch_size}, {c.train.epochs} epochs",
        flush=True,
    )
    config = load_config(out / "plan.yaml")
    infer = config.infer.model_copy(update={"num_threads": threads})
    return config.model_copy(update={"infer": infer})


def _scores(
    model: Any, image: Volume, reference: Volume, labels: dict[int, str]
) -> dict[str, tuple[float, float, float]]:
    from medseg.infer import predict
    from medseg.metrics import compute_metrics

    predicted = predict(model, image)
    out = {}
    for value, name in labels.items():
        if not np.any(np.asarray(reference.array) == value):
            continue
        m = compute_metrics(predicted, reference, label=value, tolerance_mm=TOLERANCE_MM)
        out[name] = (m.dice, m.hausdorff95_mm, m.surface_dice)
    return out


def _hn(
    args: argparse.Namespace,
) -> tuple[dict[str, list[Any]], dict[str, list[Any]], dict[str, list[Any]]]:
    from medseg.metrics import compute_metrics
    from medseg.synthetic.phantom import ct_from_label_maps
    from medseg.synthetic.phantom_oar import load_label_maps

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from train_hn_oar import CLASS_NAMES  # the 21 organs, label i + 1 = CLASS_NAMES[i]

    root = args.data / "hn-oar-labels"
    scans = sorted(p for p in (root / "oncologist").iterdir() if (p / "segmentations").is_dir())
    train_scans, val_scans = scans[:5], scans[-2:]
    labels = {i + 1: name for i, name in enumerate(CLASS_NAMES)}
    phantoms = {
        s.name: ct_from_label_maps(
            load_label_maps(s / "segmentations"), seed=i, class_names=CLASS_NAMES, hu_jitter_hu=10.0
        )
        for i, s in enumerate(scans)
    }
    cases = [
        (f"hn_{i:03d}", phantoms[s.name].image, phantoms[s.name].labels)
        for i, s in enumerate(train_scans)
    ]
    datalist = _write_datalist(args.work / "hn" / "data", cases, labels)
    results: dict[str, dict[str, list[Any]]] = {"hand": {}, "plan": {}}
    for kind in args.experiments:
        print(f"  hn, {kind}:", flush=True)
        config = (
            _hand_config(labels, datalist, args.budget_min, args.threads)
            if kind == "hand"
            else _plan(
                datalist, args.work / "hn" / "plan", args.budget_min, args.threads, args.min_steps
            )
        )
        model = _train(config, cases, args.work / "hn" / kind)
        for scan in val_scans:
            p = phantoms[scan.name]
            for name, value in _scores(model, p.image, p.labels, labels).items():
                results[kind].setdefault(name, []).append(value)
    experts: dict[str, list[Any]] = {}
    for scan in val_scans:
        oncologist = load_label_maps(scan / "segmentations")
        other = root / "radiographer" / scan.name / "segmentations"
        radiographer = load_label_maps(other) if other.is_dir() else {}
        for name in CLASS_NAMES:
            if name in oncologist and name in radiographer:
                a = oncologist[name].with_array(
                    (np.asarray(oncologist[name].array) > 0).astype(np.uint8)
                )
                b = radiographer[name].with_array(
                    (np.asarray(radiographer[name].array) > 0).astype(np.uint8)
                )
                if np.any(np.asarray(a.array)):
                    m = compute_metrics(b, a, label=1, tolerance_mm=TOLERANCE_MM)
                    experts.setdefault(name, []).append((m.dice, m.hausdorff95_mm, m.surface_dice))
    return results["hand"], results["plan"], experts


def _lung(
    args: argparse.Namespace,
) -> tuple[dict[str, list[Any]], dict[str, list[Any]], dict[str, list[Any]]]:
    from medseg.io.convert import convert_dicom
    from medseg.io.rtstruct import match_rois

    root = args.data / "lung-gtv-ct"
    patients = sorted(p for p in root.iterdir() if p.is_dir())
    labels = {1: "GTV"}
    cases = []
    for i, patient in enumerate(patients):
        done = convert_dicom(
            patient,
            args.work / "lung" / "convert" / patient.name,
            rtstruct=min(patient.glob("DCM_RS_*.dcm")),
        )
        image = nifti.load(done.image)
        label = np.zeros(image.geometry.shape, np.uint8)
        for roi in match_rois(list(done.masks), ["GTV*"]):
            label[np.asarray(nifti.load(done.masks[roi], VolumeKind.LABELS).array) > 0] = 1
        cases.append((f"lung_{i:03d}", image, image.with_array(label, VolumeKind.LABELS)))
    results: dict[str, dict[str, list[Any]]] = {"hand": {}, "plan": {}}
    for held in range(len(cases)):
        train_cases = [c for j, c in enumerate(cases) if j != held]
        datalist = _write_datalist(args.work / "lung" / f"fold{held}" / "data", train_cases, labels)
        for kind in args.experiments:
            print(f"  lung, held out {cases[held][0]}, {kind}:", flush=True)
            config = (
                _hand_config(labels, datalist, args.budget_min, args.threads)
                if kind == "hand"
                else _plan(
                    datalist,
                    args.work / "lung" / f"fold{held}" / "plan",
                    args.budget_min,
                    args.threads,
                    args.min_steps,
                )
            )
            model = _train(config, train_cases, args.work / "lung" / f"fold{held}" / kind)
            _, image, reference = cases[held]
            for name, value in _scores(model, image, reference, labels).items():
                results[kind].setdefault(name, []).append(value)
    return results["hand"], results["plan"], {}


def _mean(rows: list[Any], index: int) -> float:
    values = [r[index] for r in rows if math.isfinite(r[index])]
    return float(np.mean(values)) if values else math.nan


def _table(
    title: str,
    hand: dict[str, list[Any]],
    plan: dict[str, list[Any]],
    experts: dict[str, list[Any]],
) -> None:
    print(
        f"\n{title}: mean over held-out scans; Dice, HD95 mm, surface Dice at {TOLERANCE_MM:g} mm"
    )
    print(
        f"{'structure':18s} {'hand Dice':>9s} {'HD95':>6s} {'NSD':>5s} | {'plan Dice':>9s} {'HD95':>6s} {'NSD':>5s} | {'experts Dice':>12s} {'HD95':>6s} {'NSD':>5s}"
    )
    means: dict[str, list[float]] = {"hand": [], "plan": []}
    for name in sorted(set(hand) | set(plan)):
        cells = []
        for kind, table in (("hand", hand), ("plan", plan), ("experts", experts)):
            rows = table.get(name, [])
            if rows:
                cells.append(f"{_mean(rows, 0):9.3f} {_mean(rows, 1):6.1f} {_mean(rows, 2):5.2f}")
                if kind in means:
                    means[kind].append(_mean(rows, 0))
            else:
                cells.append(f"{'-':>9s} {'-':>6s} {'-':>5s}")
        print(f"{name:18s} " + " | ".join(cells))
    mean = {k: float(np.mean(v)) if v else math.nan for k, v in means.items()}
    verdict = (
        "not compared"
        if math.isnan(mean["hand"] - mean["plan"])
        else ("yes" if mean["plan"] > mean["hand"] else "no")
    )
    print(
        f"mean Dice: hand {mean['hand']:.3f}, plan {mean['plan']:.3f}; plan beats hand: {verdict}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_data = os.environ.get("MEDSEG_TEST_DATA") or str(ROOT.parent / "shared" / "data")
    parser.add_argument("--data", type=Path, default=Path(default_data))
    parser.add_argument("--work", type=Path, default=None, help="outputs (default: a temp dir)")
    parser.add_argument("--budget-min", type=float, default=30.0, help="training minutes each")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--datasets", default="hn,lung")
    parser.add_argument(
        "--min-steps",
        type=int,
        default=None,
        help="fewest steps the plan's budget must afford (default medseg's MIN_STEPS)",
    )
    parser.add_argument(
        "--experiments",
        default="hand,plan",
        help="which to train, in this order (a check of one side; the comparison needs both)",
    )
    args = parser.parse_args(argv)
    asked = args.experiments.split(",")
    args.experiments = list(dict.fromkeys(k for k in asked if k in ("hand", "plan")))
    if args.work is None:
        import tempfile

        args.work = Path(tempfile.mkdtemp(prefix="plan-vs-hand-"))
    import torch

    torch.set_num_threads(args.threads)
    begun = time.perf_counter()
    print(f"budget {args.budget_min:g} min per training, {args.threads} threads, work {args.work}")
    for name in args.datasets.split(","):
        run = {"hn": _hn, "lung": _lung}[name]
        hand, plan, experts = run(args)
        _table(
            {
                "hn": "21-organ H&N phantoms (5 train / 2 validation)",
                "lung": "lung-gtv-ct, leave one patient out",
            }[name],
            hand,
            plan,
            experts,
        )
    print(f"\ntotal {time.perf_counter() - begun:.0f} s; load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
