"""Hypothesis strategies for geometry property tests."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from medseg.geometry import AXIAL_DIRECTION, Geometry

spacings = st.floats(min_value=0.1, max_value=10.0, allow_nan=False)
coordinates = st.floats(min_value=-1000.0, max_value=1000.0, allow_nan=False)
sizes = st.integers(min_value=1, max_value=600)


@st.composite
def rotations(draw: st.DrawFn) -> np.ndarray:
    """A random proper rotation (3x3), from three Euler angles in degrees."""
    angles = draw(st.tuples(*[st.floats(-180.0, 180.0, allow_nan=False)] * 3))
    return Rotation.from_euler("xyz", angles, degrees=True).as_matrix()


@st.composite
def directions(draw: st.DrawFn) -> tuple[float, ...]:
    """Axial, oblique, or flipped directions (det +1 or -1), row-major 3x3."""
    axial = np.asarray(AXIAL_DIRECTION).reshape(3, 3)
    rotation = draw(rotations())
    flips = np.diag(draw(st.tuples(*[st.sampled_from([-1.0, 1.0])] * 3)))
    return tuple((rotation @ axial @ flips).ravel())


@st.composite
def geometries(draw: st.DrawFn) -> Geometry:
    """Any valid Geometry: anisotropic spacing, any origin, any orthonormal direction."""
    return Geometry(
        shape=draw(st.tuples(sizes, sizes, sizes)),
        spacing_mm=draw(st.tuples(spacings, spacings, spacings)),
        origin_mm=draw(st.tuples(coordinates, coordinates, coordinates)),
        direction=draw(directions()),
    )


@st.composite
def indices(draw: st.DrawFn, geometry: Geometry) -> np.ndarray:
    """Fractional array-order indices inside (and slightly outside) the grid."""
    return np.array(
        [draw(st.floats(-1.0, float(n), allow_nan=False)) for n in geometry.shape], dtype=float
    )


uids = st.from_regex(r"1\.2\.(?:[1-9][0-9]{0,8}\.){2,6}[1-9][0-9]{0,8}", fullmatch=True)
