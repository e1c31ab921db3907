"""Resource limits: a declared image size over IngestConfig.max_voxels / max_bytes is refused
before anything is allocated, and the error says how much was asked and the limit."""

from __future__ import annotations

import struct
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import yaml
from pydicom.data import get_testdata_file

from medseg.config import IngestConfig, load_config
from medseg.errors import ConfigError, ResourceLimitError, UnreadableScanError
from medseg.geometry import Geometry
from medseg.io import nifti, seg
from medseg.io.dicom import load_series
from medseg.io.limits import require_within_limits
from medseg.io.rtstruct import RoiSpec
from medseg.volume import Volume, VolumeKind
from tests.rt_helpers import write_reference_series

#: What refusing an absurd declared size may allocate: headers and bookkeeping, no pixels.
REFUSAL_PEAK_BYTES = 32 * 2**20


def _refusal(call: Callable[[], Any]) -> tuple[ResourceLimitError, int]:
    """The ResourceLimitError ``call`` raises, and the tracemalloc peak (bytes, numpy arrays
    included) until then."""
    tracemalloc.start()
    try:
        with pytest.raises(ResourceLimitError) as info:
            call()
        return info.value, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _ct_small(folder: Path, **attributes: object) -> Path:
    """pydicom's CT_small.dcm (128 x 128, int16) with some attributes replaced."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    folder.mkdir(parents=True, exist_ok=True)
    ds.save_as(folder / "ct.dcm")
    return folder


def test_defaults_are_documented_values() -> None:
    ingest = IngestConfig()
    assert ingest.max_voxels == 2**31
    assert ingest.max_bytes == 8 * 2**30


@pytest.mark.parametrize(
    ("key", "value"),
    [
        pytest.param("max_voxels", 0, id="zero-voxels"),
        pytest.param("max_bytes", -1, id="negative-bytes"),
        pytest.param("max_bytes", 8.5e9, id="float-bytes"),
    ],
)
def test_bad_limits_are_config_errors(tmp_path: Path, key: str, value: object) -> None:
    tiny = Path(__file__).parents[2] / "configs" / "tiny.yaml"
    data = yaml.safe_load(tiny.read_text())
    data.setdefault("ingest", {})[key] = value
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=rf"ingest\.{key}"):
        load_config(tmp_path / "experiment.yaml")


def test_message_gives_the_size_asked_for_and_the_limit() -> None:
    ingest = IngestConfig(max_voxels=1000, max_bytes=1500)
    require_within_limits("a.nii", (10, 10, 10), 1, ingest)  # exactly at both limits
    with pytest.raises(ResourceLimitError) as info:
        require_within_limits("a.nii", (10, 10, 11), 1, ingest)
    assert str(info.value) == (
        "a.nii: declared image 10 x 10 x 11 = 1100 voxels is over the limit of 1000 voxels "
        "(ingest.max_voxels)"
    )
    with pytest.raises(ResourceLimitError) as info:
        require_within_limits("a.nii", (10, 10, 10), 2, ingest)
    assert "needs 2000 bytes" in str(info.value)
    assert "over the limit of 1500 bytes" in str(info.value)
    assert "ingest.max_bytes" in str(info.value)


def test_absurd_dicom_rows_and_columns_are_refused_before_allocation(tmp_path: Path) -> None:
    """65535 x 65535 pixels declared in a 39 KB file: 4.3 billion voxels, over the default."""
    folder = _ct_small(tmp_path / "ct", Rows=65535, Columns=65535)
    error, peak = _refusal(lambda: load_series(folder))
    message = str(error)
    assert message.startswith(f"{folder}: declared image 1 x 65535 x 65535 = 4294836225 voxels")
    assert "over the limit of 2147483648 voxels" in message
    assert peak < REFUSAL_PEAK_BYTES


def test_dicom_series_limit_counts_every_slice(tmp_path: Path) -> None:
    """Three 128 x 128 slices: 49152 voxels, 98304 bytes of int16."""
    folder = tmp_path / "ct"
    for k in range(3):
        _ct_small(folder, ImagePositionPatient=[0.0, 0.0, 5.0 * k], SOPInstanceUID=f"1.2.3.{k + 1}")
        (folder / "ct.dcm").rename(folder / f"{k}.dcm")
    voxels = 3 * 128 * 128
    assert load_series(folder, ingest=IngestConfig(max_voxels=voxels, max_bytes=2 * voxels))
    with pytest.raises(
        ResourceLimitError, match=rf"3 x 128 x 128 = {voxels} voxels .* {voxels - 1} voxels"
    ):
        load_series(folder, ingest=IngestConfig(max_voxels=voxels - 1))
    with pytest.raises(ResourceLimitError, match=rf"at 2 bytes per voxel needs {2 * voxels} bytes"):
        load_series(folder, ingest=IngestConfig(max_bytes=2 * voxels - 1))


def test_fractional_rescale_counts_float32_bytes(tmp_path: Path) -> None:
    folder = _ct_small(tmp_path / "ct", RescaleSlope=0.5)
    voxels = 128 * 128
    assert load_series(folder, ingest=IngestConfig(max_bytes=4 * voxels)).array.dtype == np.float32
    with pytest.raises(ResourceLimitError, match="at 4 bytes per voxel"):
        load_series(folder, ingest=IngestConfig(max_bytes=4 * voxels - 1))


def _nifti_bytes(**fields: tuple[int, str, tuple[Any, ...]]) -> bytes:
    """A 4 x 5 x 6 int16 NIfTI-1 with header fields overwritten: name -> (offset, fmt, values)."""
    image = nib.Nifti1Image(np.zeros((4, 5, 6), np.int16), np.diag([1.0, 1.0, 2.0, 1.0]))
    raw = bytearray(image.to_bytes())
    for offset, fmt, values in fields.values():
        struct.pack_into("<" + fmt, raw, offset, *values)
    return bytes(raw)


def test_absurd_nifti_dim_is_refused_before_reading(tmp_path: Path) -> None:
    """dim = 32767 x 32767 x 32767 in a 472-byte file."""
    path = tmp_path / "x.nii"
    path.write_bytes(_nifti_bytes(dim=(40, "4h", (3, 32767, 32767, 32767))))
    error, peak = _refusal(lambda: nifti.load(path))
    assert str(error).startswith(
        f"{path}: declared image 32767 x 32767 x 32767 = 35181150961663 voxels"
    )
    assert peak < REFUSAL_PEAK_BYTES


def test_scaled_nifti_counts_float64_bytes(tmp_path: Path) -> None:
    path = tmp_path / "x.nii"
    path.write_bytes(_nifti_bytes(scl_slope=(112, "2f", (0.5, 0.0))))
    voxels = 4 * 5 * 6
    assert nifti.load(path, ingest=IngestConfig(max_bytes=8 * voxels)).array.dtype == np.float64
    with pytest.raises(ResourceLimitError, match="at 8 bytes per voxel needs 960 bytes"):
        nifti.load(path, ingest=IngestConfig(max_bytes=8 * voxels - 1))
    plain = tmp_path / "plain.nii"
    plain.write_bytes(_nifti_bytes())
    assert nifti.load(plain, ingest=IngestConfig(max_bytes=2 * voxels)).array.dtype == np.int16


def test_absurd_nrrd_sizes_are_refused_before_reading(tmp_path: Path) -> None:
    image = sitk.GetImageFromArray(np.zeros((6, 5, 4), np.int16))
    sitk.WriteImage(image, str(tmp_path / "seed.nrrd"), False)
    text = (tmp_path / "seed.nrrd").read_bytes()
    path = tmp_path / "x.nrrd"
    path.write_bytes(text.replace(b"sizes: 4 5 6", b"sizes: 65535 65535 65535"))
    error, peak = _refusal(lambda: nifti.load(path))
    assert str(error).startswith(f"{path}: declared image 65535 x 65535 x 65535")
    assert peak < REFUSAL_PEAK_BYTES


def test_seg_frames_and_masks_are_limited(tmp_path: Path) -> None:
    grid = Geometry((4, 16, 18), (2.5, 1.0, 1.0), (-9.0, -8.0, 3.0))
    reference = write_reference_series(grid, tmp_path / "ct", uid_seed="limits")
    labels = np.zeros(grid.shape, np.uint8)
    labels[1:3, 4:10, 5:12] = 1
    out = seg.write_seg(
        Volume(labels, grid, VolumeKind.LABELS),
        reference,
        [RoiSpec("GTV", 1)],
        tmp_path / "seg.dcm",
    )
    n_frames = int(pydicom.dcmread(out).NumberOfFrames)  # the two slices holding the GTV
    frame_voxels, mask_voxels = n_frames * 16 * 18, 4 * 16 * 18
    assert frame_voxels < mask_voxels
    assert seg.read_seg(out, reference, ingest=IngestConfig(max_voxels=mask_voxels))
    with pytest.raises(ResourceLimitError, match=rf"{n_frames} x 16 x 18 = {frame_voxels} voxels"):
        seg.read_seg(out, reference, ingest=IngestConfig(max_voxels=frame_voxels - 1))
    # the frames fit; one mask per segment on the 4 x 16 x 18 grid does not
    with pytest.raises(ResourceLimitError, match=rf"1 x 4 x 16 x 18 = {mask_voxels} voxels"):
        seg.read_seg(out, reference, ingest=IngestConfig(max_voxels=mask_voxels - 1))


def test_short_nifti_is_refused_before_its_voxels_are_allocated(tmp_path: Path) -> None:
    """1000 x 1000 x 500 int16 (1 GB, within the default limits) declared in a 352-byte file."""
    path = tmp_path / "x.nii"
    path.write_bytes(_nifti_bytes(dim=(40, "4h", (3, 1000, 1000, 500)))[:352])
    tracemalloc.start()
    try:
        with pytest.raises(
            UnreadableScanError, match="declares 1000000352 bytes .* file holds 352"
        ):
            nifti.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < REFUSAL_PEAK_BYTES
