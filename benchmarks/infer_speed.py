"""Inference speed and memory: MONAI sliding_window_inference vs medseg.infer.predict.

Each variant runs in its own subprocess (so its peak RSS is its own) on the same weights and
the same CT, and writes its labels; the parent prints wall time, peak RSS and the label
agreement Dice of each medseg variant against the MONAI variant with the same windows, then
the speed ratio.

    .venv/bin/python benchmarks/infer_speed.py [--checkpoint best.pt] [--ct DICOM_DIR_OR_NIFTI]

Without ``--checkpoint`` the network is a MONAI UNet of the size in FINDINGS.md (channels
16-256, 2 classes) with random but fixed weights (seed 0). Without ``--ct`` a synthetic
200x512x512 CT (an elliptic body filling about half the field of view, air around it) is
generated. ``--model-spacing`` makes both variants work on that spacing: MONAI on the image
resampled beforehand (not timed), medseg with the resampling in its timed path.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BASELINE_SETTINGS = {"roi_size": (96, 96, 96), "sw_batch_size": 4}


def _synthetic_ct(shape: tuple[int, int, int]) -> tuple[np.ndarray, tuple[float, float, float]]:
    rng = np.random.default_rng(0)
    _, rows, columns = shape
    j, i = np.ogrid[:rows, :columns]
    body = ((j - rows / 2) / (0.40 * rows)) ** 2 + ((i - columns / 2) / (0.45 * columns)) ** 2 < 1
    organ = ((j - rows / 2) / (0.12 * rows)) ** 2 + ((i - 0.6 * columns) / (0.10 * columns)) ** 2 < 1
    plane = np.where(body, 40.0, -1000.0) + np.where(organ, 80.0, 0.0)
    hu = np.empty(shape, dtype=np.int16)
    for k in range(shape[0]):
        hu[k] = plane + rng.normal(0.0, 15.0, plane.shape) * body
    return hu, (2.5, 0.8, 0.8)


def _load(args: argparse.Namespace):
    import torch

    import medseg
    from medseg import data
    from medseg.config import load_config
    from medseg.geometry import Geometry
    from medseg.model import LoadedModel, build_network, load_checkpoint
    from medseg.volume import Volume

    if args.checkpoint:
        model = load_checkpoint(Path(args.checkpoint))
        note = f"weights: trained checkpoint {args.checkpoint}"
    else:
        config = load_config(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml")
        network_config = config.model.model_copy(
            update={"channels": (16, 32, 64, 128, 256), "strides": (2, 2, 2, 2),
                    "num_res_units": 2}
        )
        config = config.model_copy(update={"model": network_config})
        torch.manual_seed(0)
        network = build_network(config.model).eval()
        model = LoadedModel(network, config, dict(config.model.labels), medseg.__version__)
        note = "weights: RANDOM but fixed (seed 0), UNet channels 16-256, 2 classes"
    if args.model_spacing:
        pre = model.config.preprocess.model_copy(update={"spacing_mm": tuple(args.model_spacing)})
        model = LoadedModel(model.network, model.config.model_copy(update={"preprocess": pre}),
                            model.label_names, model.medseg_version)
    if args.ct:
        image = data.load_image(Path(args.ct))
    else:
        hu, spacing = _synthetic_ct((args.slices, 512, 512))
        image = Volume(hu, Geometry(hu.shape, spacing, (0.0, 0.0, 0.0)))
    return model, image, note


def _run_variant(args: argparse.Namespace) -> None:
    """Child process: run one variant, save its labels, print a JSON line."""
    import torch

    from medseg import preprocess
    from medseg.infer import predict
    from medseg.model import LoadedModel

    torch.set_num_threads(args.threads)
    model, image, _ = _load(args)
    overlap, blend = args.overlap, args.blend
    if args.variant == "monai":
        from monai.inferers import sliding_window_inference

        if model.config.preprocess.spacing_mm is not None:  # "the same preprocessed input"
            grid = preprocess.model_grid(image.geometry, model.config.preprocess.spacing_mm)
            image = preprocess.resample(image, grid)
        scaled = preprocess.scale_intensity(image, model.config.preprocess).array
        started = time.perf_counter()
        with torch.inference_mode():
            x = torch.from_numpy(np.array(scaled))[None, None]
            logits = sliding_window_inference(
                x, BASELINE_SETTINGS["roi_size"], BASELINE_SETTINGS["sw_batch_size"],
                model.network, overlap, blend,
            )
            assert isinstance(logits, torch.Tensor)
            labels = logits.argmax(1)[0].to(torch.uint8).numpy()
        seconds = time.perf_counter() - started
        if model.config.preprocess.spacing_mm is not None:  # back for the comparison, untimed
            from medseg.volume import Volume, VolumeKind

            original = _load(args)[1]
            labels = preprocess.resample(
                Volume(labels, image.geometry, VolumeKind.LABELS), original.geometry
            ).array
    else:
        infer = model.config.infer.model_copy(update={
            **BASELINE_SETTINGS, "overlap": overlap, "blend": blend,
            "backend": args.variant, "num_threads": args.threads,
            **({"body_threshold_hu": None} if args.no_body_crop else {}),
        })
        model = LoadedModel(model.network, model.config.model_copy(update={"infer": infer}),
                            model.label_names, model.medseg_version)
        if args.variant != "torch":  # session and export are built once per model, untimed
            from medseg.runtime import onnx_predictor

            onnx_predictor(model.network, args.variant, infer.roi_size,
                           precision=infer.precision, num_threads=args.threads)
        started = time.perf_counter()
        labels = predict(model, image).array
        seconds = time.perf_counter() - started
    np.save(args.out, labels)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_mb}))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    """Mean Dice over the foreground labels present in either."""
    values = [v for v in np.union1d(np.unique(a), np.unique(b)) if v != 0]
    scores = []
    for v in values:
        x, y = a == v, b == v
        scores.append(2.0 * np.count_nonzero(x & y) / (np.count_nonzero(x) + np.count_nonzero(y)))
    return float(np.mean(scores)) if scores else 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a medseg .pt checkpoint (default: random weights)")
    parser.add_argument("--ct", help="DICOM folder or NIfTI (default: synthetic 200x512x512)")
    parser.add_argument("--slices", type=int, default=200, help="slices of the synthetic CT")
    parser.add_argument("--model-spacing", type=float, nargs=3, metavar="MM")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backends", nargs="+", default=["openvino", "torch"],
                        choices=["torch", "onnxruntime", "openvino"])
    parser.add_argument("--no-body-crop", action="store_true",
                        help="medseg tiles the whole image (to compare with random weights, "
                        "which label air at random)")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--overlap", type=float, default=0.25, help=argparse.SUPPRESS)
    parser.add_argument("--blend", default="constant", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        _run_variant(args)
        return

    _, image, note = _load(args)
    body = "synthetic" if not args.ct else args.ct
    print(f"CT: {body}, shape {image.geometry.shape}, spacing {image.geometry.spacing_mm} mm; "
          f"{note}; {args.threads} threads; model spacing {args.model_spacing or 'as input'}; "
          f"medseg body crop {'off' if args.no_body_crop else 'on'}")
    del image
    passthrough = [a for a in sys.argv[1:]]
    ratios = []
    with tempfile.TemporaryDirectory() as folder:
        for overlap, blend in ((0.25, "constant"), (0.5, "gaussian")):
            print(f"\n== roi 96^3, sw_batch 4, overlap {overlap}, {blend} ==")
            results = {}
            for variant in ["monai", *args.backends]:
                out = Path(folder) / f"{variant}.npy"
                command = [sys.executable, __file__, *passthrough, "--variant", variant,
                           "--overlap", str(overlap), "--blend", blend, "--out", str(out)]
                done = subprocess.run(command, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    print(f"{variant}: FAILED\n{done.stderr[-2000:]}")
                    continue
                results[variant] = json.loads(done.stdout.strip().splitlines()[-1])
                labels = np.load(out)
                reference = np.load(Path(folder) / "monai.npy")
                results[variant]["dice"] = _dice(labels, reference)
                name = "MONAI sliding_window_inference" if variant == "monai" else (
                    f"medseg.infer.predict backend={variant}")
                r = results[variant]
                print(f"{name:45s} {r['seconds']:8.1f} s  peak RSS {r['peak_rss_mb']:7.0f} MB  "
                      f"Dice vs MONAI {r['dice']:.4f}")
            if "monai" in results and args.backends[0] in results:
                base, best = results["monai"], results[args.backends[0]]
                ratios.append((overlap, blend, base["seconds"] / best["seconds"],
                               best["peak_rss_mb"] / base["peak_rss_mb"], best["dice"]))
    for overlap, blend, speed, memory, dice in ratios:
        print(f"speed ratio (overlap {overlap} {blend}, medseg {args.backends[0]} vs MONAI): "
              f"{speed:.2f}x faster, peak memory {100 * memory:.0f}% of MONAI, Dice {dice:.4f}")


if __name__ == "__main__":
    main()
