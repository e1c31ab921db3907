"""Tests of medseg.report: the QA page, its PNGs, their aspect ratio and orientation."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medseg import geometry as geo
from medseg import phantom
from medseg.errors import GeometryError
from medseg.geometry import Geometry
from medseg.report import write_report
from medseg.volume import SourceInfo, Volume, VolumeKind


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        image.verify()  # raises on a truncated or corrupt file
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_phantom_report_has_pages_pngs_and_physical_aspect(tmp_path: Path) -> None:
    case = phantom.make_case(3, n_tumours=2)
    # a "reference" that misses the smaller tumour, so the metrics table has something to say
    reference_array = np.array(case.labels.array)
    small = min(case.tumours, key=lambda t: t.voxel_count)
    centre = np.round(geo.world_to_index(case.labels.geometry, small.centre_mm)).astype(int)
    reference_array[tuple(slice(c - 8, c + 9) for c in centre)] = 0
    reference = case.labels.with_array(reference_array)

    page = write_report(
        case.image, case.labels, {1: "tumour"}, tmp_path / "qa", reference=reference
    )

    assert page == tmp_path / "qa" / "report.html"
    text = page.read_text()
    sources = re.findall(r'<img src="([^"]+)"', text)
    assert len(sources) == 3 * len(case.tumours)  # axial, coronal, sagittal per lesion
    assert sorted(sources) == sorted(p.name for p in page.parent.glob("*.png"))
    s, r, c = case.image.geometry.spacing_mm
    n_s, n_r, n_c = case.image.geometry.shape
    expected_ratio = {  # width / height of the field of view in mm
        "axial": (n_c * c) / (n_r * r),
        "coronal": (n_c * c) / (n_s * s),
        "sagittal": (n_r * r) / (n_s * s),
    }
    for name in sources:
        width, height = _png_size(page.parent / name)
        view = name.rsplit("-", 1)[1].removesuffix(".png")
        assert width / height == pytest.approx(expected_ratio[view], abs=2 / min(width, height)), (
            name
        )
        assert max(width, height) == 512
        assert f'width="{width}" height="{height}"' in text
    assert "Agreement with the reference" in text and "Dice" in text
    assert "tumour" in text and "mL" in text
    assert not list(tmp_path.glob(".qa*"))  # no temporary folder left behind


def _red_centre_px(path: Path) -> tuple[float, float]:
    """Mean (column, row) of the prediction contour's red pixels in a PNG."""
    with Image.open(path) as image:
        rgb = np.asarray(image.convert("RGB"), dtype=int)
    red = (rgb[..., 0] > 180) & (rgb[..., 1] < 110) & (rgb[..., 2] < 110)
    assert red.any(), path
    rows, cols = np.nonzero(red)
    return float(cols.mean()), float(rows.mean())


#: Array axes (slice, row, column) as LPS unit vectors, one column per array axis.
_DIRECTIONS = {
    "standard-axial": geo.AXIAL_DIRECTION,
    # rows run posterior->anterior and columns left->right (e.g. a prone or flipped export)
    "flipped-rows-and-columns": (0.0, 0.0, -1.0, 0.0, -1.0, 0.0, 1.0, 0.0, 0.0),
    # slices run head->feet
    "slices-head-first": (0.0, 0.0, 1.0, 0.0, 1.0, 0.0, -1.0, 0.0, 0.0),
}


@pytest.mark.parametrize("direction", list(_DIRECTIONS.values()), ids=list(_DIRECTIONS))
def test_views_are_in_radiological_orientation(
    tmp_path: Path, direction: tuple[float, ...]
) -> None:
    """A lesion at the patient's left, anterior, superior lands right, top, top on screen."""
    spacing = (2.5, 1.0, 1.0)
    shape = (40, 100, 100)
    # put the grid's centre at the LPS origin whatever the direction
    g0 = Geometry(shape=shape, spacing_mm=spacing, origin_mm=(0.0, 0.0, 0.0), direction=direction)
    centre = geo.index_to_world(g0, (np.asarray(shape) - 1) / 2)
    g = Geometry(shape=shape, spacing_mm=spacing, origin_mm=tuple(-centre), direction=direction)  # type: ignore[arg-type]
    lesion_mm = np.array([25.0, -20.0, 30.0])  # left, anterior, superior of the centre
    world = geo.index_to_world(g, np.indices(shape).reshape(3, -1).T).reshape(*shape, 3)
    mask = np.linalg.norm(world - lesion_mm, axis=-1) <= 6.0
    image = Volume(
        np.where(mask, 60, 0).astype(np.int16), g, VolumeKind.IMAGE, SourceInfo(modality="CT")
    )
    labels = Volume(mask.astype(np.uint8), g, VolumeKind.LABELS)

    page = write_report(image, labels, {1: "lesion"}, tmp_path / "qa")

    half_mm = np.array([50.0, 50.0, 50.0])  # field of view: x, y +-50 mm, z +-50 mm
    expected = {  # (horizontal, vertical) position as a fraction of width / height
        "axial": ((lesion_mm[0] + half_mm[0]) / 100, (lesion_mm[1] + half_mm[1]) / 100),
        "coronal": ((lesion_mm[0] + half_mm[0]) / 100, (half_mm[2] - lesion_mm[2]) / 100),
        "sagittal": ((lesion_mm[1] + half_mm[1]) / 100, (half_mm[2] - lesion_mm[2]) / 100),
    }
    for view, (fx, fy) in expected.items():
        png = page.parent / f"label1-lesion1-{view}.png"
        width, height = _png_size(png)
        x_px, y_px = _red_centre_px(png)
        assert x_px / width == pytest.approx(fx, abs=0.03), view
        assert y_px / height == pytest.approx(fy, abs=0.03), view


def test_different_grids_are_refused(tmp_path: Path) -> None:
    case = phantom.make_case(0, n_tumours=1)
    g = case.labels.geometry
    shifted = Geometry(g.shape, g.spacing_mm, (g.origin_mm[0] + 5.0, *g.origin_mm[1:]), g.direction)
    other = Volume(case.labels.array, shifted, VolumeKind.LABELS)
    with pytest.raises(GeometryError, match="different geometry"):
        write_report(case.image, case.labels, {1: "t"}, tmp_path / "qa", reference=other)
    assert not (tmp_path / "qa").exists()


def test_report_module_does_not_import_torch() -> None:
    code = "import sys, medseg.report; print('torch' in sys.modules, 'monai' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"
