"""Volume: validation, immutability."""

from __future__ import annotations

import dataclasses

import numpy as np
import pydicom
import pytest

from medseg.errors import GeometryError, InputError
from medseg.geometry import Geometry
from medseg.volume import MAX_REPR_CHARACTERS, SourceInfo, Volume, VolumeKind


def _geometry() -> Geometry:
    return Geometry((2, 3, 4), (2.0, 1.0, 1.0), (0.0, 0.0, 0.0))


def test_array_is_read_only() -> None:
    v = Volume(np.zeros((2, 3, 4), np.int16), _geometry())
    with pytest.raises(ValueError, match="read-only"):
        v.array[0, 0, 0] = 1


def test_shape_mismatch_is_refused() -> None:
    with pytest.raises(GeometryError, match=r"does not match geometry shape \(2, 3, 4\)"):
        Volume(np.zeros((2, 4, 3)), _geometry())


def test_two_d_array_is_refused() -> None:
    with pytest.raises(InputError, match="needs a 3D array"):
        Volume(np.zeros((3, 4)), _geometry())


def test_float_labels_are_refused() -> None:
    with pytest.raises(InputError, match="integer array"):
        Volume(np.zeros((2, 3, 4), np.float32), _geometry(), VolumeKind.LABELS)


def test_probabilities_have_a_class_axis() -> None:
    v = Volume(np.zeros((3, 2, 3, 4), np.float32), _geometry(), VolumeKind.PROBABILITIES)
    assert v.array.shape[0] == 3


def test_with_array_keeps_grid_and_source() -> None:
    v = Volume(np.zeros((2, 3, 4), np.int16), _geometry())
    labels = v.with_array(np.ones((2, 3, 4), np.uint8), VolumeKind.LABELS)
    assert labels.geometry == v.geometry and labels.source == v.source
    assert labels.kind is VolumeKind.LABELS
    assert labels.voxel_volume_ml == pytest.approx(0.002)


def _series_uid() -> str:
    return "1.2.840.113619.2.55.3.604688119.969.1268071029.320.3521"


def test_repr_is_one_short_line_even_for_a_huge_volume() -> None:
    """The repr names kind, shape, spacing, dtype and the series, never the voxels."""
    geometry = Geometry((2000, 1024, 1024), (3.0, 0.9765625, 0.9765625), (0.0, 0.0, 0.0))
    array = np.broadcast_to(np.uint8(1), geometry.shape)  # 2 GB of voxels, no memory
    v = Volume(array, geometry, VolumeKind.LABELS, SourceInfo(series_instance_uid=_series_uid()))
    text = repr(v)
    assert text == (
        "Volume(kind=labels, shape=(2000, 1024, 1024), spacing=(3.0, 0.977, 0.977), "
        "dtype=uint8, series=1.2.840…3521)"
    )
    assert "\n" not in text and len(text) <= MAX_REPR_CHARACTERS


def test_repr_of_probabilities_shows_the_class_axis_and_no_series() -> None:
    v = Volume(np.zeros((3, 2, 3, 4), np.float32), _geometry(), VolumeKind.PROBABILITIES)
    assert repr(v) == (
        "Volume(kind=probabilities, shape=(3, 2, 3, 4), spacing=(2.0, 1.0, 1.0), "
        "dtype=float32, series=None)"
    )


def test_repr_holds_no_patient_attributes_or_slice_uids() -> None:
    """A header with PatientName etc. and thousands of SOP UIDs stay out of both reprs."""
    header = pydicom.Dataset()
    header.PatientName = "DOE^JANE"
    header.PatientID = "PID-0042"
    header.PatientBirthDate = "19700101"
    sop_uids = tuple(f"1.2.3.4.{k}" for k in range(5000))
    source = SourceInfo(
        path=None,
        series_instance_uid=_series_uid(),
        sop_instance_uids=sop_uids,
        modality="CT",
        dicom_header=header,
    )
    geometry = Geometry((5000, 2, 2), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    v = Volume(np.zeros(geometry.shape, np.int16), geometry, VolumeKind.IMAGE, source)
    for text in (repr(v), repr(source), str(v), str(source)):
        assert "DOE" not in text and "PID-0042" not in text and "19700101" not in text
        assert sop_uids[1234] not in text
        assert "\n" not in text and len(text) <= MAX_REPR_CHARACTERS
    assert "slices=5000" in repr(source) and "modality=CT" in repr(source)


def test_equality_is_identity_and_volumes_hash() -> None:
    """``==`` never compares voxels (numpy's elementwise answer has no truth value)."""
    v = Volume(np.arange(24, dtype=np.int16).reshape(2, 3, 4), _geometry())
    same_content = Volume(v.array.copy(), v.geometry, v.kind, v.source)
    alias = v
    assert (v == alias) is True and (v != alias) is False  # plain bools, never arrays
    assert (v == same_content) is False and (v != same_content) is True
    assert v != dataclasses.replace(v)
    assert len({v, v, same_content}) == 2
    assert {v: "a"}[v] == "a" and same_content not in {v: "a"}
    # content comparison is explicit
    assert np.array_equal(v.array, same_content.array) and v.geometry == same_content.geometry
