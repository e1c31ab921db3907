"""Fuzzing the loaders with mutated real files: a Volume or a named MedsegError, nothing else.

Seeds are pydicom's own test files (single-frame CT and MR in five transfer syntaxes, an
enhanced multi-frame MR given per-frame positions here, a three-slice series), RT-STRUCT and
SEG files medseg writes on a small grid, and small NIfTI, NRRD and MetaImage files made here.
Each example mutates one seed (elements replaced with absurd values or wrong VRs, elements
deleted, bytes flipped, inserted or cut off, header fields of NIfTI overwritten) and loads it.

Every outcome must be a valid ``Volume`` (or dict of them) or a ``MedsegError`` whose message
names the file or folder; any other exception, an example slower than 10 s (hypothesis
``deadline``) or one that allocates more than a bound far above the loader's configured
``max_bytes`` (``tracemalloc`` peak) fails. Examples are derandomized so CI is reproducible.

The default run is short (60 examples per test). A campaign:
``MEDSEG_FUZZ_EXAMPLES=5000 pytest tests/io/test_fuzz.py`` (optionally under ``ulimit -v``).
What campaigns found is kept below as explicit cases (``FOUND_*`` and ``test_found_*``), each
a recipe (seed + mutation) rather than a stored file.
"""

from __future__ import annotations

import functools
import gzip
import io
import os
import re
import struct
import tempfile
import tracemalloc
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException
from pydicom.tag import Tag

from medseg.config import IngestConfig
from medseg.errors import GeometryError, MedsegError, UnreadableScanError
from medseg.geometry import Geometry
from medseg.io import nifti, rtstruct, seg
from medseg.io.dicom import load_series
from medseg.io.rtstruct import RoiSpec
from medseg.volume import Volume, VolumeKind
from tests.rt_helpers import write_reference_series

EXAMPLES = int(os.environ.get("MEDSEG_FUZZ_EXAMPLES", "60"))

#: The fuzzed loaders run with small limits, so an absurd declared size must be refused
#: by the resource limit, and any allocation far above it is a leak of the check.
LIMITS = IngestConfig(max_voxels=2**22, max_bytes=16 * 2**20)
#: tracemalloc peak allowed per example: the limit, a few working copies, parser overhead.
PEAK_BYTES = 8 * LIMITS.max_bytes

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=10_000,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# ---------------------------------------------------------------------------------------------
# outcome


def check_outcome(load: Callable[[], Any], named: str) -> Any:
    """Run ``load``: it returns, or raises a MedsegError naming ``named``; memory stays bounded."""
    tracemalloc.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = load()
    except MedsegError as exc:
        assert named in str(exc), f"{type(exc).__name__} does not name {named}: {exc}"
        result = exc
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak <= PEAK_BYTES, f"peak allocation {peak} bytes > {PEAK_BYTES}"
    volumes = result.values() if isinstance(result, dict) else [result]
    for volume in volumes:
        assert isinstance(volume, (Volume, MedsegError)), type(volume)
    return result


# ---------------------------------------------------------------------------------------------
# DICOM seeds and mutations

SINGLE_FRAME_SEEDS = (
    "CT_small.dcm",  # explicit VR little endian CT
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_padded.dcm",  # pixel padding value
)


def _dcm_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds)
    return buffer.getvalue()


@functools.cache
def seed_bytes(name: str) -> bytes:
    """A pydicom test file's bytes; ``enhanced`` is emri_small.dcm with frame geometry,
    ``deflated`` CT_small.dcm in Deflated Explicit VR Little Endian."""
    if name.startswith("series"):
        return SERIES[int(name[-1])]
    if name in ("rtstruct", "seg"):
        return rt_seeds()[1 if name == "rtstruct" else 2]
    if name == "deflated":
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
        return _dcm_bytes(ds)
    if name != "enhanced":
        return Path(get_testdata_file(name)).read_bytes()
    ds = pydicom.dcmread(get_testdata_file("emri_small.dcm"))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.EnhancedMRImageStorage
    measures, orientation, shared = Dataset(), Dataset(), Dataset()
    measures.PixelSpacing = [0.8, 0.8]
    measures.SliceThickness = 2.0
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PixelMeasuresSequence = [measures]
    shared.PlaneOrientationSequence = [orientation]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames = []
    for k in range(int(ds.NumberOfFrames)):
        position, item = Dataset(), Dataset()
        position.ImagePositionPatient = [-25.6, -25.6, 2.0 * k]
        item.PlanePositionSequence = [position]
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = frames
    return _dcm_bytes(ds)


#: Elements the loaders read; each is replaced, given another VR, or deleted.
TARGETS = tuple(
    Tag(k)
    for k in (
        "Rows",
        "Columns",
        "NumberOfFrames",
        "BitsAllocated",
        "BitsStored",
        "HighBit",
        "PixelRepresentation",
        "SamplesPerPixel",
        "PlanarConfiguration",
        "PhotometricInterpretation",
        "PixelSpacing",
        "ImagePositionPatient",
        "ImageOrientationPatient",
        "RescaleSlope",
        "RescaleIntercept",
        "PixelPaddingValue",
        "SOPClassUID",
        "SOPInstanceUID",
        "SeriesInstanceUID",
        "Modality",
        "ImageType",
        "SeriesNumber",
        "PixelData",
        "FrameOfReferenceUID",
        "SharedFunctionalGroupsSequence",
        "PerFrameFunctionalGroupsSequence",
    )
)
#: Elements inside the functional groups of one frame of the enhanced seed.
FRAME_TARGETS = (
    ("PlanePositionSequence", "ImagePositionPatient"),
    ("PixelMeasuresSequence", "PixelSpacing"),
    ("PlaneOrientationSequence", "ImageOrientationPatient"),
    ("PixelValueTransformationSequence", "RescaleSlope"),
)
VRS = (
    "US",
    "SS",
    "UL",
    "SL",
    "DS",
    "IS",
    "LO",
    "CS",
    "UI",
    "OB",
    "OW",
    "UN",
    "FD",
    "FL",
    "AT",
    "SQ",
    "ST",
)
TEXTS = (
    "",
    " ",
    "0",
    "-1",
    "1",
    "NaN",
    "nan",
    "inf",
    "-inf",
    "1e309",
    "-0",
    "abc",
    "1\\2",
    "1\\2\\3",
    "0\\0\\0\\0\\0\\0",
    "1\\0\\0\\0\\1\\0",
    "1\\0\\0\\1\\0\\0",
    "65536",
    "4294967296",
    "99999999999999999999",
    "1.5",
    "-1e-300",
    "0\\0",
    "-0.5\\0.5",
    "NaN\\NaN\\NaN",
    "1\\1\\1\\1\\1\\1\\1",
)
NUMBERS = (0, 1, -1, 2, 3, 7, 8, 12, 16, 32, 64, 255, 32767, 65535, 2**31 - 1, 2**32 - 1)


@st.composite
def element_values(draw: st.DrawFn, little_endian: bool) -> bytes:
    """Value bytes: text, packed integers or floats, or random bytes (any length)."""
    kind = draw(st.sampled_from(["text", "int", "float", "raw"]))
    order = "<" if little_endian else ">"
    if kind == "text":
        value = draw(st.sampled_from(TEXTS)).encode()
    elif kind == "int":
        fmt = draw(st.sampled_from("HhIi"))
        number = draw(st.sampled_from(NUMBERS))
        bits = struct.calcsize(fmt) * 8
        number %= 2**bits
        if fmt.islower() and number >= 2 ** (bits - 1):
            number -= 2**bits
        count = draw(st.integers(1, 3))
        value = struct.pack(order + fmt * count, *[number] * count)
    elif kind == "float":
        fmt = draw(st.sampled_from("fd"))
        number = draw(st.sampled_from([0.0, -1.0, 1e-30, 1e30, float("nan"), float("inf")]))
        value = struct.pack(order + fmt * 3, *[number] * 3)
    else:
        value = draw(st.binary(max_size=24))
    return value + b" " * (len(value) % 2 if draw(st.booleans()) else 0)


def _mutate_element(draw: st.DrawFn, ds: Dataset, tag: Any) -> None:
    implicit, little = ds.original_encoding
    if draw(st.integers(0, 4)) == 0:
        if tag in ds:
            del ds[tag]
        return
    old = ds.get_item(tag, keep_deferred=True) if tag in ds else None
    vr = draw(st.sampled_from(VRS)) if draw(st.booleans()) or old is None else old.VR
    value = draw(element_values(bool(little)))
    ds._dict[tag] = RawDataElement(tag, vr, len(value), value, 0, bool(implicit), bool(little))


@st.composite
def dicom_mutations(draw: st.DrawFn, seed: str) -> bytes:
    """Seed ``seed`` (a key of ``seed_bytes``) with 1-3 elements mutated (in one frame's
    functional groups first, then at the top level), then possibly its bytes mutated."""
    data = original = seed_bytes(seed)
    if draw(st.integers(0, 3)):
        ds = pydicom.dcmread(io.BytesIO(data))
        n_top = draw(st.integers(1, 3))
        per_frame = ds.get("PerFrameFunctionalGroupsSequence")
        if per_frame and draw(st.booleans()):
            n_top -= 1
            item = per_frame[draw(st.integers(0, len(per_frame) - 1))]
            group, keyword = draw(st.sampled_from(FRAME_TARGETS))
            if group not in item:
                setattr(item, group, [Dataset()])
            _mutate_element(draw, item.get(group)[0], Tag(keyword))
        for _ in range(n_top):
            tag = draw(st.sampled_from(TARGETS))
            _mutate_element(draw, ds.file_meta if tag.group == 2 else ds, tag)
        try:
            data = _dcm_bytes(ds)
        except (
            ValueError,
            TypeError,
            AttributeError,
            KeyError,
            struct.error,
            OverflowError,
            BytesLengthException,
            OSError,
        ):
            pass  # pydicom cannot write this mutation; mutate the bytes instead
    if draw(st.integers(0, 2)) == 0 or data == original:
        data = draw(byte_mutations(data))
    return data


@st.composite
def byte_mutations(draw: st.DrawFn, data: bytes) -> bytes:
    """Truncation, flipped bytes, an overwritten, inserted or deleted run; mostly in the
    header (the first 2 KiB), where a flip changes what the file declares."""
    n = len(data)
    position = draw(st.integers(0, min(n, 2048) - 1) | st.integers(0, n - 1))
    kind = draw(st.sampled_from(["truncate", "flip", "overwrite", "insert", "delete"]))
    if kind == "truncate":
        return data[:position]
    if kind == "flip":
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            where = min(n - 1, position + draw(st.integers(0, 64)))
            out[where] ^= draw(st.integers(1, 255))
        return bytes(out)
    run = draw(st.binary(min_size=1, max_size=16) | st.sampled_from([b"\xff" * 4, b"\x00" * 4]))
    if kind == "overwrite":
        return data[:position] + run + data[position + len(run) :]
    if kind == "insert":
        return data[:position] + run + data[position:]
    return data[:position] + data[position + draw(st.integers(1, 64)) :]


def _series_of_three() -> list[bytes]:
    """CT_small.dcm as three slices 5 mm apart (new SOP Instance UIDs)."""
    slices = []
    for k in range(3):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.ImagePositionPatient = [-158.135803, -179.035797, -75.699997 + 5.0 * k]
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.3.4.{k + 1}"
        ds.InstanceNumber = k + 1
        slices.append(_dcm_bytes(ds))
    return slices


SERIES = _series_of_three()


def _load_folder(files: dict[str, bytes]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "series"
        folder.mkdir()
        for name, data in files.items():
            (folder / name).write_bytes(data)
        check_outcome(lambda: load_series(folder, ingest=LIMITS), str(folder))


def test_seeds_load() -> None:
    """The seeds themselves are valid: the fuzzing starts from files that load."""
    for name in (*SINGLE_FRAME_SEEDS, "enhanced", "deflated"):
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "x.dcm").write_bytes(seed_bytes(name))
            volume = load_series(Path(tmp))
            assert volume.geometry.shape[0] == (10 if name == "enhanced" else 1), name
    with tempfile.TemporaryDirectory() as tmp:
        for k, data in enumerate(SERIES):
            (Path(tmp) / f"{k}.dcm").write_bytes(data)
        assert load_series(Path(tmp)).geometry.spacing_mm[0] == pytest.approx(5.0)


@pytest.mark.timeout(300)
@FUZZ
@given(data=st.data(), name=st.sampled_from(SINGLE_FRAME_SEEDS))
def test_mutated_single_frame_dicom(data: st.DataObject, name: str) -> None:
    mutated = data.draw(dicom_mutations(name), label="file")
    _load_folder({"x.dcm": mutated})


@pytest.mark.timeout(300)
@FUZZ
@given(data=st.data())
def test_mutated_deflated_dicom(data: st.DataObject) -> None:
    """The data set is inflated by medseg's bounded reader: flipped or cut deflate data, and
    mutated elements inside the compressed stream, are named errors too."""
    mutated = data.draw(dicom_mutations("deflated"), label="file")
    _load_folder({"x.dcm": mutated})


@pytest.mark.timeout(300)
@FUZZ
@given(data=st.data())
def test_mutated_enhanced_multiframe_dicom(data: st.DataObject) -> None:
    mutated = data.draw(dicom_mutations("enhanced"), label="file")
    _load_folder({"x.dcm": mutated})


@pytest.mark.timeout(300)
@FUZZ
@given(data=st.data(), which=st.integers(0, 2))
def test_one_mutated_slice_of_a_series(data: st.DataObject, which: int) -> None:
    files = {f"{k}.dcm": b for k, b in enumerate(SERIES)}
    files[f"{which}.dcm"] = data.draw(dicom_mutations(f"series{which}"), label="slice")
    _load_folder(files)


# ---------------------------------------------------------------------------------------------
# RT-STRUCT and SEG on a small reference series

GRID = Geometry((4, 16, 18), (2.5, 1.0, 1.0), (-9.0, -8.0, 3.0))


@functools.cache
def rt_seeds() -> tuple[Volume, bytes, bytes]:
    """(reference, RT-STRUCT bytes, SEG bytes) for a 4 x 16 x 18 CT medseg writes (the
    reference is read back into memory, so its folder is not kept)."""
    with tempfile.TemporaryDirectory(prefix="medseg-fuzz-") as name:
        tmp = Path(name)
        reference = write_reference_series(GRID, tmp / "ct", uid_seed="fuzz")
        labels = np.zeros(GRID.shape, np.uint8)
        labels[1:3, 4:10, 5:12] = 1
        labels[2, 11:14, 2:5] = 2
        label_volume = Volume(labels, GRID, VolumeKind.LABELS)
        rois = [RoiSpec("GTV", 1, (255, 0, 0), "GTV"), RoiSpec("Cord", 2, (0, 255, 0), "ORGAN")]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rs = rtstruct.write(label_volume, reference, rois, tmp / "rs.dcm")
            sg = seg.write_seg(label_volume, reference, rois, tmp / "seg.dcm")
        return reference, rs.read_bytes(), sg.read_bytes()


def test_rt_seeds_read_back() -> None:
    reference, rs, sg = rt_seeds()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "rs.dcm").write_bytes(rs)
        (Path(tmp) / "seg.dcm").write_bytes(sg)
        assert rtstruct.read(Path(tmp) / "rs.dcm", reference)["GTV"].array.sum() == 2 * 6 * 7
        assert seg.read_seg(Path(tmp) / "seg.dcm", reference)["Cord"].array.sum() == 9


@pytest.mark.timeout(300)
@FUZZ
@given(data=st.data(), which=st.sampled_from(["rtstruct", "seg"]))
def test_mutated_rtstruct_and_seg(data: st.DataObject, which: str) -> None:
    reference, _rs, _sg = rt_seeds()
    mutated = data.draw(dicom_mutations(which), label="file")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.dcm"
        path.write_bytes(mutated)
        if which == "rtstruct":
            check_outcome(lambda: rtstruct.read(path, reference), str(path))
        else:
            check_outcome(lambda: seg.read_seg(path, reference, ingest=LIMITS), str(path))


# ---------------------------------------------------------------------------------------------
# NIfTI headers, NRRD and MetaImage

#: NIfTI-1 header fields: (byte offset, struct format, values to write there).
NIFTI_FIELDS = {
    "sizeof_hdr": (0, "i", (0, -1, 540, 2**31 - 1)),
    "dim": (40, "8h", None),
    "datatype": (
        70,
        "h",
        (
            0,
            1,
            2,
            4,
            8,
            16,
            32,
            64,
            128,
            256,
            511,
            512,
            768,
            1024,
            1280,
            1536,
            1792,
            2048,
            2304,
            -1,
            32767,
        ),
    ),
    "bitpix": (72, "h", (0, 1, 7, 8, 16, 64, -8, 32767)),
    "pixdim": (76, "8f", None),
    "vox_offset": (
        108,
        "f",
        (0.0, -352.0, 1.0, 351.0, 352.5, 1e12, float("nan"), float("inf"), 2.0**31),
    ),
    "scl_slope": (112, "f", (0.0, -1.0, 1e38, float("nan"), float("inf"), 1e-38)),
    "scl_inter": (116, "f", (float("nan"), float("inf"), 1e38, -1e38)),
    "dim_info": (39, "b", (-1, 0, 63, 127)),
    "xyzt_units": (123, "b", (-1, 0, 2, 127)),
    "qform_code": (252, "h", (-1, 0, 1, 2, 3, 4, 5, 32767)),
    "sform_code": (254, "h", (-1, 0, 1, 2, 3, 4, 5, 32767)),
    "quatern": (256, "6f", None),
    "srow": (280, "12f", None),
    "magic": (344, "4s", (b"n+1\x00", b"ni1\x00", b"n+2\x00", b"\x00\x00\x00\x00", b"abcd")),
}
FLOATS = st.sampled_from(
    [0.0, -0.0, -1.0, 1.0, 1e-30, 1e30, 3.4e38, float("nan"), float("inf"), -float("inf"), 2.5]
) | st.floats(-1e4, 1e4, width=32)


@st.composite
def nifti_field(draw: st.DrawFn) -> tuple[int, bytes]:
    name = draw(st.sampled_from(sorted(NIFTI_FIELDS)))
    offset, fmt, choices = NIFTI_FIELDS[name]
    count = int(fmt[:-1] or 1)
    if fmt.endswith("h") and choices is None:  # dim: ndim then 7 sizes
        values: list[Any] = [draw(st.sampled_from([-1, 0, 1, 2, 3, 4, 5, 7, 8, 9, 32767]))]
        values += [
            draw(st.sampled_from([-1, 0, 1, 2, 3, 4, 5, 6, 255, 2**15 - 1])) for _ in range(7)
        ]
    elif fmt.endswith("f") and choices is None:
        values = [draw(FLOATS) for _ in range(count)]
    else:
        values = [draw(st.sampled_from(choices))]
    return offset, struct.pack("<" + fmt, *values)


@functools.cache
def nifti_seed() -> bytes:
    """A 4 x 5 x 6 int16 NIfTI-1 (.nii) with qform and sform set, as medseg writes them."""
    volume = Volume(
        np.arange(120, dtype=np.int16).reshape(6, 5, 4),
        Geometry((6, 5, 4), (2.0, 1.0, 1.5), (-3.0, 4.0, 5.0)),
        VolumeKind.IMAGE,
    )
    with tempfile.TemporaryDirectory() as tmp:
        return Path(nifti.save(volume, Path(tmp) / "x.nii")).read_bytes()


@pytest.mark.timeout(300)
@FUZZ
@given(data=st.data(), gz=st.booleans(), kind=st.sampled_from(list(VolumeKind)[:2]))
def test_mutated_nifti_header(data: st.DataObject, gz: bool, kind: VolumeKind) -> None:
    raw = bytearray(nifti_seed())
    for _ in range(data.draw(st.integers(1, 4), label="fields")):
        offset, value = data.draw(nifti_field(), label="field")
        raw[offset : offset + len(value)] = value
    mutated = bytes(raw)
    if data.draw(st.integers(0, 3), label="bytes") == 0:
        mutated = data.draw(byte_mutations(mutated), label="mutated")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("x.nii.gz" if gz else "x.nii")
        path.write_bytes(gzip.compress(mutated, mtime=0) if gz else mutated)
        check_outcome(lambda: nifti.load(path, kind, ingest=LIMITS), str(path))


@functools.cache
def itk_seed(suffix: str) -> bytes:
    """A 4 x 5 x 6 int16 NRRD or MetaImage written by SimpleITK (uncompressed)."""
    image = sitk.GetImageFromArray(np.arange(120, dtype=np.int16).reshape(6, 5, 4))
    image.SetSpacing((1.5, 1.0, 2.0))
    with tempfile.TemporaryDirectory() as tmp:
        sitk.WriteImage(image, str(Path(tmp) / f"x{suffix}"), False)
        return (Path(tmp) / f"x{suffix}").read_bytes()


ITK_LINES = {
    ".nrrd": [
        b"sizes: 4 5 6",
        b"sizes: 65535 65535 65535",
        b"sizes: 0 5 6",
        b"sizes: -4 5 6",
        b"sizes: 4 5",
        b"type: double",
        b"type: blob",
        b"encoding: gzip",
        b"space directions: (nan,0,0) (0,1,0) (0,0,2)",
        b"space directions: (0,0,0) (0,1,0) (0,0,2)",
        b"dimension: 4",
        b"dimension: 2",
        b"space origin: (inf,0,0)",
        b"endian: big",
    ],
    ".mha": [
        b"DimSize = 4 5 6",
        b"DimSize = 65535 65535 65535",
        b"DimSize = 0 5 6",
        b"ElementSpacing = 0 0 0",
        b"ElementSpacing = nan 1 1",
        b"ElementType = MET_DOUBLE",
        b"ElementType = MET_BLOB",
        b"NDims = 4",
        b"NDims = 2",
        b"CompressedData = True",
        b"TransformMatrix = 0 0 0 0 0 0 0 0 0",
        b"ElementNumberOfChannels = 3",
        b"Offset = nan 0 0",
    ],
}


@pytest.mark.timeout(300)
@FUZZ
@given(data=st.data(), suffix=st.sampled_from(sorted(ITK_LINES)))
def test_mutated_nrrd_and_metaimage(data: st.DataObject, suffix: str) -> None:
    seed = itk_seed(suffix)
    header, sep, body = seed.partition(
        b"\n\n" if suffix == ".nrrd" else b"ElementDataFile = LOCAL\n"
    )
    lines = header.split(b"\n")
    for _ in range(data.draw(st.integers(1, 3), label="lines")):
        line = data.draw(st.sampled_from(ITK_LINES[suffix]), label="line")
        key = line.split(b":" if suffix == ".nrrd" else b"=")[0]
        lines = [x for x in lines if not x.startswith(key)]
        lines.insert(data.draw(st.integers(1, len(lines)), label="at"), line)
    mutated = b"\n".join(lines) + sep + body
    if data.draw(st.integers(0, 3), label="bytes") == 0:
        mutated = data.draw(byte_mutations(mutated), label="mutated")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"x{suffix}"
        path.write_bytes(mutated)
        check_outcome(lambda: nifti.load(path, ingest=LIMITS), str(path))


# ---------------------------------------------------------------------------------------------
# what the fuzzing found: each of these raised another exception (OverflowError, TypeError,
# BytesLengthException, NotImplementedError, OSError, a Rust PanicException), loaded nonsense
# silently, named no file, or made a reader reserve gigabytes, before the loaders were fixed


def edited(name: str, *edits: tuple[str, str | None, bytes]) -> bytes:
    """Seed ``name`` with elements replaced: (keyword, VR, value bytes); VR None deletes."""
    ds = pydicom.dcmread(io.BytesIO(seed_bytes(name)))
    implicit, little = ds.original_encoding
    for keyword, vr, value in edits:
        tag = Tag(keyword)
        target = ds.file_meta if tag.group == 2 else ds
        if vr is None:
            del target[tag]
        else:
            target._dict[tag] = RawDataElement(tag, vr, len(value), value, 0, implicit, little)
    return _dcm_bytes(ds)


def edited_frame(group: str, keyword: str, vr: str, value: bytes) -> bytes:
    """The enhanced seed with one element of frame 3's functional group ``group`` replaced."""
    ds = pydicom.dcmread(io.BytesIO(seed_bytes("enhanced")))
    item = ds.PerFrameFunctionalGroupsSequence[2]
    if group not in item:
        setattr(item, group, [Dataset()])
    tag = Tag(keyword)
    item[group][0]._dict[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)
    return _dcm_bytes(ds)


def file_meta_declaring_gigabytes() -> bytes:
    """CT_small.dcm whose FileMetaInformationVersion (OB) declares 3.75 GiB: pydicom read it
    with a file object's read(n), which reserves n bytes first."""
    data = bytearray(seed_bytes("CT_small.dcm"))
    at = data.index(b"\x02\x00\x01\x00OB\x00\x00")
    struct.pack_into("<I", data, at + 8, 0xF0000000)
    return bytes(data)


def rle_second_segment_moved(delta: int) -> bytes:
    """MR_small_RLE.dcm with its second RLE segment's offset moved by ``delta`` bytes:
    pylibjpeg-rle panics (index out of bounds) instead of raising."""
    data = bytearray(seed_bytes("MR_small_RLE.dcm"))
    header = data.rindex(b"\xfe\xff\x00\xe0") + 8  # the one fragment: the RLE header
    struct.pack_into("<I", data, header + 8, struct.unpack_from("<I", data, header + 8)[0] + delta)
    return bytes(data)


FOUND_DICOM = [
    pytest.param(
        lambda: edited("CT_small.dcm", ("Rows", "DS", b"1e309 ")),
        GeometryError,
        r"x\.dcm: missing or invalid Rows/Columns",
        id="rows-1e309",
    ),
    pytest.param(
        lambda: edited("CT_small.dcm", ("Rows", "US", b"\x80\x00\x80\x00")),
        GeometryError,
        r"x\.dcm: missing or invalid Rows/Columns",
        id="rows-two-values",
    ),
    pytest.param(
        lambda: edited("CT_small.dcm", ("Rows", "DS", b"127.5 ")),
        GeometryError,
        "'127.5' is not a whole number",
        id="rows-fraction-was-truncated",
    ),
    pytest.param(
        lambda: edited("CT_small.dcm", ("RescaleSlope", "DS", b"abc ")),
        UnreadableScanError,
        r"x\.dcm: RescaleSlope cannot be read",
        id="slope-text",
    ),
    pytest.param(
        lambda: edited("CT_small.dcm", ("RescaleSlope", "DS", b"NaN ")),
        UnreadableScanError,
        "nan is not a finite number",
        id="slope-nan-was-loaded",
    ),
    pytest.param(
        lambda: edited("CT_small.dcm", ("RescaleIntercept", "DS", b"inf ")),
        UnreadableScanError,
        "inf is not a finite number",
        id="intercept-inf-was-loaded",
    ),
    pytest.param(
        lambda: edited("CT_small.dcm", ("RescaleSlope", "DS", b"1\\2 ")),
        UnreadableScanError,
        "RescaleSlope cannot be read",
        id="slope-two-values",
    ),
    pytest.param(
        lambda: edited("CT_small.dcm", ("NumberOfFrames", "IS", b"ab")),
        UnreadableScanError,
        "NumberOfFrames cannot be read",
        id="frames-text",
    ),
    pytest.param(
        lambda: edited("CT_small.dcm", ("SamplesPerPixel", "US", b"\x01\x00\x01\x00")),
        UnreadableScanError,
        r"x\.dcm: SamplesPerPixel cannot be read",
        id="samples-two-values",
    ),
    pytest.param(
        lambda: edited("MR_small_padded.dcm", ("PixelPaddingValue", "LO", b"abc ")),
        UnreadableScanError,
        r"x\.dcm: PixelPaddingValue cannot be read",
        id="padding-text",
    ),
    pytest.param(
        lambda: edited("CT_small.dcm", ("ImagePositionPatient", "FD", b"-1e-300")),
        GeometryError,
        "ImagePositionPatient cannot be read",
        id="position-fd-odd-length",
    ),
    pytest.param(
        lambda: edited("CT_small.dcm", ("ImageOrientationPatient", "DS", b"0\\0\\0\\0\\0\\0 ")),
        GeometryError,
        r"x\.dcm: ImageOrientationPatient has parallel cosines",
        id="orientation-zero-named-no-file",
    ),
    pytest.param(
        lambda: edited("CT_small.dcm", ("SOPInstanceUID", "UH", b"1.2.3.4 ")),
        UnreadableScanError,
        r"x\.dcm: SOPInstanceUID cannot be read",
        id="uid-unknown-vr",
    ),
    pytest.param(
        lambda: edited("CT_small.dcm", ("SeriesInstanceUID", "UL", b"1.2")),
        UnreadableScanError,
        r"x\.dcm: SeriesInstanceUID cannot be read",
        id="series-uid-as-ul",
    ),
    pytest.param(
        lambda: edited("CT_small.dcm", ("StudyInstanceUID", "SQ", b"\xfe\xff\x00\xe0\x10\x00")),
        UnreadableScanError,
        r"x\.dcm: StudyInstanceUID cannot be read",
        id="uid-as-broken-sequence",
    ),
    pytest.param(
        file_meta_declaring_gigabytes, UnreadableScanError, "x.dcm", id="meta-length-3.75-gib"
    ),
    pytest.param(
        lambda: rle_second_segment_moved(-2),
        UnreadableScanError,
        r"x\.dcm: pixel data cannot be decoded",
        id="rle-panic",
    ),
    pytest.param(
        lambda: edited_frame("PlanePositionSequence", "ImagePositionPatient", "FD", b"\x00" * 7),
        GeometryError,
        r"x\.dcm frame 3: ImagePositionPatient cannot be read",
        id="frame-position-fd-odd",
    ),
    pytest.param(
        lambda: edited_frame("PixelValueTransformationSequence", "RescaleSlope", "DS", b"abc "),
        UnreadableScanError,
        r"x\.dcm frame 3: RescaleSlope cannot be read",
        id="frame-slope-text",
    ),
    pytest.param(
        lambda: edited("enhanced", ("PerFrameFunctionalGroupsSequence", "UL", b"\x01\x00\x00\x00")),
        UnreadableScanError,
        r"x\.dcm: functional groups cannot be read",
        id="groups-not-a-sequence",
    ),
]


@pytest.mark.parametrize(("make", "error", "message"), FOUND_DICOM)
def test_found_dicom_cases_are_named_errors(
    tmp_path: Path, make: Callable[[], bytes], error: type[MedsegError], message: str
) -> None:
    (tmp_path / "x.dcm").write_bytes(make())
    result = check_outcome(lambda: load_series(tmp_path, ingest=LIMITS), str(tmp_path))
    assert isinstance(result, error), result
    assert re.search(message, str(result)), str(result)


def test_found_series_number_of_two_values_still_loads(tmp_path: Path) -> None:
    """SeriesNumber is only listed in the inventory: an unreadable one is left out there."""
    (tmp_path / "x.dcm").write_bytes(
        edited("CT_small.dcm", ("SeriesNumber", "US", b"\x01\x00\x02\x00"))
    )
    assert load_series(tmp_path).geometry.shape == (1, 128, 128)


def nifti_edited(**fields: tuple[int, str, tuple[Any, ...]]) -> bytes:
    """The NIfTI seed with header fields overwritten: name -> (offset, struct format, values)."""
    raw = bytearray(nifti_seed())
    for offset, fmt, values in fields.values():
        struct.pack_into("<" + fmt, raw, offset, *values)
    return bytes(raw)


FOUND_NIFTI = [
    pytest.param(
        {"quatern": (256, "3f", (1.0, 1.0, 1.0))},
        GeometryError,
        "qform/sform cannot be read",
        id="quaternion-norm-above-1",
    ),
    pytest.param(
        {"vox_offset": (108, "f", (float("inf"),))},
        UnreadableScanError,
        "not a readable NIfTI file",
        id="vox-offset-inf",
    ),
    pytest.param(
        {"datatype": (70, "h", (511,))},
        UnreadableScanError,
        "data code 511 not recognized",
        id="unknown-datatype",
    ),
    pytest.param(
        {"srow": (280, "12f", (-1, -1, -1, 0, 0, 1, 0, 0, 0, 0, 2, 0))},
        GeometryError,
        "direction must be orthonormal",
        id="sheared-sform-named-no-file",
    ),
]


@pytest.mark.parametrize(("fields", "error", "message"), FOUND_NIFTI)
def test_found_nifti_cases_are_named_errors(
    tmp_path: Path,
    fields: dict[str, tuple[int, str, tuple[Any, ...]]],
    error: type[MedsegError],
    message: str,
) -> None:
    path = tmp_path / "x.nii"
    path.write_bytes(nifti_edited(**fields))
    result = check_outcome(lambda: nifti.load(path, ingest=LIMITS), str(path))
    assert isinstance(result, error), result
    assert message in str(result)


def _meta_declaring_gigabytes(data: bytes) -> bytes:
    out = bytearray(data)
    at = out.index(b"\x02\x00\x01\x00OB\x00\x00")
    struct.pack_into("<I", out, at + 8, 0xF0000000)
    return bytes(out)


@pytest.mark.parametrize(
    ("which", "make", "message"),
    [
        pytest.param(
            "rtstruct",
            lambda: edited("rtstruct", ("StudyInstanceUID", "UL", b"1.2")),
            "StudyInstanceUID cannot be read",
            id="rtstruct-uid-as-ul",
        ),
        pytest.param(
            "rtstruct",
            lambda: _meta_declaring_gigabytes(rt_seeds()[1]),
            "not an RT Structure Set",
            id="rtstruct-meta-3.75-gib",
        ),
        pytest.param(
            "seg",
            lambda: _meta_declaring_gigabytes(rt_seeds()[2]),
            "cannot be read as a DICOM SEG",
            id="seg-meta-3.75-gib",
        ),
        pytest.param(
            "seg",
            lambda: rt_seeds()[2][:676],
            "cannot be read as a DICOM SEG",
            id="seg-cut-inside-a-tag",
        ),
    ],
)
def test_found_rtstruct_and_seg_cases_are_named_errors(
    tmp_path: Path, which: str, make: Callable[[], bytes], message: str
) -> None:
    reference = rt_seeds()[0]
    path = tmp_path / "x.dcm"
    path.write_bytes(make())
    read = rtstruct.read if which == "rtstruct" else seg.read_seg
    result = check_outcome(lambda: read(path, reference), str(path))
    assert isinstance(result, UnreadableScanError), result
    assert message in str(result)


def test_found_nan_contour_is_skipped_with_a_warning(tmp_path: Path) -> None:
    reference, rs, _ = rt_seeds()
    ds = pydicom.dcmread(io.BytesIO(rs))
    contour = ds.ROIContourSequence[0].ContourSequence[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom: "Invalid value for VR DS: 'NaN'"
        contour.ContourData = ["NaN", *contour.ContourData[1:]]
    path = tmp_path / "x.dcm"
    path.write_bytes(_dcm_bytes(ds))
    with pytest.warns(
        UserWarning, match="ROI 'GTV': skipping a contour with non-finite ContourData"
    ):
        masks = rtstruct.read(path, reference)
    assert masks["GTV"].array.sum() == 6 * 7  # the other slice's contour


def test_found_seg_frame_position_of_six_values_is_named(tmp_path: Path) -> None:
    """geometry.world_to_index raised a GeometryError naming no file for it."""
    reference, _, sg = rt_seeds()
    ds = pydicom.dcmread(io.BytesIO(sg))
    position = ds.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0]
    position.ImagePositionPatient = [*position.ImagePositionPatient, 0, 0, 0]
    path = tmp_path / "x.dcm"
    path.write_bytes(_dcm_bytes(ds))
    result = check_outcome(lambda: seg.read_seg(path, reference), str(path))
    assert isinstance(result, GeometryError), result
    assert "frame 1 ImagePositionPatient must be 3 finite values" in str(result)
