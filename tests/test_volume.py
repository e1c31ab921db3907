"""Volume: validation, immutability."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.errors import GeometryError, InputError
from medseg.geometry import Geometry
from medseg.volume import Volume, VolumeKind


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
