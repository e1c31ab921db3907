"""A 21-organ head-and-neck benchmark on real anatomy, and medseg's training loop vs MONAI's.

Usage: .venv/bin/python benchmarks/train_hn_oar.py [--data ROOT] [--out DIR] [--epochs N]
       [--quick] [--monai-workers N]

The ``hn-oar-labels`` set (DeepMind's head-and-neck organs at risk, oncologist contours) holds
21 organ label maps on each of 7 CT grids but no CT images; :func:`medseg.synthetic.phantom.ct_from_label_maps`
paints a CT-like image on each grid (organ HU, bone and fat shells, body outline, partial-volume
blur, noise). The first 5 scans (sorted by name) train, the last 2 (the TCGA scans, other
patients) validate. Training cases are cropped to their organs' box plus a margin and resampled
to the model spacing (``medseg.preprocess``); medseg's :func:`medseg.training.train.train` trains a
21-class U-Net on them. The best checkpoint then segments the two validation images on their own
full-resolution grids (:func:`medseg.infer.predict`) and per-organ Dice and HD95 (mm) against
the expert label maps (merged as the phantom merges them: a smaller organ wins an overlap) are
printed (:func:`medseg.metrics.compute_metrics`). Full run: 3 x 2 x 2 mm, U-Net channels
8-16-32-64, patches 32 x 48 x 48, batch 2, 8 patches per case per epoch, 120 epochs (2400 steps),
patch centres class-balanced (``train.foreground_sampling: class_balanced``: the 0.05 mL
cochleae are centres as often as the lungs), 2 threads, no augmentation, under 30 minutes on
2 quiet cores.

In the same process, a MONAI-tutorial-style loop (``CacheDataset`` with
``EnsureChannelFirstd``/``ScaleIntensityRanged``/``SpatialPadd`` cached and
``RandCropByLabelClassesd`` with the same class ratios drawn each step, a ``DataLoader`` and a
plain ``for`` loop) trains the same network, loss (``DiceCELoss``), optimiser (Adam), patch
size and batch size (patches per step: ``num_samples`` = the batch size, one case per step)
for ``MONAI_STEPS`` (100) steps on the same resampled arrays; samples/s of both loops (sampling, augmentation-free steps; the
one-off caching excluded and printed apart; medseg's from its per-epoch times) and their
ratio are printed, with the load average, since other processes on the machine slow both.

``--quick`` (2 training scans, 1 validation scan, a tiny network, 1 epoch) checks the whole
path in about a minute. Data root: ``--data``, else ``$MEDSEG_TEST_DATA``, else
``../shared/data`` beside the repository.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from medseg import geometry as geo
from medseg.config import ExperimentConfig
from medseg.preprocess import foreground_box, model_grid, resample
from medseg.synthetic.phantom import ct_from_label_maps
from medseg.synthetic.phantom_oar import LabelMapPhantom, load_label_maps
from medseg.volume import Volume

#: The 21 organs of the set; label value ``i + 1`` is ``CLASS_NAMES[i]`` in every scan.
CLASS_NAMES = (
    "Brain", "Brainstem", "Cochlea-Lt", "Cochlea-Rt", "Lacrimal-Lt", "Lacrimal-Rt", "Lens-Lt",
    "Lens-Rt", "Lung-Lt", "Lung-Rt", "Mandible", "Optic-Nerve-Lt", "Optic-Nerve-Rt", "Orbit-Lt",
    "Orbit-Rt", "Parotid-Lt", "Parotid-Rt", "Spinal-Canal", "Spinal-Cord", "Submandibular-Lt",
    "Submandibular-Rt",
)  # fmt: skip
#: Margin (mm) kept around the organs when training cases are cropped.
CROP_MARGIN_MM = 20.0


@dataclass(frozen=True)
class Settings:
    """What differs between the full benchmark and ``--quick``."""

    n_train: int
    n_val: int
    spacing_mm: tuple[float, float, float]
    channels: tuple[int, ...]
    strides: tuple[int, ...]
    num_res_units: int
    patch: tuple[int, int, int]
    batch_size: int
    samples_per_case: int
    epochs: int
    hd95: bool = True


FULL = Settings(5, 2, (3.0, 2.0, 2.0), (8, 16, 32, 64), (2, 2, 2), 1, (32, 48, 48), 2, 8, 120)

#: Steps of the MONAI-tutorial loop: enough for a steady samples/s figure, so the time budget
#: goes to medseg's training (whose per-organ results are reported).
MONAI_STEPS = 100
QUICK = Settings(2, 1, (4.0, 4.0, 4.0), (4, 8, 16), (2, 2), 0, (16, 32, 32), 2, 2, 1, hd95=False)


def _config(s: Settings, seed: int) -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {
            "seed": seed,
            "preprocess": {"lower_hu": -500.0, "upper_hu": 500.0, "spacing_mm": list(s.spacing_mm)},
            "model": {
                "name": "unet", "channels": list(s.channels), "strides": list(s.strides),
                "num_res_units": s.num_res_units,
                "labels": {i + 1: name for i, name in enumerate(CLASS_NAMES)},
            },
            "train": {
                "epochs": s.epochs, "patch_size": list(s.patch), "batch_size": s.batch_size,
                "samples_per_case": s.samples_per_case, "foreground_fraction": 0.9,
                "foreground_sampling": "class_balanced",
                "learning_rate": 3e-3, "loss": "dice_ce", "val_every": s.epochs, "device": "cpu",
                "num_threads": 2, "hd95": False,
            },
            "infer": {
                "roi_size": list(s.patch), "overlap": 0.25, "sw_batch_size": 4, "num_threads": 2,
            },
        }
    )  # fmt: skip


def _scans(data_root: Path) -> list[Path]:
    root = data_root / "hn-oar-labels" / "oncologist"
    scans = (
        sorted(p for p in root.iterdir() if (p / "segmentations").is_dir()) if root.is_dir() else []
    )
    if len(scans) < 3:
        sys.exit(f"{root}: expected the hn-oar-labels scans there (set --data or MEDSEG_TEST_DATA)")
    return scans


def _crop_to_organs(volume: Volume, labels: Volume, margin_mm: float) -> tuple[Volume, Volume]:
    """Both volumes cut to the organs' bounding box plus ``margin_mm`` (world positions kept)."""
    start, stop = foreground_box(volume, labels, None, margin_mm)
    window = tuple(slice(a, b) for a, b in zip(start, stop, strict=True))
    cropped = geo.crop_geometry(labels.geometry, start, stop)
    return (
        Volume(np.asarray(volume.array)[window], cropped, volume.kind, volume.source),
        Volume(np.asarray(labels.array)[window], cropped, labels.kind, labels.source),
    )


def _monai_loop(
    config: ExperimentConfig, arrays: list[tuple[np.ndarray, np.ndarray]], steps: int, workers: int
) -> tuple[float, float, float]:
    """A MONAI-tutorial training loop; returns (caching s, loop s, final loss)."""
    import torch
    from monai import transforms as mt
    from monai.data import CacheDataset, DataLoader
    from monai.losses import DiceCELoss
    from monai.utils import set_determinism

    from medseg.model import build_network

    t = config.train
    n_labels = len(config.model.labels)
    set_determinism(seed=config.seed)
    torch.set_num_threads(t.num_threads)
    keys = ["image", "label"]
    transforms = mt.Compose(
        [
            mt.EnsureChannelFirstd(keys, channel_dim="no_channel"),
            mt.ScaleIntensityRanged(
                "image", a_min=config.preprocess.lower_hu, a_max=config.preprocess.upper_hu,
                b_min=0.0, b_max=1.0, clip=True,
            ),
            mt.SpatialPadd(keys, spatial_size=t.patch_size),
            # the same sampling as medseg's class_balanced: background (1 - foreground_fraction),
            # the rest shared equally by the classes
            mt.RandCropByLabelClassesd(
                keys, label_key="label", spatial_size=t.patch_size,
                ratios=[n_labels * (1.0 - t.foreground_fraction) / t.foreground_fraction]
                + [1.0] * n_labels,
                num_classes=n_labels + 1, num_samples=t.batch_size, warn=False,
            ),
        ]
    )  # fmt: skip
    started = time.perf_counter()
    dataset = CacheDataset(
        [{"image": image, "label": label} for image, label in arrays], transforms,
        cache_rate=1.0, progress=False,
    )  # fmt: skip
    loader = DataLoader(dataset, batch_size=1, shuffle=True, num_workers=workers)
    cached = time.perf_counter() - started
    model = build_network(config.model)
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
    optimizer = torch.optim.Adam(model.parameters(), t.learning_rate)
    model.train()
    step, loss = 0, torch.zeros(())
    started = time.perf_counter()
    while step < steps:
        for batch in loader:
            inputs, labels = batch["image"], batch["label"]
            optimizer.zero_grad()
            loss = loss_function(model(inputs), labels)
            loss.backward()
            optimizer.step()
            step += 1
            if step == steps:
                break
    set_determinism(seed=None)
    return cached, time.perf_counter() - started, float(loss.detach())


def _phantoms(scans: list[Path]) -> list[LabelMapPhantom]:
    out = []
    for index, scan in enumerate(scans):
        maps = load_label_maps(scan / "segmentations")
        out.append(ct_from_label_maps(maps, seed=index, class_names=CLASS_NAMES, hu_jitter_hu=10.0))
    return out


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "    -"
    return "  inf" if math.isinf(value) else f"{value:5.1f}"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; the exit code is 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_data = os.environ.get("MEDSEG_TEST_DATA") or str(
        Path(__file__).resolve().parents[2] / "shared" / "data"
    )
    parser.add_argument("--data", type=Path, default=Path(default_data))
    parser.add_argument("--out", type=Path, default=None, help="checkpoints (default: a temp dir)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="2+1 scans, tiny net, 1 epoch")
    parser.add_argument("--monai-workers", type=int, default=0, help="DataLoader workers")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    if args.epochs is not None:
        settings = replace(settings, epochs=args.epochs)
    config = _config(settings, seed=0)
    out = args.out or Path(tempfile.mkdtemp(prefix="hn-oar-"))
    begun = time.perf_counter()

    import torch

    from medseg.infer import predict
    from medseg.metrics import compute_metrics, dice_score
    from medseg.model import load_checkpoint
    from medseg.training.train import train

    scans = _scans(args.data)
    train_scans, val_scans = scans[: settings.n_train], scans[-settings.n_val :]
    print(
        f"hn-oar-labels: train {[s.name for s in train_scans]}, validate {[s.name for s in val_scans]}"
    )
    started = time.perf_counter()
    train_phantoms, val_phantoms = _phantoms(train_scans), _phantoms(val_scans)
    print(
        f"phantom CTs: {len(scans[: settings.n_train]) + len(val_scans)} scans in {time.perf_counter() - started:.1f} s"
    )

    started = time.perf_counter()
    cases = []
    for p in train_phantoms:
        image, labels = _crop_to_organs(p.image, p.labels, CROP_MARGIN_MM)
        grid = model_grid(image.geometry, settings.spacing_mm)
        cases.append((resample(image, grid), resample(labels, grid)))
    print(
        f"training grids at {settings.spacing_mm} mm: {[c[0].geometry.shape for c in cases]} "
        f"({time.perf_counter() - started:.1f} s)"
    )

    started = time.perf_counter()
    result = train(config, cases, [], out, progress=False)
    medseg_wall = time.perf_counter() - started
    per_epoch = len(cases) * settings.samples_per_case
    medseg_loop_s = sum(r.seconds for r in result.history)
    steps = sum(len(r.step_losses) for r in result.history)
    medseg_sps = per_epoch * len(result.history) / medseg_loop_s
    print(
        f"medseg train: {len(result.history)} epochs, {steps} steps of {settings.batch_size} "
        f"patches {settings.patch}, final loss {result.final_train_loss:.3f}, "
        f"{medseg_wall:.0f} s wall"
    )

    # writable copies, as LoadImaged would give
    arrays = [(np.array(i.array, np.float32), np.array(lab.array)) for i, lab in cases]
    load_before = os.getloadavg()[0]
    monai_steps = min(steps, MONAI_STEPS)
    cached_s, monai_loop_s, monai_loss = _monai_loop(
        config, arrays, monai_steps, args.monai_workers
    )
    monai_sps = monai_steps * settings.batch_size / monai_loop_s
    print(
        f"MONAI loop: {monai_steps} steps, final loss {monai_loss:.3f}, caching {cached_s:.1f} s, "
        f"loop {monai_loop_s:.0f} s (load average {load_before:.1f} -> {os.getloadavg()[0]:.1f})"
    )

    started = time.perf_counter()
    model = load_checkpoint(result.checkpoint_path)
    torch.set_num_threads(2)
    table: dict[str, list[tuple[float, float, float]]] = {name: [] for name in CLASS_NAMES}
    for p in val_phantoms:
        predicted = predict(model, p.image)
        for value, name in p.label_names.items():
            if settings.hd95:
                m = compute_metrics(predicted, p.labels, label=value, tolerance_mm=1.0)
                table[name].append((m.volume_reference_ml, m.dice, m.hausdorff95_mm))
            else:  # --quick: an untrained model's scattered masks make HD95 slow
                ml = float(np.count_nonzero(p.labels.array == value)) * p.labels.voxel_volume_ml
                table[name].append((ml, dice_score(predicted, p.labels, value), math.nan))
    print(
        f"validation: {len(val_phantoms)} full-resolution scans segmented in {time.perf_counter() - started:.0f} s"
    )

    names = " | ".join(s.name for s in val_scans)
    print(f"\nper-organ results on the validation scans ({names}); ref mL, Dice, HD95 mm per scan")
    print(
        f"{'organ':18s} "
        + "  ".join(f"{'ref mL':>8s} {'Dice':>5s} {'HD95':>5s}" for _ in val_scans)
        + "   mean Dice  mean HD95"
    )
    means = []
    for name in CLASS_NAMES:
        rows = table[name]
        present = [(d, h) for ml, d, h in rows if ml > 0]
        cells = "  ".join(
            f"{ml:8.2f} {d:5.2f} {_fmt(h)}" if ml > 0 else f"{'absent':>8s} {d:5.2f} {'-':>5s}"
            for ml, d, h in rows
        )
        mean_dice = float(np.mean([d for d, _ in present])) if present else float("nan")
        finite = [h for _, h in present if math.isfinite(h)]
        mean_hd = float(np.mean(finite)) if finite else float("nan" if not settings.hd95 else "inf")
        if present:
            means.append(mean_dice)
        print(f"Dice {name:13s} {cells}   {mean_dice:9.3f}  {_fmt(mean_hd):>9s}")
    print(f"mean Dice over organs present: {np.mean(means):.3f}")
    print(
        f"\nsamples/s (patches {settings.patch}, batch {settings.batch_size}, {steps} steps, "
        # five significant digits: the ratio can be checked from the printed rates even
        # when one is small (--quick: MONAI at 1.87 samples/s, rounding moved the ratio 0.05)
        f"2 threads): medseg {medseg_sps:.5g}, MONAI CacheDataset loop {monai_sps:.5g}, "
        f"ratio medseg/MONAI {medseg_sps / monai_sps:.2f}x"
    )
    print(f"total {time.perf_counter() - begun:.0f} s; checkpoints in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
