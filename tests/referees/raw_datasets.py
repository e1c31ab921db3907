"""nnU-Net v2 raw datasets built from the real test data with medseg's own converters.

Each builder writes ``<out>/DatasetNNN_Name/{dataset.json, imagesTr, labelsTr}`` (nnU-Net's raw
layout, ``.nii.gz``) and ``<out>/DatasetNNN_Name.datalist.json``, a medseg (Decathlon-style)
datalist of the same files, and returns a :class:`RawDataset`:

- :func:`lung_gtv_ct`: ``lung-gtv-ct/pat_1..3`` (CT DICOM + RT-STRUCT) converted by
  :func:`medseg.io.convert.convert_dicom`; label 1 is every ROI matching ``GTV*``. Cases are
  named ``case_000..`` in sorted folder order, the ids :mod:`medseg.training.datasets` gives
  the same patients, so a ``data.dicom_root`` config on ``lung-gtv-ct`` must give the same
  fingerprint.
- :func:`mr_tumour`: ``mr-tumour`` brain1 and breast1 (NRRD image + label, MR) rewritten as
  NIfTI by :func:`medseg.io.nifti.save`, and ``brain1_padded``: brain1 with zero slabs of
  :data:`PADDING` voxels around it (as scanners and converters pad), so that nnU-Net's crop to
  the non-zero region has something to cut (no real image here has a zero border).
- :func:`totalseg_ct`: ``totalseg-example``: ``example_ct_sm`` with TotalSegmentator's
  ``example_seg`` and ``example_seg_fast`` label maps (same grid), and the DICOM series
  ``example_ct_dicom`` (converted) with ``example_seg_dicom``, whose rows are stored the other
  way up (put onto the image grid losslessly by :func:`medseg.geometry.reorder_to_grid`).
  Labels are TotalSegmentator's class ids 1..117, named ``class_<id>``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.geometry import Geometry, index_to_world, reorder_to_grid
from medseg.io import nifti
from medseg.io.convert import convert_dicom
from medseg.io.rtstruct import match_rois
from medseg.volume import Volume, VolumeKind

#: Zero voxels added before and after each axis of ``brain1_padded`` (slice, row, column).
PADDING = ((3, 2), (5, 0), (0, 7))
#: TotalSegmentator v2's class ids (``totalseg-example``'s label maps hold some of them).
TOTALSEG_CLASSES = 117


@dataclass(frozen=True)
class RawDataset:
    """A raw dataset on disk.

    Attributes:
        folder: ``DatasetNNN_Name`` (holds ``dataset.json``).
        datalist: the medseg datalist of the same files (paths relative to it).
        case_ids: nnU-Net's case identifiers, in nnU-Net's (sorted) order.
        modality: the one channel's name.
        labels: label value -> name (background left out).
    """

    folder: Path
    datalist: Path
    case_ids: tuple[str, ...]
    modality: str
    labels: dict[int, str]

    @property
    def dataset_json(self) -> Path:
        return self.folder / "dataset.json"


def write_raw_dataset(
    out: Path,
    name: str,
    cases: Sequence[tuple[str, Path, Volume]],
    *,
    modality: str,
    labels: Mapping[int, str],
) -> RawDataset:
    """Lay out ``cases`` (case id, an image ``.nii.gz`` to move in, the label Volume) as a raw
    dataset ``out/name`` and its datalist; the label maps are written as uint8/uint16 NIfTI."""
    folder = Path(out) / name
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    entries = []
    for case_id, image_file, label_map in sorted(cases, key=lambda c: c[0]):
        image_to = folder / "imagesTr" / f"{case_id}_0000.nii.gz"
        shutil.move(str(image_file), image_to)
        array = np.asarray(label_map.array)
        dtype = np.uint8 if array.max() < 256 else np.uint16
        label_to = folder / "labelsTr" / f"{case_id}.nii.gz"
        nifti.save(label_map.with_array(array.astype(dtype)), label_to)
        entries.append(
            {"image": str(image_to.relative_to(out)), "label": str(label_to.relative_to(out))}
        )
    dataset_json = {
        "channel_names": {"0": modality},
        "labels": {"background": 0, **{labels[v]: v for v in sorted(labels)}},
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
    }
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    datalist = Path(out) / f"{name}.datalist.json"
    datalist.write_text(
        json.dumps(
            {
                "modality": {"0": modality},
                "labels": {"0": "background", **{str(v): labels[v] for v in sorted(labels)}},
                "training": entries,
            },
            indent=2,
        )
    )
    return RawDataset(
        folder, datalist, tuple(sorted(c[0] for c in cases)), modality, dict(sorted(labels.items()))
    )


def _convert(
    series: Path, work: Path, rtstruct: Path | None = None
) -> tuple[Path, dict[str, Path]]:
    with warnings.catch_warnings():  # totalseg's series lacks SOPInstanceUIDs: a known quirk
        warnings.simplefilter("ignore")
        done = convert_dicom(series, work, rtstruct=rtstruct)
    return done.image, done.masks


def lung_gtv_ct(data_root: Path, out: Path) -> RawDataset:
    """``Dataset001_LungGTV`` from ``lung-gtv-ct`` (see the module docstring)."""
    root = Path(data_root) / "lung-gtv-ct"
    work = Path(tempfile.mkdtemp(prefix="convert-", dir=out))
    cases = []
    for index, patient in enumerate(sorted(p for p in root.iterdir() if p.is_dir())):
        structure_sets = sorted(patient.glob("DCM_RS_*.dcm"))
        image_file, masks = _convert(patient, work / patient.name, structure_sets[0])
        image = nifti.load(image_file)
        label = np.zeros(image.geometry.shape, dtype=np.uint8)
        for roi in match_rois(list(masks), ["GTV*"]):
            label[np.asarray(nifti.load(masks[roi], VolumeKind.LABELS).array) > 0] = 1
        cases.append((f"case_{index:03d}", image_file, image.with_array(label, VolumeKind.LABELS)))
    built = write_raw_dataset(out, "Dataset001_LungGTV", cases, modality="CT", labels={1: "GTV"})
    shutil.rmtree(work)
    return built


def _padded(image: Volume) -> Volume:
    """``image`` inside a border of zeros (:data:`PADDING`), voxel positions kept."""
    array = np.pad(np.asarray(image.array), PADDING)
    g = image.geometry
    origin = index_to_world(g, [-before for before, _ in PADDING])
    grid = Geometry(array.shape, g.spacing_mm, tuple(float(o) for o in origin), g.direction)
    return Volume(array, grid, VolumeKind.IMAGE)


def mr_tumour(data_root: Path, out: Path) -> RawDataset:
    """``Dataset002_MRTumour`` from ``mr-tumour`` (see the module docstring)."""
    root = Path(data_root) / "mr-tumour"
    work = Path(tempfile.mkdtemp(prefix="convert-", dir=out))
    cases = []
    for case_id in ("brain1", "breast1"):
        image = nifti.load(root / f"{case_id}_image.nrrd")
        image_file = nifti.save(image, work / f"{case_id}.nii.gz")
        label_map = nifti.load(root / f"{case_id}_label.nrrd", VolumeKind.LABELS)
        cases.append((case_id, image_file, label_map))
        if case_id == "brain1":
            padded = _padded(image)
            padded_file = nifti.save(padded, work / "brain1_padded.nii.gz")
            padded_label = padded.with_array(
                np.pad(np.asarray(label_map.array), PADDING), VolumeKind.LABELS
            )
            cases.append(("brain1_padded", padded_file, padded_label))
    built = write_raw_dataset(
        out, "Dataset002_MRTumour", cases, modality="MR", labels={1: "tumour"}
    )
    shutil.rmtree(work)
    return built


def totalseg_ct(data_root: Path, out: Path) -> RawDataset:
    """``Dataset003_TotalSegCT`` from ``totalseg-example`` (see the module docstring)."""
    root = Path(data_root) / "totalseg-example"
    work = Path(tempfile.mkdtemp(prefix="convert-", dir=out))
    cases = []
    small = nifti.load(root / "example_ct_sm.nii.gz")
    for case_id, seg in (("ct_sm", "example_seg"), ("ct_sm_fast", "example_seg_fast")):
        image_file = nifti.save(small, work / f"{case_id}.nii.gz")
        cases.append((case_id, image_file, nifti.load(root / f"{seg}.nii.gz", VolumeKind.LABELS)))
    image_file, _ = _convert(root / "example_ct_dicom", work / "dicom")
    image = nifti.load(image_file)
    seg = nifti.load(root / "example_seg_dicom.nii.gz", VolumeKind.LABELS)
    on_grid = reorder_to_grid(np.asarray(seg.array), seg.geometry, image.geometry)
    cases.append(("ct_dicom", image_file, image.with_array(on_grid, VolumeKind.LABELS)))
    labels = {v: f"class_{v}" for v in range(1, TOTALSEG_CLASSES + 1)}
    built = write_raw_dataset(out, "Dataset003_TotalSegCT", cases, modality="CT", labels=labels)
    shutil.rmtree(work)
    return built
