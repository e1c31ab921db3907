"""Inference speed and memory: MONAI sliding_window_inference vs medseg.infer.predict.

Each variant runs in its own subprocess (so its peak RSS is its own) on the same weights and
the same CT, and writes its labels; the parent prints wall time, peak RSS and the label
agreement Dice of each medseg variant against the MONAI variant with the same windows, then
the speed ratio.

    .venv/bin/python benchmarks/infer_speed.py [--checkpoint best.pt] [--ct DICOM_DIR_OR_NIFTI]

Defaults (the issue's reference run):

* model: a tiny network trained by the benchmark itself first (the demo's UNet, channels
  8-64, on the demo's phantoms at 2.5 x 1.5 x 1.5 mm, ``--train-epochs`` epochs, about two
  minutes on 2 cores), so the label agreement is measured on a model that has learned
  something; ``--checkpoint`` uses yours; ``--random-unet`` a MONAI UNet of the size in
  FINDINGS.md (channels 16-256) with random but fixed weights (seed 0).
* CT: a 200 x 512 x 512 phantom at 2.5 x 0.977 x 0.977 mm (a 500 mm field of view; the
  demo's anatomy generator: body, lungs, spine, three tumours), written once as NIfTI;
  ``--ct`` takes a DICOM folder or NIfTI instead.
* The model's spacing (``preprocess.spacing_mm``) applies to both variants: MONAI gets the
  image resampled beforehand (not timed), medseg resamples to it and back inside its timed
  path. MONAI's logits are then brought back to the CT's grid as MONAI's ``Invertd`` would
  (linear interpolation, then argmax; untimed, after its peak memory is read), so the two
  label maps are compared on the CT's grid. ``--model-spacing`` overrides it.
* On a CUDA machine the GPU variants run too (``GPU_VARIANTS``: MONAI on the GPU, medseg's
  torch backend on the GPU in float32, float16 and bfloat16 autocast) with their peak GPU
  memory (``torch.cuda.max_memory_allocated``) and a "GPU speed ratio" line each.
* medseg runs with its own ``sw_batch_size`` default (``--medseg-sw-batch``), MONAI with 4;
  medseg runs each backend in float32 and, where this CPU computes bfloat16 natively, in
  ``infer.precision: auto`` (the default model is verified first, once, on its validation
  phantom for every backend and window setting benchmarked, the end-to-end ones included,
  as ``medseg verify-precision`` does: a record holds only for its backend and window
  settings), with the Dice of auto's labels against the same backend's float32;
  ``--precision`` runs only that precision (and sets the end-to-end runs', else auto).

``--workdir`` keeps the trained model and the CT between runs.

End to end (after the ratio lines): ``medseg predict`` as a user runs it (a fresh process: start-up,
DICOM loading, inference, RT-STRUCT, SEG, QA page) on a real CT (``--end-to-end``, default
``hn-ct/pt_1`` under ``$MEDSEG_TEST_DATA`` or ``../shared/data``), twice with the same weights:
with the model's own inference settings and with the settings ``nnUNetv2_predict`` uses by
default (step 0.5 of the window, Gaussian blending, mirroring along all three axes: 8
forward passes per window), so the cost of that test-time augmentation is printed beside
the plain run, with each run's per-stage seconds from its ``volumes.json`` and the Dice of
its labels against the plain run's.

Printed per variant: wall time of the call (the median of ``--repeats`` calls in one
process); peak RSS while it ran (the peak mark is reset just before it,
``/proc/self/clear_refs``) and the memory the call added on top of what was resident before it
(libraries, weights, the input image); the label Dice against MONAI's labels; on the default
phantom, the Dice against the phantom's true tumours; and, of the median call itself (its
network wrapped in a timer that costs microseconds per batch), how many windows the network
ran, its time per window and the time the call spent outside it ("the rest of the call"). A "network alone" line then says how much faster than MONAI medseg's
call could be if it spent nothing outside the network: the ceiling its per-window cost sets.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

BASELINE_SETTINGS = {"roi_size": (96, 96, 96), "sw_batch_size": 4}

#: The CPU blocks: (overlap, blend) of MONAI's and medseg's 96^3 windows.
BLOCKS = ((0.25, "constant"), (0.5, "gaussian"))

#: Run on a CUDA machine after the CPU variants: MONAI on the GPU (float32), and medseg's
#: torch backend on the GPU with each autocast precision.
GPU_VARIANTS = ("monai-cuda", "cuda-float32", "cuda-float16", "cuda-bfloat16")


def _random_unet_ct(shape: tuple[int, int, int]) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The CT used with ``--random-unet`` (unchanged from earlier runs, for comparison)."""
    rng = np.random.default_rng(0)
    _, rows, columns = shape
    j, i = np.ogrid[:rows, :columns]
    body = ((j - rows / 2) / (0.40 * rows)) ** 2 + ((i - columns / 2) / (0.45 * columns)) ** 2 < 1
    organ = ((j - rows / 2) / (0.12 * rows)) ** 2 + (
        (i - 0.6 * columns) / (0.10 * columns)
    ) ** 2 < 1
    plane = np.where(body, 40.0, -1000.0) + np.where(organ, 80.0, 0.0)
    hu = np.empty(shape, dtype=np.int16)
    for k in range(shape[0]):
        hu[k] = plane + rng.normal(0.0, 15.0, plane.shape) * body
    return hu, (2.5, 0.8, 0.8)


def _truth_path(ct_path: Path) -> Path:
    """Where the phantom's true tumour labels are kept, next to its CT."""
    return ct_path.with_name(ct_path.stem + "_truth.npy")


def _prepare_defaults(args: argparse.Namespace, workdir: Path) -> None:
    """Parent only: make the default CT and train the default model once (untimed)."""
    if args.ct is None and not args.random_unet:
        ct_path = workdir / f"phantom_{args.slices}x512x512.nii"
        if not ct_path.exists():
            from medseg.io import nifti
            from medseg.synthetic import phantom

            print(f"generating the {args.slices}x512x512 phantom CT (once) ...", flush=True)
            case = phantom.make_case(
                2024,
                shape=(args.slices, 512, 512),
                spacing_mm=(2.5, 0.977, 0.977),
                origin_mm=(-250.0, -250.0, -1.25 * args.slices),
                n_tumours=3,
                radius_range_mm=(8.0, 25.0),
            )
            nifti.save(case.image, ct_path)
            np.save(_truth_path(ct_path), np.asarray(case.labels.array))
        args.ct = str(ct_path)
    if args.checkpoint is None and not args.random_unet:
        checkpoint = workdir / "training" / "best.pt"
        if not checkpoint.exists():
            from medseg.config import load_config
            from medseg.training.train import train

            print(
                f"training the tiny demo model ({args.train_epochs} epochs, once) ...", flush=True
            )
            config = load_config(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml")
            config = config.model_copy(
                update={
                    "preprocess": config.preprocess.model_copy(
                        update={"spacing_mm": (2.5, 1.5, 1.5)}
                    ),
                    "train": config.train.model_copy(
                        update={"epochs": args.train_epochs, "val_every": args.train_epochs}
                    ),
                }
            )
            pairs = [(c.image, c.labels) for c in map(_training_phantom, range(8))]
            train(config, pairs[:7], pairs[7:], checkpoint.parent, None)
        args.checkpoint = str(_verified(args, checkpoint))


def _training_phantom(seed: int):  # type: ignore[no-untyped-def]
    """One case of the default model's data: the benchmark CT's field of view (500 mm) at the
    model spacing, so the CT is in the training distribution (the anatomy scales with the
    field). Seeds 0-6 train, seed 7 validates."""
    from medseg.synthetic import phantom

    return phantom.make_case(
        seed,
        shape=(48, 333, 333),
        spacing_mm=(2.5, 1.5, 1.5),
        origin_mm=(-249.75, -249.75, -60.0),
        n_tumours=3,
        radius_range_mm=(8.0, 25.0),
    )


def _verified(args: argparse.Namespace, checkpoint: Path) -> Path:
    """The default model verified (once, untimed, on its validation phantom) as
    ``medseg verify-precision`` does, for every window setting and backend the benchmark runs
    with a faster precision native to this CPU: a record holds only for the backend and the
    window settings it was measured with (``medseg.precision.SETTINGS``), and training
    verified only its own. Returns the checkpoint to benchmark: ``verified.pt`` beside
    ``checkpoint``, which keeps the records of earlier runs."""
    import torch

    from medseg.infer import verify_precision
    from medseg.model import load_checkpoint, with_extra
    from medseg.precision import EXTRA_KEY, inference_settings, native_precisions, read_verification

    verified = checkpoint.with_name("verified.pt")
    source = verified if verified.exists() else checkpoint
    model = load_checkpoint(source)
    wanted = [  # (backend, infer settings) of the CPU blocks, then of the end-to-end runs
        (backend, {"roi_size": BASELINE_SETTINGS["roi_size"], "overlap": o, "blend": b})
        for o, b in BLOCKS
        for backend in args.backends
    ]
    if args.end_to_end != "none":
        wanted += [(model.config.infer.backend, {}), (model.config.infer.backend, NNUNET_STYLE)]
    verification = read_verification(model)
    for backend, changes in wanted:
        at = model.with_infer(**changes)
        settings = inference_settings(at.config.infer)
        if all(
            verification is not None
            and verification.record(p, backend, "cpu", settings) is not None
            for p in native_precisions("cpu", backend)
        ):
            continue
        print(f"verifying {backend} with {settings} on the validation phantom (once) ...")
        torch.set_num_threads(args.threads)
        image = _training_phantom(7).image
        verification = verify_precision(at, [image], backends=[backend]).merged(verification)
    if verification is not None and verification != read_verification(model):
        with_extra(source, verified, {EXTRA_KEY: verification.to_json()})
    return verified if verified.exists() else checkpoint


def _load(args: argparse.Namespace):
    import torch

    import medseg
    from medseg.config import load_config
    from medseg.geometry import Geometry
    from medseg.model import LoadedModel, build_network, load_checkpoint
    from medseg.training import data
    from medseg.volume import Volume

    if args.checkpoint:
        model = load_checkpoint(Path(args.checkpoint))
        note = f"weights: trained checkpoint {args.checkpoint}"
    else:
        config = load_config(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml")
        network_config = config.model.model_copy(
            update={"channels": (16, 32, 64, 128, 256), "strides": (2, 2, 2, 2), "num_res_units": 2}
        )
        config = config.model_copy(update={"model": network_config})
        torch.manual_seed(0)
        network = build_network(config.model).eval()
        model = LoadedModel(network, config, config.model.label_names, medseg.__version__)
        note = "weights: RANDOM but fixed (seed 0), UNet channels 16-256, 2 classes"
    if args.model_spacing:
        pre = model.config.preprocess.model_copy(update={"spacing_mm": tuple(args.model_spacing)})
        model = dataclasses.replace(
            model, config=model.config.model_copy(update={"preprocess": pre})
        )
    if args.ct:
        image = data.load_image(Path(args.ct))
        # resident before any timed call, as for every variant: a NIfTI is memory-mapped,
        # and its pages read by the first call would count as memory that call added
        image = dataclasses.replace(image, array=np.array(image.array))
    else:
        hu, spacing = _random_unet_ct((args.slices, 512, 512))
        image = Volume(hu, Geometry(hu.shape, spacing, (0.0, 0.0, 0.0)))
    return model, image, note


def _run_variant(args: argparse.Namespace) -> None:
    """Child process: run one variant, save its labels, print a JSON line."""
    import torch

    from medseg import preprocess
    from medseg.infer import predict

    torch.set_num_threads(args.threads)
    model, image, _ = _load(args)
    overlap, blend = args.overlap, args.blend
    cuda = args.variant in GPU_VARIANTS
    used = "float32"  # MONAI's; medseg's is what its infer.precision resolves to
    if cuda:
        model.network.cuda()
        torch.cuda.reset_peak_memory_stats()
    if args.variant in ("monai", "monai-cuda"):
        from monai.inferers import sliding_window_inference

        if model.config.preprocess.spacing_mm is not None:  # "the same preprocessed input"
            grid = preprocess.model_grid(image.geometry, model.config.preprocess.spacing_mm)
            image = preprocess.resample(image, grid)
        scaled = preprocess.scale_intensity(image, model.config.preprocess).array

        def call(network: Any = model.network) -> tuple[torch.Tensor, np.ndarray]:
            with torch.inference_mode():
                x = torch.from_numpy(np.array(scaled))[None, None]
                if cuda:
                    x = x.cuda()
                out = sliding_window_inference(
                    x,
                    BASELINE_SETTINGS["roi_size"],
                    BASELINE_SETTINGS["sw_batch_size"],
                    network,
                    overlap,
                    blend,
                )
                assert isinstance(out, torch.Tensor)
                return out.cpu(), out.argmax(1)[0].to(torch.uint8).cpu().numpy()

        counter = _NetworkTime(cuda)
        wrapped = counter.wrap(model.network)
        (logits, labels), seconds, before_mb, peak_mb, counted = _timed(
            lambda: call(wrapped), args.repeats, counter
        )
        peak_mb = _status_mb("VmHWM")  # the call's peak, before the untimed mapping back
        if model.config.preprocess.spacing_mm is not None:  # back for the comparison, untimed
            # as MONAI's Invertd would: the logits interpolated linearly onto the CT's grid,
            # then the argmax (resample_scores_to_labels is tested against SimpleITK)
            original = _load(args)[1]
            labels = preprocess.resample_scores_to_labels(
                logits[0].numpy().astype(np.float16), image.geometry, original.geometry
            )
    else:
        backend, _, precision = args.variant.partition(":")
        if cuda:
            backend, precision = "torch", args.variant.removeprefix("cuda-")
        # the copy keeps the checkpoint's extra (its precision verification)
        model = model.with_infer(
            roi_size=BASELINE_SETTINGS["roi_size"],
            overlap=overlap,
            blend=blend,
            sw_batch_size=args.medseg_sw_batch,
            backend=backend,
            num_threads=args.threads,
            **({"precision": precision} if precision else {}),
            **({"body_threshold_hu": None} if args.no_body_crop else {}),
        )
        infer = model.config.infer
        from medseg.precision import choose

        used = choose(model)[0]  # what predict() runs in (infer.precision auto resolved)
        if not cuda and backend != "torch":  # export and session once per model, untimed
            from medseg.runtime import onnx_predictor

            onnx_predictor(
                model.network,
                backend,
                infer.roi_size,
                precision=used,
                num_threads=args.threads,
                batch_size=infer.sw_batch_size,
            )
        counter = _NetworkTime(cuda)
        with _counting_medseg_network(counter):
            labels, seconds, before_mb, peak_mb, counted = _timed(
                lambda: predict(model, image).array, args.repeats, counter
            )
    np.save(args.out, labels)
    gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    print(
        json.dumps(
            {
                "seconds": seconds,
                "precision": used,
                "peak_rss_mb": peak_mb,
                "added_mb": peak_mb - before_mb,
                "gpu_peak_mb": gpu_mb,
                **counted,
            }
        )
    )


class _NetworkTime:
    """Windows run and seconds spent in the network, counted since the last :meth:`reset`."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.counted = {"windows": 0, "network_seconds": 0.0}

    def reset(self) -> None:
        """Start counting again from nothing."""
        self.counted = {"windows": 0, "network_seconds": 0.0}

    def wrap(self, network):  # type: ignore[no-untyped-def]
        """``network`` (a batch of windows in, logits out), counting its windows and time."""

        def run(batch):  # type: ignore[no-untyped-def]
            import torch

            started = time.perf_counter()
            out = network(batch)
            if self.cuda:
                torch.cuda.synchronize()
            self.counted["windows"] += batch.shape[0]
            self.counted["network_seconds"] += time.perf_counter() - started
            return out

        return run


@contextlib.contextmanager
def _counting_medseg_network(counter: _NetworkTime):  # type: ignore[no-untyped-def]
    """Inside the ``with``, medseg's predictor (the network, whatever the backend) counted by
    ``counter``."""
    import medseg.infer as infer_module

    original = infer_module._inference_settings

    @contextlib.contextmanager
    def counting(loaded):  # type: ignore[no-untyped-def]
        with original(loaded) as predictor:
            yield counter.wrap(predictor)

    infer_module._inference_settings = counting
    try:
        yield
    finally:
        infer_module._inference_settings = original


def _timed(call, repeats: int, counter: _NetworkTime):  # type: ignore[no-untyped-def]
    """``call()`` run ``repeats`` times: (its last result, the median wall time, RSS before the
    first call and peak RSS during the first call, in MB, and ``counter``'s count of the call
    whose time is the median). The first call's memory is the cold one; the median damps the
    other processes of a shared 2-core machine, and the network's share is that same call's,
    so "the rest of the call" is one call's wall time minus its own network time."""
    before_mb = _start_peak_window()
    calls, result, peak_mb = [], None, 0.0
    for index in range(repeats):
        result = None  # the previous result is freed before the next call
        counter.reset()
        started = time.perf_counter()
        result = call()
        calls.append((time.perf_counter() - started, dict(counter.counted)))
        if index == 0:
            peak_mb = _status_mb("VmHWM")
    seconds, counted = sorted(calls, key=lambda c: c[0])[(len(calls) - 1) // 2]
    return result, seconds, before_mb, peak_mb, counted


def _status_mb(field: str) -> float:
    """``VmRSS``/``VmHWM`` of this process from /proc (getrusage's ru_maxrss is inherited
    across fork, so a child would report its parent's peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"{field} not in /proc/self/status")


def _start_peak_window() -> float:
    """Reset the peak-RSS mark (Linux ``clear_refs`` 5) and return the RSS now, in MB: the
    peak reported afterwards is the peak of the timed call, and ``peak - now`` is the memory
    the call itself added (libraries, model, input image are already resident)."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_mb("VmRSS")


def _per_window(result: dict) -> float:  # type: ignore[type-arg]
    """Seconds of network time per window of one variant's counted call."""
    return float(result["network_seconds"]) / int(result["windows"])


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
    parser.add_argument("--checkpoint", help="a medseg .pt checkpoint (default: train one)")
    parser.add_argument("--ct", help="DICOM folder or NIfTI (default: phantom 200x512x512)")
    parser.add_argument("--slices", type=int, default=200, help="slices of the phantom CT")
    parser.add_argument(
        "--random-unet",
        action="store_true",
        help="random UNet 16-256 on the elliptic CT of earlier runs",
    )
    parser.add_argument(
        "--train-epochs", type=int, default=40, help="epochs of the default model's training"
    )
    parser.add_argument("--workdir", help="keep the default CT and model here (default: temp)")
    parser.add_argument("--model-spacing", type=float, nargs=3, metavar="MM")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--backends",
        nargs="+",
        default=["openvino", "torch"],
        choices=["torch", "onnxruntime", "openvino"],
    )
    parser.add_argument(
        "--no-body-crop",
        action="store_true",
        help="medseg tiles the whole image (to compare with random weights, "
        "which label air at random)",
    )
    from medseg.config import InferConfig

    default_batch = InferConfig.model_fields["sw_batch_size"].default
    parser.add_argument(
        "--medseg-sw-batch",
        type=int,
        default=default_batch,
        help="windows per forward pass for medseg (default: medseg's "
        f"InferConfig default, {default_batch}; MONAI runs 4)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="timed calls per variant; the median is printed (default 3)",
    )
    parser.add_argument(
        "--precision",
        choices=["auto", "float32", "bfloat16"],
        default=None,
        help="medseg's infer.precision (default: float32, and auto where this CPU has a "
        "native faster precision)",
    )
    parser.add_argument(
        "--no-gpu", action="store_true", help="skip the CUDA variants even where a GPU is present"
    )
    parser.add_argument(
        "--end-to-end",
        help="DICOM folder for the end-to-end medseg predict runs (default: hn-ct/pt_1 of the "
        "shared data; 'none' skips them)",
    )
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--overlap", type=float, default=0.25, help=argparse.SUPPRESS)
    parser.add_argument("--blend", default="constant", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        _run_variant(args)
        return

    keep = tempfile.TemporaryDirectory(prefix="medseg-infer-bench-")
    workdir = Path(args.workdir) if args.workdir else Path(keep.name)
    workdir.mkdir(parents=True, exist_ok=True)
    _prepare_defaults(args, workdir)
    model, image, note = _load(args)
    body = "synthetic" if not args.ct else args.ct
    print(
        f"CT: {body}, shape {image.geometry.shape}, spacing {image.geometry.spacing_mm} mm; "
        f"{note}; {args.threads} threads; model spacing "
        f"{model.config.preprocess.spacing_mm or 'as input'}; "
        f"medseg body crop {'off' if args.no_body_crop else 'on'}"
    )
    del image
    truth_file = _truth_path(Path(args.ct)) if args.ct else None
    truth = np.load(truth_file) if truth_file is not None and truth_file.exists() else None
    passthrough = [a for a in sys.argv[1:]]
    passthrough += [
        *(["--ct", args.ct] if args.ct else []),
        *(["--checkpoint", args.checkpoint] if args.checkpoint else []),
    ]
    import torch

    gpu = list(GPU_VARIANTS) if torch.cuda.is_available() and not args.no_gpu else []
    if not gpu:
        print("GPU variants not run: " + ("--no-gpu" if args.no_gpu else "no CUDA device"))
    medseg_variants = _medseg_variants(args)
    # the ratio lines compare MONAI with the first backend in its fastest asked precision
    lead = [v for v in medseg_variants if v.startswith(args.backends[0] + ":")][-1]
    lead_name = lead.replace(":", " ")
    ratios = []
    with tempfile.TemporaryDirectory() as folder:
        for overlap, blend in BLOCKS:
            print(
                f"\n== roi 96^3, overlap {overlap}, {blend}; sw_batch MONAI 4, medseg "
                f"{args.medseg_sw_batch}; medseg precision {args.precision or 'float32 and auto'} =="
            )
            results = {}
            for variant in ["monai", *medseg_variants, *gpu]:
                out = Path(folder) / f"{variant}.npy"
                command = [
                    sys.executable,
                    __file__,
                    *passthrough,
                    "--variant",
                    variant,
                    "--overlap",
                    str(overlap),
                    "--blend",
                    blend,
                    "--out",
                    str(out),
                ]
                done = subprocess.run(command, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    print(f"{variant}: FAILED\n{done.stderr[-2000:]}")
                    continue
                results[variant] = json.loads(done.stdout.strip().splitlines()[-1])
                labels = np.load(out)
                reference = np.load(Path(folder) / "monai.npy")
                r = results[variant]
                r["dice"] = _dice(labels, reference)
                truth_note = "" if truth is None else f"  Dice vs truth {_dice(labels, truth):.4f}"
                backend, _, asked = variant.partition(":")
                own_float32 = Path(folder) / f"{backend}:float32.npy"
                if r["precision"] != "float32" and own_float32.exists():
                    r["dice_float32"] = _dice(labels, np.load(own_float32))
                    truth_note += f"  Dice vs medseg float32 {r['dice_float32']:.4f}"
                name = {
                    "monai": "MONAI sliding_window_inference",
                    "monai-cuda": "MONAI sliding_window_inference on CUDA",
                }.get(variant, f"medseg.infer.predict backend={backend}")
                if variant not in ("monai", "monai-cuda"):
                    name += f" {r['precision']}" + (" (auto)" if asked == "auto" else "")
                gpu_note = (
                    ""
                    if r.get("gpu_peak_mb") is None
                    else (f"  peak GPU memory {r['gpu_peak_mb']:6.0f} MB")
                )
                print(
                    f"{name:45s} {r['seconds']:7.1f} s  peak RSS {r['peak_rss_mb']:6.0f} MB "
                    f"(+{r['added_mb']:5.0f} MB by the call)  Dice vs MONAI {r['dice']:.4f}"
                    + truth_note
                    + gpu_note
                )
                if r["windows"]:
                    print(
                        f"{'':45s} network: {r['windows']} windows, "
                        f"{1000 * r['network_seconds'] / r['windows']:.0f} ms per window; "
                        f"the rest of the call {r['seconds'] - r['network_seconds']:.1f} s"
                    )
            if "monai" in results and lead in results:
                base, best = results["monai"], results[lead]
                ratios.append(
                    (
                        overlap,
                        blend,
                        base["seconds"] / best["seconds"],
                        best["peak_rss_mb"] / base["peak_rss_mb"],
                        best["added_mb"] / base["added_mb"],
                        best["dice"],
                        best.get("dice_float32"),
                        best["precision"],
                    )
                )
                if base["windows"] and best["windows"]:
                    # what the ratio could be if medseg spent nothing outside the network
                    print(
                        f"network alone: medseg {lead_name} runs {best['windows']} of "
                        f"MONAI's {base['windows']} windows at "
                        f"{_per_window(base) / _per_window(best):.2f}x "
                        f"MONAI's speed per window; with no other work the call would be "
                        f"{base['seconds'] / best['network_seconds']:.2f}x faster than MONAI's"
                    )
            if "monai-cuda" in results:
                for variant in gpu[1:]:
                    if variant in results:
                        r = results[variant]
                        print(
                            f"GPU speed ratio (overlap {overlap} {blend}, medseg {variant} vs "
                            f"MONAI on CUDA): "
                            f"{results['monai-cuda']['seconds'] / r['seconds']:.2f}x faster, "
                            f"peak GPU memory {r['gpu_peak_mb']:.0f} MB vs "
                            f"{results['monai-cuda']['gpu_peak_mb']:.0f} MB, "
                            f"Dice vs MONAI (CPU) {r['dice']:.4f}"
                        )
    for overlap, blend, speed, memory, added, dice, dice_float32, used in ratios:
        versus_float32 = "" if dice_float32 is None else f", Dice vs float32 {dice_float32:.4f}"
        print(
            f"speed ratio (overlap {overlap} {blend}, medseg {lead_name} in {used} vs MONAI): "
            f"{speed:.2f}x faster, peak RSS {100 * memory:.0f}% of MONAI, memory added by "
            f"the call {100 * added:.0f}% of MONAI's, Dice vs MONAI {dice:.4f}{versus_float32}"
        )
    _end_to_end(args, model, workdir)


def _medseg_variants(args: argparse.Namespace) -> list[str]:
    """medseg's CPU variants as ``backend:precision``: with ``--precision`` that precision on
    every backend; by default float32 and, where this CPU computes a faster precision
    natively for the backend, ``auto`` (what the verified model runs in) after it."""
    from medseg.precision import native_precisions

    if args.precision:
        return [f"{backend}:{args.precision}" for backend in args.backends]
    variants = []
    for backend in args.backends:
        variants.append(f"{backend}:float32")
        if native_precisions("cpu", backend):
            variants.append(f"{backend}:auto")
    return variants


#: ``nnUNetv2_predict``'s defaults as medseg's inference settings: tile step 0.5, Gaussian
#: blending, mirroring along every axis (nnU-Net's ``use_mirroring`` with all three axes).
NNUNET_STYLE = {"overlap": 0.5, "blend": "gaussian", "flip_tta": (0, 1, 2)}


def _end_to_end(args: argparse.Namespace, model, workdir: Path) -> None:  # type: ignore[no-untyped-def]
    """``medseg predict`` in a fresh process on a real CT, with the model's inference settings
    and with nnU-Net's (:data:`NNUNET_STYLE`); prints wall time, stage seconds, Dice."""
    import os

    from medseg.io import nifti
    from medseg.model import save_checkpoint
    from medseg.volume import VolumeKind

    if args.end_to_end == "none":
        return
    if args.end_to_end is None:
        data = os.environ.get("MEDSEG_TEST_DATA") or str(
            Path(__file__).resolve().parents[2] / "shared" / "data"
        )
        args.end_to_end = str(Path(data) / "hn-ct" / "pt_1")
    ct = Path(args.end_to_end)
    if not ct.is_dir():
        print(f"\nend to end not run: {ct} is not a DICOM folder (--end-to-end DIR)")
        return
    print(
        f"\n== end to end: medseg predict on {ct} in a fresh process (start-up, DICOM, "
        f"inference, RT-STRUCT, SEG, QA page), {args.threads} threads =="
    )
    settings = {
        "model's settings": {},
        "nnUNetv2_predict-style (step 0.5, gaussian, 8-way mirroring)": NNUNET_STYLE,
    }
    runs = {}
    for name, changes in settings.items():
        infer = model.config.infer.model_copy(update={**changes, "num_threads": args.threads})
        # as configured by --precision, else auto: what the verification allows
        infer = infer.model_copy(update={"precision": args.precision or "auto"})
        config = model.config.model_copy(update={"infer": infer})
        checkpoint = save_checkpoint(
            workdir / f"end_to_end_{len(runs)}.pt", model.network, config, dict(model.extra)
        )
        out = workdir / f"end_to_end_{len(runs)}"
        started = time.perf_counter()
        command = [sys.executable, "-m", "medseg", "predict", "--model", str(checkpoint)]
        done = subprocess.run(
            [*command, str(ct), str(out), "--overwrite"],
            capture_output=True,
            text=True,
            check=False,
        )
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            print(f"{name}: FAILED\n{done.stderr[-2000:]}")
            continue
        volumes = json.loads((out / "volumes.json").read_text())
        labels = np.asarray(nifti.load(out / "labels.nii.gz", VolumeKind.LABELS).array)
        runs[name] = (seconds, volumes, labels)
        stages = volumes["stage_seconds"]
        plain = next(iter(runs.values()))
        versus = (
            "the plain run"
            if len(runs) == 1
            else f"{seconds / plain[0]:.2f}x the plain run; Dice vs the plain run "
            f"{_dice(labels, plain[2]):.4f}"
        )
        print(
            f"{name:62s} {seconds:6.1f} s wall, {versus}; network in "
            f"{volumes['precision']['used']}\n{'':62s} "
            + ", ".join(f"{stage} {value:.2f}" for stage, value in stages.items())
            + f" s (stages {sum(stages.values()):.1f} s; start-up and the rest "
            f"{seconds - sum(stages.values()):.1f} s)"
        )


if __name__ == "__main__":
    main()
