"""Resource limits: a declared image size over IngestConfig.max_voxels / max_bytes is refused
before anything is allocated, and the error says how much was asked and the limit; what a
compressed file (gzip NIfTI, deflated DICOM) inflates to is bounded while it is inflated.

The bombs are made here, in a few lines each, from pieces of compressed zeros repeated."""

from __future__ import annotations

import copy
import gzip
import pickle
import struct
import subprocess
import sys
import time
import tracemalloc
import zlib
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
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info

from medseg.config import IngestConfig, load_config
from medseg.errors import ConfigError, ResourceLimitError, UnreadableScanError
from medseg.geometry import Geometry
from medseg.io import nifti, seg
from medseg.io.dicom import (
    DEFLATED_HEADER_MAX_BYTES,
    DEFLATED_MAX_BYTES,
    ProblemKind,
    load_series,
    read_dicom,
    scan_folder,
)
from medseg.io.limits import GZIP_WBITS, RAW_DEFLATE_WBITS, InflatedReader, require_within_limits
from medseg.io.nifti import NIFTI_HEADER_MAX_BYTES
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
    """2048 x 512 x 512 voxels, and that many as float64 (see IngestConfig)."""
    ingest = IngestConfig()
    assert ingest.max_voxels == 2**29 == 2048 * 512 * 512
    assert ingest.max_bytes == 4 * 2**30 == 8 * ingest.max_voxels


def test_defaults_admit_a_whole_body_ct_and_refuse_a_billion_voxels() -> None:
    require_within_limits("ct/", (2000, 512, 512), 4)  # 0.5 mm slices, rescaled to float32
    require_within_limits("ct.nii.gz", (512, 512, 2000), 8)  # scaled NIfTI: float64
    with pytest.raises(
        ResourceLimitError, match="1000000000 voxels is over the limit of 536870912"
    ):
        require_within_limits("x.nii.gz", (1000, 1000, 1000), 1)


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
    assert "over the limit of 536870912 voxels" in message
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


# ---------------------------------------------------------------------------------------------
# compression bombs: what a file inflates to is bounded while it is inflated

MiB = 2**20


def _gzip_zeros(n_bytes: int) -> bytes:
    """gzip members that inflate to ``n_bytes`` zeros: a member of 1 MiB of zeros (about 1 KB)
    repeated, so 1 MB of file holds 1 GB."""
    n, rest = divmod(n_bytes, MiB)
    member = gzip.compress(bytes(MiB), compresslevel=9, mtime=0)
    return member * n + (gzip.compress(bytes(rest), mtime=0) if rest else b"")


def _uint8_nifti_header(*dims: int, **fields: tuple[int, str, tuple[Any, ...]]) -> bytes:
    """The 352 bytes before the voxels of a uint8 NIfTI-1 declaring ``dims``."""
    return _nifti_bytes(
        dim=(40, "4h", (3, *dims)), datatype=(70, "h", (2,)), bitpix=(72, "h", (8,)), **fields
    )[:352]


def test_billion_voxel_nifti_gz_bomb_is_refused_from_its_header_at_once(tmp_path: Path) -> None:
    """1 MB of gzip that declares and holds 1000 x 1000 x 1000 uint8 (1 GB of zeros). Under
    the old default (2**31 voxels) it was loaded: 4 s and 2.1 GB, then minutes in predict."""
    path = tmp_path / "bomb.nii.gz"
    path.write_bytes(gzip.compress(_uint8_nifti_header(1000, 1000, 1000)) + _gzip_zeros(10**9))
    assert path.stat().st_size < 1.1e6
    start = time.perf_counter()
    error, peak = _refusal(lambda: nifti.load(path))
    assert time.perf_counter() - start < 1.0
    assert str(error) == (
        f"{path}: declared image 1000 x 1000 x 1000 = 1000000000 voxels is over the limit of "
        "536870912 voxels (ingest.max_voxels)"
    )
    assert peak < REFUSAL_PEAK_BYTES


def test_nifti_gz_is_inflated_no_further_than_its_header_declares(tmp_path: Path) -> None:
    """64 x 64 x 64 uint8 declared, then 1 GiB more of zeros in the stream: never inflated."""
    path = tmp_path / "x.nii.gz"
    path.write_bytes(gzip.compress(_uint8_nifti_header(64, 64, 64)) + _gzip_zeros(64**3 + 2**30))
    tracemalloc.start()
    start = time.perf_counter()
    try:
        volume = nifti.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 1.0
    assert volume.array.shape == (64, 64, 64) and not volume.array.any()
    assert peak < REFUSAL_PEAK_BYTES


def test_nifti_gz_extension_bomb_is_refused_at_the_header_bound(tmp_path: Path) -> None:
    """A header extension declaring 1 GiB (zeros) before one voxel: nibabel reads extensions
    whole while it parses the header, before any declared size can be checked."""
    esize = 2**30
    header = _uint8_nifti_header(
        1, 1, 1, vox_offset=(108, "f", (352.0 + esize,)), extension=(348, "4b", (1, 0, 0, 0))
    )
    path = tmp_path / "x.nii.gz"
    path.write_bytes(gzip.compress(header + struct.pack("<ii", esize, 0)) + _gzip_zeros(esize))
    tracemalloc.start()
    try:
        with pytest.raises(ResourceLimitError) as info:
            nifti.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(info.value) == (
        f"{path}: inflates to more than {NIFTI_HEADER_MAX_BYTES} bytes (0.0625 GiB), the bound "
        "on a NIfTI header and its extensions"
    )
    assert peak < 2 * NIFTI_HEADER_MAX_BYTES


@pytest.mark.parametrize(
    ("cut", "message"),
    [
        pytest.param("stream", "NIfTI voxel data cannot be read", id="stream-ends-early"),
        pytest.param("file", "truncated file", id="compressed-bytes-cut"),
    ],
)
def test_short_nifti_gz_is_unreadable(tmp_path: Path, cut: str, message: str) -> None:
    """100 x 100 x 100 int16 declared (2 MB); the stream ends after 1000 bytes of voxels, or the
    file is cut in the middle of the compressed voxels."""
    header = _nifti_bytes(dim=(40, "4h", (3, 100, 100, 100)))[:352]
    voxels = np.random.default_rng(0).integers(0, 2**15, 10**6, dtype=np.int16).tobytes()
    path = tmp_path / "x.nii.gz"
    if cut == "stream":
        path.write_bytes(gzip.compress(header + voxels[:1000]))
    else:
        path.write_bytes(gzip.compress(header + voxels)[:1_000_000])
    with pytest.raises(UnreadableScanError, match=message) as info:
        nifti.load(path)
    assert str(info.value).startswith(f"{path}: ")


def _deflate(data: bytes) -> bytes:
    """Raw deflate blocks of ``data``, byte-aligned and referring to nothing before them, so
    such pieces can be joined into one stream (end it with ``_DEFLATE_END``)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush(zlib.Z_FULL_FLUSH)


_DEFLATE_END = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS).flush()


def _deflated_zeros(n_bytes: int) -> bytes:
    n, rest = divmod(n_bytes, MiB)
    return _deflate(bytes(MiB)) * n + _deflate(bytes(rest))


def _deflated_ct(
    folder: Path,
    *,
    rows: int = 128,
    columns: int = 128,
    pixel_bytes: int = 128 * 128 * 2,
    signature_bytes: int | None = None,
) -> Path:
    """CT_small.dcm in Deflated Explicit VR Little Endian whose pixel data element holds
    ``pixel_bytes`` zeros (1 KB of deflate per MiB); with ``signature_bytes``, a Digital
    Signatures Sequence follows whose item holds that many zeros (an element pydicom never
    defers: it is inside a sequence)."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds.PixelData
    ds.Rows, ds.Columns = rows, columns
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    meta = DicomBytesIO()
    meta.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(meta, ds.file_meta)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    pixel_header = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, pixel_bytes)
    stream = _deflate(body.getvalue() + pixel_header) + _deflated_zeros(pixel_bytes)
    if signature_bytes is not None:
        opening = (
            struct.pack("<HH2sHI", 0xFFFA, 0xFFFA, b"SQ", 0, 0xFFFFFFFF)
            + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
            + struct.pack("<HH2sHI", 0x0400, 0x0120, b"OB", 0, signature_bytes)
        )
        closing = struct.pack("<HHIHHI", 0xFFFE, 0xE00D, 0, 0xFFFE, 0xE0DD, 0)
        stream += _deflate(opening) + _deflated_zeros(signature_bytes) + _deflate(closing)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "ct.dcm"
    path.write_bytes(meta.getvalue() + stream + _DEFLATE_END)
    return path


#: Peak RSS of ``medseg inspect`` on the deflate bomb (the process: ~150 MB).
INSPECT_PEAK_MB = 600

# VmHWM, not getrusage's ru_maxrss: Linux carries the parent's peak across fork and exec into
# the child's ru_maxrss, so under a large pytest process the child would report the parent's.
_INSPECT_PEAK = """
import runpy, sys
sys.argv = ["medseg", "inspect", sys.argv[1]]
try:
    runpy.run_module("medseg", run_name="__main__")
except SystemExit as exc:
    assert not exc.code, exc.code
with open("/proc/self/status") as fh:
    hwm_kb = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
print("peak MB", hwm_kb / 1024)
"""


def test_inspect_of_a_deflate_bomb_stays_small(tmp_path: Path) -> None:
    """A 1.4 MB deflated slice whose pixel data inflate to 1.4 GB of zeros: pydicom inflated
    it whole, and ``medseg inspect`` peaked at 2.9 GB. Now pixel data are skipped a chunk at a
    time, never kept."""
    path = _deflated_ct(tmp_path / "ct", pixel_bytes=1400 * MiB)
    assert path.stat().st_size < 1.5e6
    out = subprocess.run(
        [sys.executable, "-c", _INSPECT_PEAK, str(path.parent)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert "1 DICOM files of 1" in out.stdout and "problem" not in out.stdout
    peak_mb = float(out.stdout.strip().splitlines()[-1].split()[-1])
    assert peak_mb < INSPECT_PEAK_MB, f"peak RSS {peak_mb:.0f} MB"


def test_deflate_bomb_declaring_a_huge_slice_is_refused_before_its_pixels(tmp_path: Path) -> None:
    """32768 x 20480 pixels (6.7e8 voxels: within the old 2**31) in a deflated file."""
    path = _deflated_ct(tmp_path / "ct", rows=32768, columns=20480, pixel_bytes=64 * MiB)
    error, peak = _refusal(lambda: load_series(path.parent))
    assert str(error).startswith(
        f"{path.parent}: declared image 1 x 32768 x 20480 = 671088640 voxels is over the limit"
    )
    assert peak < REFUSAL_PEAK_BYTES


def test_deflated_pixel_data_are_read_as_declared_not_as_long_as_the_element(
    tmp_path: Path,
) -> None:
    """128 x 128 pixels declared, a 512 MiB pixel data element: only 32 KiB are kept."""
    path = _deflated_ct(tmp_path / "ct", pixel_bytes=512 * MiB)
    tracemalloc.start()
    try:
        volume = load_series(path.parent)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert volume.array.shape == (1, 128, 128)
    assert peak < REFUSAL_PEAK_BYTES


def test_deflated_header_over_its_bound_is_a_named_problem(tmp_path: Path) -> None:
    """300 MiB of zeros inside a sequence item: pydicom reads sequence items whole."""
    path = _deflated_ct(tmp_path / "ct", signature_bytes=300 * MiB)
    tracemalloc.start()
    try:
        inventory = scan_folder(path.parent)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    (problem,) = inventory.problems
    assert problem.kind is ProblemKind.TOO_LARGE and problem.files == ("ct.dcm",)
    assert problem.message == (
        f"ct.dcm: more than {DEFLATED_HEADER_MAX_BYTES} bytes (the bound on a deflated DICOM "
        "header) read into memory"
    )
    assert peak < 1.5 * DEFLATED_HEADER_MAX_BYTES
    with pytest.raises(ResourceLimitError, match="1 file.s. cannot be read: ct.dcm: more than"):
        load_series(path.parent)


def test_deflated_data_set_over_its_bound_is_refused(tmp_path: Path) -> None:
    path = _deflated_ct(tmp_path / "ct", pixel_bytes=128 * MiB)
    with pytest.raises(ResourceLimitError) as info:
        read_dicom(path, 4096, max_bytes=64 * MiB)
    assert str(info.value) == (
        f"{path}: inflates to more than {64 * MiB} bytes (0.0625 GiB), the bound on a deflated "
        "DICOM data set"
    )
    assert DEFLATED_MAX_BYTES == IngestConfig().max_bytes + DEFLATED_HEADER_MAX_BYTES


def test_cut_deflated_file_is_unreadable(tmp_path: Path) -> None:
    path = _deflated_ct(tmp_path / "ct")
    path.write_bytes(path.read_bytes()[:-200])
    (problem,) = scan_folder(path.parent).problems
    assert problem.kind is ProblemKind.UNREADABLE
    assert problem.message.startswith("ct.dcm: compressed data end after")
    with pytest.raises(UnreadableScanError, match="ct.dcm: compressed data end after"):
        load_series(path.parent)


def test_deflated_header_copies_and_pickles_with_its_deferred_pixel_data(tmp_path: Path) -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    path = tmp_path / "ct.dcm"
    ds.save_as(path, enforce_file_format=True)
    header = read_dicom(path, 4096)
    raw = header.get_item(0x7FE00010, keep_deferred=True)
    assert raw is not None and raw.value is None  # deferred
    for other in (copy.deepcopy(header), pickle.loads(pickle.dumps(header)), header):
        assert other.PixelData == ds.PixelData


@pytest.mark.parametrize(
    "wbits",
    [
        pytest.param(GZIP_WBITS, id="gzip-members"),
        pytest.param(RAW_DEFLATE_WBITS, id="raw-deflate"),
    ],
)
def test_inflated_reader_reads_and_seeks_like_the_inflated_bytes(
    tmp_path: Path, wbits: int
) -> None:
    rng = np.random.default_rng(0)
    data = rng.integers(0, 4, 3 * MiB // 2, dtype=np.uint8).tobytes() + bytes(MiB)
    path = tmp_path / "x.z"
    if wbits == GZIP_WBITS:  # two members and zero padding, as gzip writes and reads them
        path.write_bytes(gzip.compress(data[:1000]) + gzip.compress(data[1000:]) + b"\0\0")
    else:  # behind a 40-byte header, with trailing bytes after the stream
        path.write_bytes(b"H" * 40 + _deflate(data) + _DEFLATE_END + b"trailing")
    start = 0 if wbits == GZIP_WBITS else 40
    reader = InflatedReader(path, wbits=wbits, limit=len(data), start=start)
    for _ in range(100):
        if rng.random() < 0.5:
            reader.seek(int(rng.integers(0, len(data) + 10)))
        else:  # small steps back and forth, as parsers take them
            reader.seek(max(0, reader.tell() + int(rng.integers(-200, 200))))
        at, n = reader.tell(), int(rng.choice([0, 1, 8, 100, 70_000, MiB]))
        assert reader.read(n) == data[at : at + n]
        assert reader.tell() == at + len(data[at : at + n])
    out = bytearray(len(data) + 5)
    reader.seek(0)
    assert reader.readinto(out) == len(data) and out[: len(data)] == data
    again = pickle.loads(pickle.dumps(reader))
    again.seek(7)
    assert again.read(3) == data[7:10]
    short = InflatedReader(path, wbits=wbits, limit=len(data) - 1, start=start)
    with pytest.raises(ResourceLimitError, match=f"inflates to more than {len(data) - 1} bytes"):
        short.read()
