"""How the RT-STRUCT readers people use rasterise medseg's RT-STRUCT (volume ratio and Dice).

Run from the repository root::

    .venv/bin/python benchmarks/readers.py [--cases default|all|NAME ...] [--work DIR] [--check]

What it measures: for every case (a CT series and one source mask per ROI), medseg writes an
RT-STRUCT with ``io.rtstruct.write_masks`` (the TotalSegmentator case through
``io.rois.export_rtstruct``, as users run it), and each reader turns it back into masks on the
CT grid. Per (exporter, reader, case) the table shows the ROIs' volume ratio (reader volume /
source-mask volume; median and the one farthest from 1) and the smallest Dice. As a baseline
the same masks are also exported by rt-utils' ``RTStructBuilder`` and read by every reader.
``dciodvfy`` Error lines are counted for each RT-STRUCT. A ROI of at least
:data:`MIN_JUDGED_ML` is exact when its ratio is within :data:`MAX_VOLUME_ERROR` of 1 and its
Dice at least :data:`MIN_DICE`; an empty ROI is exact when it reads back empty without an error.
The last line says whether every medseg row is exact; ``--check`` then exits 1 if not.
The ``medseg-subvoxel`` rows are medseg's sub-voxel export (``export.contours: subvoxel``) of
probabilities made by smoothing the masks, scored against plastimatch's reading of that file
(see :func:`export_medseg_subvoxel`): readers must agree on what the smooth contours hold. Empty ROIs
(the phantom's ``empty``, organs missing from a scan) are exported as medseg does by default, or
as ``--empty keep`` (written without ContourSequence: rt-utils 1.2.7 raises AttributeError on
those) or ``--empty omit`` says; the export lines count the ROIs written without contours.

Readers, none of which uses medseg's code (medseg only builds the cases, writes the CT and
the RT-STRUCT, and moves a reader's array onto the CT grid when the reader stores its slices
in another order, by an exact index permutation, ``geometry.reorder_to_grid``):

* plastimatch (Debian package): ``plastimatch convert --input RTSS --referenced-ct CT``, with
  ``--output-ss-img`` (one bit-packed image; the same rasteriser as ``--output-prefix``).
* rt-utils: ``RTStructBuilder.create_from(...).get_roi_mask_by_name(name)``.
* platipy: ``transform_point_set_from_dicom_struct`` (what ``convert_rtstruct`` calls).
* dicompyler-core: ``dvhcalc.get_dvh`` on a uniform 1 Gy RT Dose written on the CT grid, so the
  DVH's total volume is the structure's volume (volume only, no Dice).
* dcmjs (node): parse the RT-STRUCT and the CT headers with dcmjs, then fill the voxels whose
  centre lies inside a contour of their slice, as the OHIF viewer's RT path (cornerstone's
  contour-to-labelmap) does; see ``readers_side/dcmjs_reader.js``.

The side environments: rt-utils, platipy and dicompyler-core need pydicom < 3 (medseg needs
pydicom 3), so they run as subprocesses (``readers_side/side_readers.py``) in a virtualenv this
script builds under ``--cache`` (default ``~/.cache/medseg-bench``) as ``readers-venv``, from
the full pins in ``readers_side/requirements.txt``; it is reused while the file's hash matches.
dcmjs is installed there too (``readers-node``) with ``npm ci`` from ``readers_side``'s
``package.json`` and ``package-lock.json`` (dcmjs 0.51.1: 0.52 requires node >= 22.13, Debian 12
has node 20). Needs plastimatch, dciodvfy, node and npm on PATH.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import SimpleITK as sitk
from numpy.typing import NDArray

from medseg import geometry as geo
from medseg.geometry import Geometry
from medseg.io import nifti, rtstruct
from medseg.io.dicom import load_series, write_series
from medseg.io.rois import export_rtstruct
from medseg.synthetic import phantom
from medseg.volume import Volume, VolumeKind

try:  # the ROI type is being renamed; keep the one place to adapt here
    from medseg.structures import Structure  # type: ignore[import-not-found]
except ImportError:
    from medseg.io.rtstruct import RoiSpec as Structure

REPO = Path(__file__).resolve().parents[1]
SIDE = Path(__file__).resolve().parent / "readers_side"
Masks = dict[str, NDArray[np.bool_]]

#: Criteria for "exact", per ROI of at least MIN_JUDGED_ML.
MAX_VOLUME_ERROR = 0.005
MIN_DICE = 0.99
MIN_JUDGED_ML = 0.05

HN_SCANS = (
    "0522c0014",
    "0522c0519",
    "0522c0576",
    "0522c0727a",
    "0522c0727b",
    "TCGA-CV-5977",
    "TCGA-CV-5978",
)
HN_ANNOTATORS = ("oncologist", "radiographer")
DEFAULT_CASES = ("phantom", "totalseg", "hn/0522c0014", "hn/TCGA-CV-5977")
ALL_CASES = ("phantom", "totalseg", *(f"hn/{scan}" for scan in HN_SCANS))
#: Voxels kept around the union of all organs when cropping the hn grid (slices, rows, columns).
CROP_MARGIN_VOXELS = (2, 8, 8)
READERS = ("plastimatch", "rt-utils", "platipy", "dicompyler", "dcmjs")
SIDE_READERS = ("rt-utils", "platipy", "dicompyler")
EXPORTERS = ("medseg", "medseg-subvoxel", "rt-utils")
#: Gaussian sigma (voxels, in-plane) that turns a mask into the "probabilities" of the
#: sub-voxel export: smooth iso-lines that cross voxel edges anywhere, as a model's do.
SUBVOXEL_SIGMA = (0.0, 0.8, 0.8)
#: ROI display colours, cycled.
COLORS = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48))
#: Subprocesses (plastimatch, ITK, OpenMP) use one thread: others share these 2 cores.
ONE_THREAD = {
    "OMP_NUM_THREADS": "1",
    "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "MPLBACKEND": "Agg",
}


def structure(name: str, color: tuple[int, int, int]) -> Any:
    """The medseg ROI description for one mask (label 1 of its own volume)."""
    return Structure(name=name, label=1, color=color)  # keywords: RoiSpec and Structure


def color_of(n: int) -> tuple[int, int, int]:
    """Display colour of the ``n``-th ROI (the same for both exporters)."""
    return COLORS[n % len(COLORS)]


@dataclass
class Case:
    name: str
    ct_dir: Path
    reference: Volume
    masks: Masks
    via_export_rtstruct: Path | None = None  # label map exported with io.rois.export_rtstruct


@dataclass(frozen=True)
class Setup:
    """What every case runs with: the side environments and the command-line choices."""

    python: Path  # the side virtualenv's interpreter
    node_modules: Path
    readers: tuple[str, ...]
    exporters: tuple[str, ...]
    empty: str  # medseg's ``empty=`` for write_masks/export_rtstruct, or "default"


@dataclass
class ReaderOutput:
    """What one reader made of one RT-STRUCT: masks on the reference grid, or volumes."""

    version: str = ""
    masks: Masks = field(default_factory=dict)
    volumes_ml: dict[str, float] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    failure: str | None = None
    volume_only: bool = False
    seconds: float = 0.0


@dataclass
class RoiScore:
    case: str
    exporter: str
    reader: str
    roi: str
    source_ml: float
    ratio: float  # nan for an empty source
    dice: float | None
    note: str = ""

    @property
    def judged(self) -> bool:
        return self.note != "" or self.source_ml == 0.0 or self.source_ml >= MIN_JUDGED_ML

    @property
    def exact(self) -> bool:
        if self.note:
            return False
        if self.source_ml == 0.0:
            return True
        dice_ok = self.dice is None or self.dice >= MIN_DICE
        return abs(self.ratio - 1.0) <= MAX_VOLUME_ERROR and dice_ok


# ---------------------------------------------------------------------------------------------
# side environments


def _digest(*paths: Path) -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in paths)).hexdigest()


def _run(
    command: list[str],
    *,
    log: Path | None = None,
    cwd: Path | None = None,
    extra_env: dict[str, str] | None = None,
    timeout: float = 3600,
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **ONE_THREAD, **(extra_env or {})}
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        command, capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout, check=False
    )
    if log is not None:
        with log.open("a") as f:
            f.write(f"$ {' '.join(command)}\n{result.stdout}\n{result.stderr}\n")
    return result


def ensure_side_venv(cache: Path) -> Path:
    """The side virtualenv's python, (re)built when ``requirements.txt`` changed."""
    requirements = SIDE / "requirements.txt"
    venv, want = cache / "readers-venv", _digest(requirements)
    python, stamp = venv / "bin" / "python", venv / "medseg-pins.sha256"
    if python.exists() and stamp.exists() and stamp.read_text().strip() == want:
        return python
    print(f"building the side virtualenv {venv} (a few minutes) ...", file=sys.stderr)
    shutil.rmtree(venv, ignore_errors=True)
    cache.mkdir(parents=True, exist_ok=True)
    log = cache / "readers-venv-install.log"
    log.write_text("")
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(python), "-m", "pip", "install", "-q", "-r", str(requirements)],
        [str(python), "-m", "pip", "check"],
    ]
    for step in steps:
        if _run(step, log=log).returncode != 0:
            raise SystemExit(f"side virtualenv: {' '.join(step)} failed; see {log}")
    stamp.write_text(want + "\n")
    return python


def ensure_node_modules(cache: Path) -> Path:
    """``node_modules`` holding the pinned dcmjs, (re)installed when the lock file changed."""
    files = [SIDE / "package.json", SIDE / "package-lock.json"]
    folder, want = cache / "readers-node", _digest(*files)
    stamp = folder / "medseg-pins.sha256"
    if stamp.exists() and stamp.read_text().strip() == want:
        return folder / "node_modules"
    print(f"installing dcmjs into {folder} ...", file=sys.stderr)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for path in files:
        shutil.copy2(path, folder / path.name)
    log = cache / "readers-node-install.log"
    log.write_text("")
    result = _run(["npm", "ci", "--no-audit", "--no-fund", "--ignore-scripts"], log=log, cwd=folder)
    if result.returncode != 0:
        raise SystemExit(f"npm ci failed; see {log}")
    stamp.write_text(want + "\n")
    return folder / "node_modules"


# ---------------------------------------------------------------------------------------------
# cases


def write_blank_series(geometry: Geometry, folder: Path, uid_seed: str) -> Volume:
    """A blank CT series on ``geometry`` (as tests/rt_helpers.py does), loaded back."""
    image = Volume(np.full(geometry.shape, -1000, dtype=np.int16), geometry, VolumeKind.IMAGE)
    write_series(image, folder, uid_seed=uid_seed)
    return load_series(folder)


def _square_in_plane(start: list[int], stop: list[int], shape: tuple[int, ...]) -> None:
    """Grow the row/column crop to a square: rt-utils 1.2.7 reads non-square slices wrongly
    (it allocates each slice as (Columns, Rows) and fills it as (Rows, Columns))."""
    width = max(stop[1] - start[1], stop[2] - start[2])
    for axis in (1, 2):
        extra = width - (stop[axis] - start[axis])
        start[axis] -= extra // 2
        stop[axis] += extra - extra // 2
        shift = max(0, -start[axis]) - max(0, stop[axis] - shape[axis])
        start[axis], stop[axis] = max(start[axis] + shift, 0), min(stop[axis] + shift, shape[axis])


def _crop_box(union: NDArray[np.bool_]) -> tuple[list[int], list[int]]:
    start, stop = [], []
    for axis in range(3):
        occupied = np.nonzero(union.any(axis=tuple(a for a in range(3) if a != axis)))[0]
        start.append(max(int(occupied.min()) - CROP_MARGIN_VOXELS[axis], 0))
        stop.append(min(int(occupied.max()) + 1 + CROP_MARGIN_VOXELS[axis], union.shape[axis]))
    _square_in_plane(start, stop, union.shape)
    return start, stop


def build_hn_case(data: Path, annotator: str, scan: str, folder: Path) -> Case:
    """Every organ of one scan by one annotator, on a blank CT cropped around the organs."""
    paths = sorted((data / "hn-oar-labels" / annotator / scan / "segmentations").glob("*.nrrd"))
    if not paths:
        raise SystemExit(f"no label maps for hn-oar-labels/{annotator}/{scan} under {data}")
    organs = {p.name.removesuffix(".nrrd"): nifti.load(p, VolumeKind.LABELS) for p in paths}
    grid = next(iter(organs.values())).geometry
    for name, organ in organs.items():
        if not geo.geometries_equal(organ.geometry, grid):
            raise SystemExit(f"hn-oar-labels/{annotator}/{scan}/{name}: another grid")
    arrays = {name: np.asarray(organ.array) > 0 for name, organ in organs.items()}
    start, stop = _crop_box(np.logical_or.reduce(list(arrays.values())))
    box = tuple(slice(a, b) for a, b in zip(start, stop, strict=True))
    name = f"hn/{annotator}/{scan}"
    reference = write_blank_series(geo.crop_geometry(grid, start, stop), folder / "ct", name)
    masks = {organ: np.ascontiguousarray(a[box]) for organ, a in arrays.items()}
    lost = [o for o in masks if int(masks[o].sum()) != int(arrays[o].sum())]
    if lost:
        raise SystemExit(f"{name}: the crop lost voxels of {lost}")
    return Case(name, folder / "ct", reference, masks)


def build_totalseg_case(data: Path, folder: Path) -> Case:
    """TotalSegmentator's label map on its own CT, exported as users do (export_rtstruct).

    The series is first rewritten by ``write_series`` (same voxels, same grid): the original
    has empty SOP Instance UIDs in the datasets and JPEG 2000 pixels, which plastimatch cannot
    read and which make rt-utils find no slice for any contour, whoever wrote the RT-STRUCT.
    The source masks are the label map with its rows flipped (dcm2niix stores them bottom-up),
    checked against both grids here rather than taken from medseg's reordering.
    """
    root = data / "totalseg-example"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "SOPInstanceUID" from the file meta
        original = load_series(root / "example_ct_dicom")
    write_series(original, folder / "ct", uid_seed="medseg-bench:totalseg")
    reference = load_series(folder / "ct")
    labels_path = root / "example_seg_dicom.nii.gz"
    labels = nifti.load(labels_path, VolumeKind.LABELS)
    a, b = labels.geometry, reference.geometry
    last_row = geo.index_to_world(b, [0.0, b.shape[1] - 1.0, 0.0])
    if not (
        a.shape == b.shape
        and np.allclose(a.direction_matrix, b.direction_matrix @ np.diag([1.0, -1.0, 1.0]))
        and np.allclose(a.origin_mm, last_row, atol=1e-3)
    ):
        raise SystemExit(f"{labels_path}: not the CT grid with rows flipped: {a} vs {b}")
    flipped = np.flip(np.asarray(labels.array), axis=1)
    present = [int(v) for v in np.unique(flipped) if v > 0]
    masks = {f"label_{n}": np.ascontiguousarray(flipped == n) for n in present}
    return Case("totalseg", folder / "ct", reference, masks, via_export_rtstruct=labels_path)


def build_phantom_case(folder: Path) -> Case:
    """medseg's demo phantom: its tumours, the body (lungs are holes), a ring tube, an empty ROI."""
    made = phantom.make_case(seed=0)
    paths = phantom.write_case(made, folder / "phantom", patient_id="PHANTOM-BENCH")
    reference = load_series(paths.ct_dir)
    if not geo.geometries_equal(reference.geometry, made.labels.geometry):
        raise SystemExit(f"phantom: series grid {reference.geometry} != {made.labels.geometry}")
    shape = reference.geometry.shape
    _k, j, i = np.ogrid[: shape[0], : shape[1], : shape[2]]
    r2 = (j - shape[1] / 2 + 0.3) ** 2 + (i - shape[2] / 2 - 0.2) ** 2
    ring = np.zeros(shape, dtype=bool)
    ring[shape[0] // 4 : shape[0] // 2] = ((r2 <= 9.0**2) & (r2 > 4.5**2))[0]
    masks = {
        "tumour": np.asarray(made.labels.array) == phantom.TUMOUR_LABEL,
        "body": np.asarray(reference.array) > -500,
        "ring": ring,
        "empty": np.zeros(shape, dtype=bool),
    }
    return Case("phantom", paths.ct_dir, reference, masks)


def build_cases(names: list[str], data: Path, work: Path) -> list[Case]:
    cases = []
    for name in names:
        folder = work / name.replace("/", "-")
        folder.mkdir(parents=True, exist_ok=True)
        if name == "phantom":
            cases.append(build_phantom_case(folder))
        elif name == "totalseg":
            cases.append(build_totalseg_case(data, folder))
        else:
            _hn, annotator, scan = name.split("/")
            cases.append(build_hn_case(data, annotator, scan, folder))
    return cases


def expand_case_names(requested: list[str]) -> list[str]:
    """``default``, ``all``, ``phantom``, ``totalseg``, ``hn/SCAN`` or ``hn/ANNOTATOR/SCAN``."""
    names: list[str] = []
    for item in requested:
        if item in ("default", "all"):
            names += expand_case_names(list(DEFAULT_CASES if item == "default" else ALL_CASES))
        elif item.startswith("hn/") and item.count("/") == 1:
            names += [f"hn/{a}/{item[3:]}" for a in HN_ANNOTATORS]
        elif item in ("phantom", "totalseg") or (item.startswith("hn/") and item.count("/") == 2):
            names.append(item)
        else:
            raise SystemExit(f"unknown case {item!r}: {expand_case_names.__doc__}")
    return list(dict.fromkeys(names))


# ---------------------------------------------------------------------------------------------
# exporters


def export_medseg(case: Case, out: Path, empty: str) -> list[str]:
    """medseg's RT-STRUCT of the case; returns the warnings it gave (empty ROIs).

    ``empty``: "default" leaves medseg's own choice for empty ROIs (kept without
    ContourSequence, or omitted); "keep" or "omit" is passed on as ``empty=``.
    """
    options = {} if empty == "default" else {"empty": empty}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if case.via_export_rtstruct is not None:
            export_rtstruct(case.ct_dir, case.via_export_rtstruct, None, out, **options)
        else:
            pairs = [
                (
                    structure(name, color_of(n)),
                    Volume(mask.astype(np.uint8), case.reference.geometry, VolumeKind.LABELS),
                )
                for n, (name, mask) in enumerate(case.masks.items())
            ]
            rtstruct.write_masks(pairs, case.reference, out, **options)
    return [str(w.message) for w in caught]


def export_medseg_subvoxel(case: Case, out: Path, empty: str) -> list[str]:
    """medseg's sub-voxel RT-STRUCT (``export.contours: subvoxel``) of the case's masks.

    One label map holds the ROIs, so a voxel in two ROIs goes to the first (the spinal cord
    becomes a hole in the canal: sub-voxel holes and keyholes are measured too); each ROI's
    probability is its label map mask smoothed by :data:`SUBVOXEL_SIGMA`. The contours are
    then not the masks' outlines, so the readers are scored against plastimatch's reading
    of the file (a centre-testing rasteriser: what the contours hold), not the masks.
    """
    from scipy import ndimage

    geometry = case.reference.geometry
    labels = np.zeros(geometry.shape, dtype=np.uint8)
    for value, mask in enumerate(case.masks.values(), start=1):
        labels[mask & (labels == 0)] = value
    probabilities = np.zeros((len(case.masks) + 1, *geometry.shape), dtype=np.float32)
    for value in range(1, len(case.masks) + 1):
        probabilities[value] = ndimage.gaussian_filter((labels == value).astype(np.float32),
                                                       SUBVOXEL_SIGMA)  # fmt: skip
    rois = [Structure(name=name, label=value, color=color_of(value - 1))
            for value, name in enumerate(case.masks, start=1)]  # fmt: skip
    options = {} if empty == "default" else {"empty": empty}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rtstruct.write(
            case.reference.with_array(labels, VolumeKind.LABELS), case.reference, rois, out,
            probabilities=case.reference.with_array(probabilities, VolumeKind.PROBABILITIES),
            **options,
        )  # fmt: skip
    return [str(w.message) for w in caught]


def export_rt_utils(case: Case, out: Path, side_python: Path) -> None:
    """The same masks through rt-utils' RTStructBuilder (in the side venv)."""
    folder = out.parent / "rt-utils-export-masks"
    folder.mkdir(parents=True, exist_ok=True)
    rois = []
    for n, (name, mask) in enumerate(case.masks.items()):
        np.save(folder / f"{n}.npy", mask.astype(np.uint8))
        rois.append({"name": name, "file": f"{n}.npy", "color": color_of(n)})
    uids = list(case.reference.source.sop_instance_uids)
    (folder / "manifest.json").write_text(json.dumps({"rois": rois, "sop_instance_uids": uids}))
    command = [str(side_python), str(SIDE / "side_readers.py"), "export-rt-utils"]
    result = _run([*command, "--ct", str(case.ct_dir), "--masks", str(folder), "--out", str(out)])
    shutil.rmtree(folder, ignore_errors=True)
    if result.returncode != 0:
        raise RuntimeError(f"rt-utils export failed: {result.stderr.strip()[-800:]}")


def dciodvfy_error_count(path: Path) -> int:
    result = _run(["dciodvfy", str(path)])
    return sum(line.startswith("Error") for line in (result.stdout + result.stderr).splitlines())


# ---------------------------------------------------------------------------------------------
# readers


def on_reference(
    array: NDArray[Any], grid: dict[str, list[float]], reference: Geometry
) -> NDArray[np.bool_]:
    """A reader's (slice, row, column) array on its own grid, moved onto the reference grid."""
    theirs = geo.from_sitk(
        grid["size_xyz"], grid["spacing_xyz"], grid["origin_xyz"], grid["direction_xyz"]
    )
    return np.asarray(geo.reorder_to_grid(np.asarray(array) > 0, theirs, reference), dtype=bool)


def read_plastimatch(rtss: Path, case: Case, out: Path) -> ReaderOutput:
    out.mkdir(parents=True, exist_ok=True)
    image_path, list_path = out / "ss.nrrd", out / "ss.txt"
    grid_args = ["--input", str(rtss), "--referenced-ct", str(case.ct_dir)]
    out_args = ["--output-ss-img", str(image_path), "--output-ss-list", str(list_path)]
    result = _run(["plastimatch", "convert", *grid_args, *out_args])
    version = _run(["plastimatch", "--version"]).stdout.strip().splitlines()[-1:]
    output = ReaderOutput(version=" ".join(version))
    if result.returncode != 0 or not image_path.exists():
        output.failure = f"plastimatch exit {result.returncode}: {result.stderr.strip()[-300:]}"
        return output
    image = sitk.ReadImage(str(image_path))
    packed = sitk.GetArrayFromImage(image)  # (slice, row, column[, byte])
    packed = packed[..., None] if packed.ndim == 3 else packed
    grid = {
        "size_xyz": image.GetSize(),
        "spacing_xyz": image.GetSpacing(),
        "origin_xyz": image.GetOrigin(),
        "direction_xyz": image.GetDirection(),
    }
    for line in list_path.read_text().splitlines():
        if line.strip():
            bit_text, _color, name = line.split("|", 2)
            bit = int(bit_text)
            plane = (packed[..., bit // 8] >> (bit % 8)) & 1
            output.masks[name] = on_reference(plane, grid, case.reference.geometry)
    return output


def _output_from_manifest(folder: Path, case: Case) -> ReaderOutput:
    manifest = json.loads((folder / "manifest.json").read_text())
    output = ReaderOutput(
        version=str(manifest.get("version", "")),
        failure=manifest.get("error"),
        seconds=float(manifest.get("seconds", 0.0)),
    )
    output.volume_only = manifest.get("reader") == "dicompyler"
    grid = manifest.get("grid")
    for name, entry in manifest.get("rois", {}).items():
        if "error" in entry:
            output.errors[name] = entry["error"]
        elif "volume_ml" in entry:
            output.volumes_ml[name] = float(entry["volume_ml"])
        elif "mask" in entry or "raw" in entry:
            if "mask" in entry:
                array = np.load(folder / entry["mask"])
            else:
                size = grid["size_xyz"]
                array = np.fromfile(folder / entry["raw"], dtype=np.uint8).reshape(size[::-1])
            output.masks[name] = on_reference(array, grid, case.reference.geometry)
    return output


def read_side(
    rtss: Path, case: Case, out: Path, side_python: Path, readers: list[str]
) -> dict[str, ReaderOutput]:
    """rt-utils, platipy and dicompyler-core in the side venv (one subprocess for all three)."""
    command = [str(side_python), str(SIDE / "side_readers.py"), "read", "--rtss", str(rtss)]
    command += ["--ct", str(case.ct_dir), "--out", str(out), "--readers", ",".join(readers)]
    result = _run(command)
    outputs = {}
    for reader in readers:
        if (out / reader / "manifest.json").exists():
            outputs[reader] = _output_from_manifest(out / reader, case)
        else:
            outputs[reader] = ReaderOutput(
                failure=f"side reader exit {result.returncode}: {result.stderr.strip()[-300:]}"
            )
    return outputs


def read_dcmjs(rtss: Path, case: Case, out: Path, node_modules: Path) -> ReaderOutput:
    result = _run(
        ["node", str(SIDE / "dcmjs_reader.js"), str(rtss), str(case.ct_dir), str(out)],
        extra_env={"NODE_PATH": str(node_modules)},
    )
    if result.returncode != 0 or not (out / "manifest.json").exists():
        return ReaderOutput(
            failure=f"node exit {result.returncode}: {result.stderr.strip()[-300:]}"
        )
    return _output_from_manifest(out, case)


def run_readers(rtss: Path, case: Case, out: Path, setup: Setup) -> dict[str, ReaderOutput]:
    readers = setup.readers
    outputs: dict[str, ReaderOutput] = {}
    if "plastimatch" in readers:
        start = time.perf_counter()
        outputs["plastimatch"] = read_plastimatch(rtss, case, out / "plastimatch")
        outputs["plastimatch"].seconds = time.perf_counter() - start
    side = [r for r in SIDE_READERS if r in readers]
    if side:
        outputs.update(read_side(rtss, case, out, setup.python, side))
    if "dcmjs" in readers:
        start = time.perf_counter()
        outputs["dcmjs"] = read_dcmjs(rtss, case, out / "dcmjs", setup.node_modules)
        outputs["dcmjs"].seconds = time.perf_counter() - start
    return {r: outputs[r] for r in readers}


# ---------------------------------------------------------------------------------------------
# comparison and report


def dice(a: NDArray[np.bool_], b: NDArray[np.bool_]) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(a & b)) / total


def score(case: Case, exporter: str, reader: str, output: ReaderOutput) -> list[RoiScore]:
    voxel_ml = geo.voxel_volume_ml(case.reference.geometry)
    scores = []
    for name, source in case.masks.items():
        n = int(source.sum())
        row = RoiScore(case.name, exporter, reader, name, n * voxel_ml, float("nan"), None)
        if name in output.errors:
            row.note = output.errors[name]
        elif output.volume_only:
            volume = output.volumes_ml.get(name, 0.0)
            row.ratio = volume / row.source_ml if n else float("nan")
            if not n and volume:
                row.note = f"empty ROI read as {volume:.4f} mL"
        else:
            theirs = output.masks.get(name, np.zeros_like(source))
            row.ratio = int(theirs.sum()) / n if n else float("nan")
            row.dice = dice(theirs, source)
            if not n and theirs.any():
                row.note = f"empty ROI read as {int(theirs.sum())} voxels"
        scores.append(row)
    return scores


def summary_row(scores: list[RoiScore]) -> dict[str, str]:
    ratios = [s.ratio for s in scores if s.source_ml > 0 and not s.note]
    dices = [s.dice for s in scores if s.dice is not None and s.source_ml > 0 and not s.note]
    judged = [s for s in scores if s.judged]
    failing = [s for s in judged if not s.exact]
    notes = [f"{s.roi}: {s.note}" for s in scores if s.note]
    worst = max(ratios, key=lambda r: abs(r - 1.0)) if ratios else float("nan")
    return {
        "rois": f"{len(judged)}/{len(scores)}",
        "median": f"{statistics.median(ratios):.4f}" if ratios else "-",
        "worst": f"{worst:.4f}",
        "min_dice": f"{min(dices):.4f}" if dices else "-",
        "exact": "yes" if not failing else f"no ({len(failing)})",
        "notes": "; ".join(notes)[:140],
    }


def print_table(rows: list[dict[str, str]]) -> None:
    columns = ["exporter", "reader", "case", "rois", "median", "worst", "min_dice", "exact"]
    columns += ["s", "notes"]
    widths = {c: max(len(c), *(len(r.get(c, "")) for r in rows)) for c in columns[:-1]}
    widths["notes"] = 0
    print("  ".join(f"{c:<{widths[c]}}" for c in columns))
    for row in rows:
        print("  ".join(f"{row.get(c, ''):<{widths[c]}}" for c in columns).rstrip())


def write_csv(scores: list[RoiScore], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["case", "exporter", "reader", "roi", "source_ml", "ratio", "dice", "exact", "note"]
        )
        for s in scores:
            dice_text = "" if s.dice is None else f"{s.dice:.5f}"
            writer.writerow([s.case, s.exporter, s.reader, s.roi, f"{s.source_ml:.4f}",
                             f"{s.ratio:.5f}", dice_text, s.exact, s.note])  # fmt: skip


# ---------------------------------------------------------------------------------------------
# main


def export(case: Case, exporter: str, out: Path, setup: Setup) -> str:
    """Write ``case`` with ``exporter``; returns the line for the dciodvfy/export summary."""
    start = time.perf_counter()
    if exporter == "medseg":
        warned = len(export_medseg(case, out, setup.empty))
    elif exporter == "medseg-subvoxel":
        warned = len(export_medseg_subvoxel(case, out, setup.empty))
    else:
        export_rt_utils(case, out, setup.python)
        warned = 0
    seconds = time.perf_counter() - start
    errors = dciodvfy_error_count(out)
    return (
        f"{case.name:<28} {exporter:<9} dciodvfy Error lines {errors:>6}   "
        f"export {seconds:6.2f} s   {rois_without_contours(out)}   warnings {warned}"
    )


def rois_without_contours(path: Path) -> str:
    """How many ROIs the file declares, and how many of them have no ContourSequence."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    declared = len(ds.get("StructureSetROISequence", []))
    bare = sum("ContourSequence" not in item for item in ds.get("ROIContourSequence", []))
    return f"ROIs {declared:>3} ({bare} without contours)"


def run_case(
    case: Case, work: Path, setup: Setup
) -> tuple[list[dict[str, str]], list[RoiScore], list[str]]:
    """Every exporter, then every reader on its RT-STRUCT: table rows, ROI scores, summary lines."""
    rows, scores, lines = [], [], []
    for exporter in setup.exporters:
        key = {"exporter": exporter, "case": case.name}
        out = work / case.name.replace("/", "-") / f"{exporter}.dcm"
        try:
            lines.append(export(case, exporter, out, setup))
        except Exception as exc:  # noqa: BLE001 - a benchmark reports an exporter's failure
            rows.append({**key, "notes": f"export FAILED: {type(exc).__name__}: {exc}"})
            continue
        outputs = run_readers(out, case, out.parent / f"{exporter}-read", setup)
        judged_against = case
        if exporter == "medseg-subvoxel":  # see export_medseg_subvoxel
            centre = outputs.get("plastimatch")
            if centre is None or centre.failure:
                rows.append({**key, "notes": "needs the plastimatch reader as its reference"})
                continue
            empty = {n: np.zeros_like(m) for n, m in case.masks.items()}
            judged_against = dataclasses.replace(case, masks={**empty, **centre.masks})
        for reader, output in outputs.items():
            if output.failure:
                rows.append({**key, "reader": reader, "notes": f"FAILED: {output.failure}"})
                continue
            roi_scores = score(judged_against, exporter, reader, output)
            scores += roi_scores
            summary = summary_row(roi_scores)
            rows.append({**key, "reader": reader, **summary, "s": f"{output.seconds:.1f}"})
    return rows, scores, lines


def _row_order(row: dict[str, str]) -> tuple[int, int]:
    """medseg's rows first, then the baseline; readers in READERS order; cases as run."""
    reader = row.get("reader", "")
    exporter = row["exporter"]
    return (EXPORTERS.index(exporter), READERS.index(reader) if reader in READERS else -1)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_data = os.environ.get("MEDSEG_TEST_DATA", str(REPO.parent / "shared" / "data"))
    parser.add_argument("--cases", nargs="+", default=["default"], help=expand_case_names.__doc__)
    parser.add_argument("--data", type=Path, default=Path(default_data))
    parser.add_argument(
        "--work", type=Path, help="keep every file here (default: a temporary folder)"
    )
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "medseg-bench")
    parser.add_argument("--readers", default=",".join(READERS), help="comma-separated subset")
    parser.add_argument("--exporters", default=",".join(EXPORTERS), help="comma-separated subset")
    parser.add_argument(
        "--empty",
        choices=("default", "keep", "omit"),
        default="default",
        help="medseg's handling of empty ROIs: its default, or empty=keep/omit",
    )
    parser.add_argument(
        "--check", action="store_true", help="exit 1 unless every medseg row is exact"
    )
    args = parser.parse_args()
    for option, known in (("readers", READERS), ("exporters", EXPORTERS)):
        unknown = set(getattr(args, option).split(",")) - set(known)
        if unknown:
            parser.error(f"--{option}: unknown {sorted(unknown)}; choose from {', '.join(known)}")
    return args


def main() -> int:
    args = parse_args()
    started = time.perf_counter()
    for tool in ("plastimatch", "dciodvfy", "node", "npm"):
        if shutil.which(tool) is None:
            raise SystemExit(
                f"{tool} is not on PATH (apt-get install plastimatch dicom3tools nodejs npm)"
            )
    setup = Setup(
        python=ensure_side_venv(args.cache),
        node_modules=ensure_node_modules(args.cache),
        readers=tuple(args.readers.split(",")),
        exporters=tuple(args.exporters.split(",")),
        empty=args.empty,
    )
    work = args.work or Path(tempfile.mkdtemp(prefix="medseg-readers-"))
    work.mkdir(parents=True, exist_ok=True)
    rows, scores, lines = [], [], []
    try:
        for name in expand_case_names(args.cases):
            print(f"case {name} ...", file=sys.stderr, flush=True)
            for case in build_cases([name], args.data, work):
                case_rows, case_scores, case_lines = run_case(case, work, setup)
                rows, scores, lines = rows + case_rows, scores + case_scores, lines + case_lines
        write_csv(scores, work / "readers.csv")
        print_table(sorted(rows, key=_row_order))
        print("\n" + "\n".join(lines))
        medseg_rows = [r for r in rows if r["exporter"].startswith("medseg")]
        exact = bool(medseg_rows) and all(r.get("exact") == "yes" for r in medseg_rows)
        if args.work:
            print(f"\nper-ROI results: {work / 'readers.csv'}")
        print(f"total time {time.perf_counter() - started:.0f} s")
        print(f"all readers exact: {'yes' if exact else 'no'}")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 1 if args.check and not exact else 0


if __name__ == "__main__":
    sys.exit(main())
