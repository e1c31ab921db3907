"""RT-STRUCT export: medseg vs rt-utils on the same CT series and masks, checked independently.

Run from the repository root::

    .venv/bin/python -m pip install -c requirements.lock -e ".[bench]"   # rt-utils
    .venv/bin/python benchmarks/rtstruct_export.py [--data ../shared/data] [--scans all]

Part 1: a 65 mL sphere and a 1 mL lesion on a 200-slice 512 x 512 CT written by
``io.dicom.write_series``. Part 2: every ``hn-oar-labels`` organ of every scan by both
annotators (or the scans named by ``--scans``), each scan on a blank CT written on the label
maps' full grid; the first scan prints its full table, then per organ the worst and median
volume ratio over all scans, and the summed export times. For each exporter: export time (the CT folder
and the masks in memory to the file on disk, including the exporter's own reading of the CT
series), ``dciodvfy`` Error lines, and per ROI the volume ratio and Dice of plastimatch's
rasterisation against the source mask. Needs plastimatch and dciodvfy on PATH and rt-utils in
the environment.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray

from medseg import geometry as geo
from medseg.geometry import Geometry
from medseg.io import nifti, rtstruct
from medseg.io.dicom import load_series, write_series
from medseg.io.rtstruct import RoiSpec
from medseg.volume import Volume, VolumeKind

Masks = dict[str, NDArray[np.bool_]]


def dciodvfy_error_count(path: Path) -> int:
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    return sum(line.startswith("Error") for line in (result.stdout + result.stderr).splitlines())


def plastimatch_rasterise(rtss: Path, ct_dir: Path, out_dir: Path) -> Masks:
    """ROI name -> plastimatch's mask (array order), via one bit-packed structure image."""
    out_dir.mkdir(parents=True, exist_ok=True)
    image_path, list_path = out_dir / "ss.nrrd", out_dir / "ss.txt"
    subprocess.run(
        ["plastimatch", "convert", "--input", str(rtss), "--referenced-ct", str(ct_dir),
         "--output-ss-img", str(image_path), "--output-ss-list", str(list_path)],
        capture_output=True, check=True,
    )  # fmt: skip
    packed = sitk.GetArrayFromImage(sitk.ReadImage(str(image_path)))
    if packed.ndim == 3:
        packed = packed[..., None]
    masks: Masks = {}
    for line in list_path.read_text().splitlines():
        if line.strip():
            bit, _color, name = line.split("|", 2)
            masks[name] = ((packed[..., int(bit) // 8] >> (int(bit) % 8)) & 1).astype(bool)
    return masks


def export_medseg(ct_dir: Path, masks: Masks, out: Path) -> None:
    reference = load_series(ct_dir)
    pairs = [
        (RoiSpec(name, 1), Volume(mask.view(np.uint8), reference.geometry, VolumeKind.LABELS))
        for name, mask in masks.items()
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # empty ROIs are reported by the table
        rtstruct.write_masks(pairs, reference, out)


def export_rt_utils(ct_dir: Path, masks: Masks, out: Path) -> None:
    from rt_utils import RTStructBuilder

    builder = RTStructBuilder.create_new(dicom_series_path=str(ct_dir))
    for name, mask in masks.items():
        if mask.any():  # rt-utils refuses empty masks
            # rt-utils wants (row, column, slice) in its own (ascending position) slice order,
            # which is medseg's array order for these axial series
            builder.add_roi(mask=np.transpose(mask, (1, 2, 0)), name=name)
    builder.save(str(out))


EXPORTERS: dict[str, Callable[[Path, Masks, Path], None]] = {
    "medseg": export_medseg,
    "rt-utils": export_rt_utils,
}


def run_case(label: str, ct_dir: Path, masks: Masks, work: Path) -> dict[str, dict[str, object]]:
    results: dict[str, dict[str, object]] = {}
    for name, export in EXPORTERS.items():
        out = work / f"{label}-{name}.dcm"
        start = time.perf_counter()
        try:
            export(ct_dir, masks, out)
        except Exception as exc:  # noqa: BLE001 - a benchmark reports any exporter failure
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        seconds = time.perf_counter() - start
        errors = dciodvfy_error_count(out)
        raster = plastimatch_rasterise(out, ct_dir, work / f"{label}-{name}-pm")
        per_roi = {}
        for roi, mask in masks.items():
            theirs = raster.get(roi, np.zeros_like(mask))
            n = int(mask.sum())
            both = int(np.count_nonzero(theirs & mask))
            total = n + int(theirs.sum())
            per_roi[roi] = (
                int(theirs.sum()) / n if n else float("nan"),
                2 * both / total if total else 1.0,
            )
        results[name] = {
            "seconds": seconds, "errors": errors, "per_roi": per_roi, "kB": out.stat().st_size // 1000,
        }  # fmt: skip
    return results


def print_case(
    title: str, masks: Masks, results: dict[str, dict[str, object]], voxel_ml: float
) -> None:
    print(f"\n## {title}")
    for name, result in results.items():
        if "error" in result:
            print(f"{name:>9}: FAILED {result['error']}")
            continue
        print(
            f"{name:>9}: export {result['seconds']:.2f} s, {result['kB']} kB, "
            f"dciodvfy Error lines {result['errors']}"
        )
    exporters = [n for n in results if "error" not in results[n]]
    header = f"{'ROI':<18}{'mL':>9}" + "".join(
        f"{n + ' ratio':>16}{n + ' Dice':>15}" for n in exporters
    )
    print(header)
    for roi, mask in masks.items():
        row = f"{roi:<18}{mask.sum() * voxel_ml:>9.3f}"
        for n in exporters:
            ratio, d = results[n]["per_roi"][roi]  # type: ignore[index]
            row += f"{ratio:>16.4f}{d:>15.4f}"
        print(row)
    for n in exporters:
        values = [v for v in results[n]["per_roi"].values() if not np.isnan(v[0])]  # type: ignore[union-attr]
        ratios = [r for r, _ in values]
        dices = [d for _, d in values]
        worst = max(ratios, key=lambda r: abs(r - 1.0))
        print(
            f"{n:>9}: volume ratio worst {worst:.4f}, median {statistics.median(ratios):.4f}; "
            f"Dice worst {min(dices):.4f}, median {statistics.median(dices):.4f}"
        )
    if len(exporters) == 2:
        a, b = (results[n]["seconds"] for n in exporters)
        print(f"time ratio {exporters[1]}/{exporters[0]}: {b / a:.2f}x")  # type: ignore[operator]


def _ball(g: Geometry, centre: tuple[float, float, float], volume_ml: float) -> NDArray[np.bool_]:
    radius_mm = (3.0 * volume_ml * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)
    k, j, i = np.ogrid[: g.shape[0], : g.shape[1], : g.shape[2]]
    d2 = sum(
        ((axis - c) * s) ** 2 for axis, c, s in zip((k, j, i), centre, g.spacing_mm, strict=True)
    )
    return np.asarray(d2 <= radius_mm**2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data"
    )
    parser.add_argument("--scans", default="all", help="'all' or comma-separated scan folders")
    args = parser.parse_args()
    for tool in ("plastimatch", "dciodvfy"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed", file=sys.stderr)
            return 2
    import rt_utils  # noqa: F401 - fail early with ImportError if missing

    work = Path(tempfile.mkdtemp(prefix="rtstruct-bench-"))
    try:
        # part 1: synthetic
        g = Geometry((200, 512, 512), (2.5, 0.9765625, 0.9765625), (-249.5, -249.5, -250.0))
        write_series(Volume(np.full(g.shape, -1000, np.int16), g), work / "ct-synthetic")
        masks = {
            "sphere 65 mL": _ball(g, (100.3, 250.6, 260.2), 65.0),
            "lesion 1 mL": _ball(g, (60.2, 330.4, 170.7), 1.0),
        }
        results = run_case("synthetic", work / "ct-synthetic", masks, work)
        print_case(
            "200 x 512 x 512 CT: 65 mL sphere + 1 mL lesion", masks, results, geo.voxel_volume_ml(g)
        )

        # part 2: real organs, every scan of both annotators
        root = args.data / "hn-oar-labels"
        folders = sorted(root.glob("*/*/segmentations"))
        if args.scans != "all":
            wanted = set(args.scans.split(","))
            folders = [f for f in folders if f.parent.name in wanted]
        ratios: dict[str, dict[str, list[float]]] = {name: {} for name in EXPORTERS}
        seconds = dict.fromkeys(EXPORTERS, 0.0)
        errors = dict.fromkeys(EXPORTERS, 0)
        for n, folder in enumerate(folders):
            label = f"{folder.parent.parent.name}/{folder.parent.name}"
            paths = sorted(folder.glob("*.nrrd"))
            with ThreadPoolExecutor(max_workers=2) as pool:
                organs = list(pool.map(lambda p: nifti.load(p, VolumeKind.LABELS), paths))
            grid = organs[0].geometry
            ct_dir = work / f"ct-hn-{n}"
            write_series(Volume(np.full(grid.shape, -1000, np.int16), grid), ct_dir)
            masks = {
                p.name.removesuffix(".nrrd"): np.asarray(o.array) > 0
                for p, o in zip(paths, organs, strict=True)
            }
            results = run_case(f"hn{n}", ct_dir, masks, work)
            if n == 0:
                print_case(
                    f"hn-oar-labels/{label}: {len(masks)} organs on {grid.shape}",
                    masks, results, geo.voxel_volume_ml(grid),
                )  # fmt: skip
            line = f"{label:<34}"
            for name, result in results.items():
                if "error" in result:
                    line += f"  {name}: FAILED"
                    continue
                seconds[name] += float(result["seconds"])  # type: ignore[arg-type]
                errors[name] += int(result["errors"])  # type: ignore[call-overload]
                line += f"  {name} {result['seconds']:.2f} s, {result['errors']} errors"
                for roi, (ratio, _d) in result["per_roi"].items():  # type: ignore[attr-defined]
                    if not np.isnan(ratio):
                        ratios[name].setdefault(roi, []).append(ratio)
            print(line)
            shutil.rmtree(ct_dir, ignore_errors=True)
        print(f"\n## every hn-oar-labels organ: {len(folders)} scans x annotators")
        print(
            f"{'organ':<18}" + "".join(f"{n + ' worst':>16}{n + ' median':>16}" for n in EXPORTERS)
        )
        for roi in sorted(ratios["medseg"]):
            row = f"{roi:<18}"
            for name in EXPORTERS:
                values = ratios[name].get(roi, [float("nan")])
                worst = max(values, key=lambda r: abs(r - 1.0))
                row += f"{worst:>16.4f}{statistics.median(values):>16.4f}"
            print(row)
        for name in EXPORTERS:
            every = [r for values in ratios[name].values() for r in values]
            worst = max(every, key=lambda r: abs(r - 1.0))
            print(
                f"{name:>9}: {seconds[name]:.2f} s in all, dciodvfy Error lines {errors[name]}, "
                f"volume ratio worst {worst:.4f} over {len(every)} organs"
            )
        print(
            f"time ratio rt-utils/medseg over all scans: {seconds['rt-utils'] / seconds['medseg']:.2f}x"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
