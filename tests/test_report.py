"""Tests of medseg.report: the QA page, its PNGs, their aspect ratio and orientation."""

from __future__ import annotations

import dataclasses
import html.parser
import json
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image

from medseg import geometry as geo
from medseg.errors import ConfigError, GeometryError, InputError, MissingReferenceError
from medseg.geometry import Geometry
from medseg.io import rtstruct
from medseg.io.dicom import load_series
from medseg.io.rtstruct import RoiSpec
from medseg.postprocess import volumes_report
from medseg.report import (
    REPORT_TOLERANCE_MM,
    SUMMARY_PAGE,
    CaseSummary,
    SummaryStatus,
    read_case_summary,
    write_report,
    write_summary_page,
    write_volumes_json,
)
from medseg.synthetic import phantom
from medseg.volume import SourceInfo, Volume, VolumeKind
from tests.conftest import require_tool
from tests.rt_helpers import write_reference_series


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


def test_reference_table_uses_each_structures_tolerance(tmp_path: Path) -> None:
    """The QA page's surface Dice is at the tolerance ``medseg evaluate`` would use: medseg's
    H&N table for an H&N organ, the given table, else REPORT_TOLERANCE_MM."""
    from medseg.metrics import compute_metrics
    from medseg.tolerances import HN_OAR_TOLERANCES_MM, Tolerance

    case = phantom.make_case(4, n_tumours=2)
    shifted = np.roll(np.asarray(case.labels.array), 2, axis=2)  # 2 voxels off: NSD < 1
    reference = case.labels.with_array(shifted)
    names = {1: "Brainstem"}
    page = write_report(case.image, case.labels, names, tmp_path / "a", reference=reference)
    rows = re.findall(r"<tr><td>Brainstem</td>((?:<td>[^<]*</td>)+)</tr>", page.read_text())
    cells = re.findall(r"<td>([^<]*)</td>", rows[-1])
    mm = HN_OAR_TOLERANCES_MM["Brainstem"]
    expected = compute_metrics(case.labels, reference, label=1, tolerance_mm=mm)
    assert cells[3:5] == [f"{expected.surface_dice:.3f}", f"{mm:.2f}"]
    default = compute_metrics(case.labels, reference, label=1, tolerance_mm=REPORT_TOLERANCE_MM)
    assert f"{default.surface_dice:.3f}" != cells[3]  # the tolerance changes the number
    page = write_report(
        case.image, case.labels, names, tmp_path / "b", reference=reference,
        tolerances={"Brainstem": Tolerance(5.0, "file t.yaml")},
    )  # fmt: skip
    rows = re.findall(r"<tr><td>Brainstem</td>((?:<td>[^<]*</td>)+)</tr>", page.read_text())
    cells = re.findall(r"<td>([^<]*)</td>", rows[-1])
    wide = compute_metrics(case.labels, reference, label=1, tolerance_mm=5.0)
    assert cells[3:5] == [f"{wide.surface_dice:.3f}", "5.00"]


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


def _tables_case() -> tuple[Volume, Volume]:
    """A blank image and labels with two GTV lesions, a one-voxel dot and a node."""
    array = np.zeros((8, 9, 10), dtype=np.int16)
    array[0:2, 0:2, 0:2] = 1
    array[5:8, 5:8, 5:8] = 1
    array[4, 0, 0] = 2
    array[3:5, 6:9, 0:3] = 3
    g = Geometry(shape=(8, 9, 10), spacing_mm=(2.5, 0.75, 0.5), origin_mm=(-10.0, 20.0, 30.0))
    source = SourceInfo(path=Path("case-1/ct"))
    image = Volume(np.zeros(g.shape, dtype=np.int16), g, VolumeKind.IMAGE, source)
    return image, Volume(array, g, VolumeKind.LABELS, source)


_TABLES_NAMES = {1: "GTV", 2: "dot", 3: "node", 7: "absent"}


def test_report_numbers_unchanged_and_components_found_once(tmp_path: Path) -> None:
    """The page shows the volumes report it is given (components are not labelled again),
    with the numbers the page showed when it computed them itself."""
    from medseg import postprocess

    image, labels = _tables_case()
    alone = write_report(image, labels, _TABLES_NAMES, tmp_path / "alone").read_text()
    report = postprocess.volumes_report(labels, _TABLES_NAMES)
    calls: list[int] = []
    labelling = postprocess.cc3d.connected_components

    def counting(mask: np.ndarray, **kwargs: object) -> object:
        calls.append(int(mask.sum()))
        return labelling(mask, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(postprocess.cc3d, "connected_components", counting)
        given = write_report(image, labels, _TABLES_NAMES, tmp_path / "given", volumes=report)
    assert calls == []
    assert given.read_text() == alone
    parser = _Links()
    parser.feed(alone)
    # as written before the report was typed (medseg 0.1.0 development, issue 19)
    assert [cells for _, cells in parser.rows] == [
        ["structure", "label", "volume (mL)", "lesions"],
        ["GTV", "1", "0.03", "2"],
        ["dot", "2", "0.00", "1"],
        ["node", "3", "0.02", "1"],
        ["absent", "7", "0.00", "0"],
        ["total", "", "0.05", "4"],
        ["structure", "lesion", "volume (mL)", "longest axial diameter (mm)",
         "centroid LPS (mm)", "slices"],
        ["GTV", "1", "0.03", "2.5", "-7.0, 24.5, 45.0", "5-7 (3)"],
        ["GTV", "2", "0.01", "1.6", "-9.8, 20.4, 31.2", "0-1 (2)"],
        ["dot", "1", "0.00", "0.8", "-10.0, 20.0, 40.0", "4-4 (1)"],
        ["node", "1", "0.02", "2.5", "-9.5, 25.2, 38.8", "3-4 (2)"],
    ]  # fmt: skip
    assert re.findall(r"<h3>([^<]*)</h3>", alone) == [
        "GTV (label 1), lesion 1: 0.03 mL, longest axial diameter 2.5 mm; prediction",
        "GTV (label 1), lesion 2: 0.01 mL, longest axial diameter 1.6 mm; prediction",
        "dot (label 2), lesion 1: 0.00 mL, longest axial diameter 0.8 mm; prediction",
        "node (label 3), lesion 1: 0.02 mL, longest axial diameter 2.5 mm; prediction",
    ]
    assert sorted(p.name for p in given.parent.glob("*.png")) == sorted(
        p.name for p in (tmp_path / "alone").glob("*.png")
    )


def test_volumes_report_of_other_labels_is_refused(tmp_path: Path) -> None:
    from medseg import postprocess

    image, labels = _tables_case()
    other_structures = postprocess.volumes_report(labels, {1: "GTV", 2: "dot"})
    with pytest.raises(InputError, match="structures"):
        write_report(image, labels, _TABLES_NAMES, tmp_path / "qa", volumes=other_structures)
    g = labels.geometry
    shifted = Geometry(g.shape, g.spacing_mm, (0.0, 0.0, 0.0))
    other_grid = postprocess.volumes_report(
        Volume(labels.array, shifted, VolumeKind.LABELS), _TABLES_NAMES
    )
    with pytest.raises(InputError, match="grid"):
        write_report(image, labels, _TABLES_NAMES, tmp_path / "qa", volumes=other_grid)
    assert not (tmp_path / "qa").exists()


def test_report_module_does_not_import_torch() -> None:
    code = "import sys, medseg.report; print('torch' in sys.modules, 'monai' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


# ---------------------------------------------------------------------------------------------
# contours drawn from the exported RT-STRUCT


def _sphere_case(
    tmp_path: Path, direction: tuple[float, ...], centre_mm: np.ndarray, radius_mm: float
) -> tuple[Volume, np.ndarray, np.ndarray]:
    """A DICOM CT on a 40 x 100 x 100 grid centred on the LPS origin, read back from files.

    Returns the image, the index positions' LPS coordinates (shape + (3,)) and the sphere.
    """
    spacing, shape = (2.5, 1.0, 1.0), (40, 100, 100)
    g0 = Geometry(shape=shape, spacing_mm=spacing, origin_mm=(0.0, 0.0, 0.0), direction=direction)
    centre = geo.index_to_world(g0, (np.asarray(shape) - 1) / 2)
    g = Geometry(shape=shape, spacing_mm=spacing, origin_mm=tuple(-centre), direction=direction)  # type: ignore[arg-type]
    image = write_reference_series(g, tmp_path / "ct")  # slices come back sorted feet to head
    world = geo.index_to_world(image.geometry, np.indices(shape).reshape(3, -1).T)
    world = world.reshape(*shape, 3)
    sphere = np.linalg.norm(world - centre_mm, axis=-1) <= radius_mm
    return image, world, sphere


_RT_DIRECTIONS = {
    **_DIRECTIONS,
    # rows run along x and columns along y: the in-plane axes are swapped on screen
    "rows-along-x": (0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0),
}


@pytest.mark.parametrize("direction", list(_RT_DIRECTIONS.values()), ids=list(_RT_DIRECTIONS))
def test_contours_come_from_the_rtstruct_not_the_mask(
    tmp_path: Path, direction: tuple[float, ...]
) -> None:
    """The label map given to the report is 8 mm to the patient's left of what was exported;
    the red outline must sit where the file says, in radiological orientation."""
    lesion_mm = np.array([25.0, -20.0, 30.0])
    image, world, exported = _sphere_case(tmp_path, direction, lesion_mm, 9.0)
    shift_mm = np.array([8.0, 0.0, 0.0])
    moved = np.linalg.norm(world - lesion_mm - shift_mm, axis=-1) <= 9.0
    path = rtstruct.write(
        image.with_array(exported.astype(np.uint8), VolumeKind.LABELS),
        image,
        [RoiSpec("lesion", 1, (255, 0, 0))],
        tmp_path / "rtstruct.dcm",
        model_id="unit-test-model",
    )
    labels = image.with_array(moved.astype(np.uint8), VolumeKind.LABELS)

    page = write_report(image, labels, {1: "lesion"}, tmp_path / "qa", rtstruct_path=path)

    half = 50.0
    expected = {  # (horizontal, vertical) fraction of width / height: the file's sphere
        "axial": ((lesion_mm[0] + half) / 100, (lesion_mm[1] + half) / 100),
        "coronal": ((lesion_mm[0] + half) / 100, (half - lesion_mm[2]) / 100),
        "sagittal": ((lesion_mm[1] + half) / 100, (half - lesion_mm[2]) / 100),
    }
    for view, (fx, fy) in expected.items():
        png = page.parent / f"label1-lesion1-{view}.png"
        width, height = _png_size(png)
        x_px, y_px = _red_centre_px(png)
        assert x_px / width == pytest.approx(fx, abs=0.03), view  # 8 mm would be 0.08
        assert y_px / height == pytest.approx(fy, abs=0.03), view
    text = page.read_text()
    assert "unit-test-model" in text  # the model, from the RT-STRUCT's ROIGenerationDescription
    assert "Series description: withheld" in text  # identifying, unless asked (below)
    assert "Series description: medseg" not in text
    shown = write_report(
        image,
        labels,
        {1: "lesion"},
        tmp_path / "qa-identified",
        rtstruct_path=path,
        show_identifiers=True,
    )
    assert "Series description: medseg" in shown.read_text()  # write_series' default
    assert "from the exported RT-STRUCT rtstruct.dcm" in text
    assert 'class="warning"' not in text


def test_missing_roi_is_flagged_and_another_series_refused(tmp_path: Path) -> None:
    image, _, sphere = _sphere_case(tmp_path, geo.AXIAL_DIRECTION, np.zeros(3), 10.0)
    array = sphere.astype(np.uint8)
    array[0, 0, :3] = 2  # a node the RT-STRUCT lacks
    labels = image.with_array(array, VolumeKind.LABELS)
    path = rtstruct.write(labels, image, [RoiSpec("GTV", 1)], tmp_path / "rs.dcm")

    page = write_report(
        image, labels, {1: "GTV", 2: "node", 3: "metastasis"}, tmp_path / "qa",
        rtstruct_path=path, model_id="model <b>7</b>",
    )  # fmt: skip

    text = page.read_text()
    assert '<p class="warning">Not in the RT-STRUCT: node.</p>' in text
    # a structure the model did not find is left out of the RT-STRUCT (readable by all)
    assert '<p class="warning">Not found in this scan: metastasis.</p>' in text
    assert "model &lt;b&gt;7&lt;/b&gt;" in text  # escaped, and the argument wins
    voxel_ml = geo.voxel_volume_ml(image.geometry)
    # the volume table's RT-STRUCT column: the file reproduces the mask exactly (voxel-edge
    # contours; shown against plastimatch in tests/io/test_rtstruct.py)
    volume = f"{sphere.sum() * voxel_ml:.2f}"
    assert f"<td>GTV</td><td>1</td><td>{volume}</td><td>1</td><td>{volume}</td>" in text
    node = f"{3 * voxel_ml:.2f}"
    assert f"<td>node</td><td>2</td><td>{node}</td><td>1</td><td>missing</td>" in text
    assert "<td>metastasis</td><td>3</td><td>0.00</td><td>0</td><td>missing</td>" in text

    other_series = Volume(
        image.array,
        image.geometry,
        VolumeKind.IMAGE,
        dataclasses.replace(image.source, series_instance_uid="1.2.826.0.1.99"),
    )
    with pytest.raises(MissingReferenceError, match="1.2.826.0.1.99"):
        write_report(
            other_series, other_series.with_array(labels.array, VolumeKind.LABELS), {1: "GTV"},
            tmp_path / "qa2", rtstruct_path=path,
        )  # fmt: skip
    assert not (tmp_path / "qa2").exists()


# ---------------------------------------------------------------------------------------------
# batch summary page


class _Links(html.parser.HTMLParser):
    """Rows (class, cells as text) and hrefs of a summary page."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[str | None, list[str]]] = []
        self.hrefs: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "tr":
            self.rows.append((dict(attrs).get("class"), []))
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "a":
            self.hrefs.append(dict(attrs)["href"] or "")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1][1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def test_summary_page_links_reports_and_lists_volumes(tmp_path: Path) -> None:
    out_root = tmp_path / "batch out"
    (out_root / "case 1" / "report").mkdir(parents=True)
    (out_root / "case 1" / "report" / "report.html").write_text("<html></html>")
    array = np.zeros((4, 5, 6), dtype=np.uint8)
    array[1:3, 1:3, 1:3] = 1
    array[0, 0, 0] = 2
    labels = Volume(array, Geometry((4, 5, 6), (2.0, 1.0, 1.0), (0.0, 0.0, 0.0)), VolumeKind.LABELS)
    case2 = out_root / "case2"
    write_volumes_json(volumes_report(labels, {1: "GTV", 2: "node"}), case2 / "volumes.json")
    (case2 / "report").mkdir()
    (case2 / "report" / "report.html").write_text("<html></html>")
    cases = [
        CaseSummary(
            "case 1",
            SummaryStatus.DONE,
            out_root / "case 1" / "report" / "report.html",
            {"GTV": 1.5},
        ),
        read_case_summary(case2),
        CaseSummary("bad<case>", "failed", None, {}, "UnreadableScanError: <no slices>"),
        CaseSummary("gone", SummaryStatus.DONE, out_root / "gone" / "report.html", {"GTV": 2.0}),
    ]

    page = write_summary_page(out_root, cases)

    assert page == out_root / SUMMARY_PAGE
    parser = _Links()
    parser.feed(page.read_text())
    header, *rows = parser.rows
    assert header[1] == ["case", "status", "GTV (mL)", "node (mL)", "report", "message"]
    assert [cells[0] for _, cells in rows] == ["case 1", "case2", "bad<case>", "gone"]
    assert rows[1][1][2:4] == [f"{8 * 2.0 / 1000:.2f}", f"{2.0 / 1000:.2f}"]  # from volumes.json
    assert rows[0][1][3] == ""  # case 1 has no node
    assert rows[2][0] == "failed" and rows[2][1][5] == "UnreadableScanError: <no slices>"
    assert rows[3][1][4] == "missing"  # a report that does not exist is not linked
    assert len(parser.hrefs) == 2
    for href in parser.hrefs:  # relative links that resolve to the reports
        assert not href.startswith("/")
        assert (page.parent / unquote(href)).is_file()
    assert "<case>" not in page.read_text()  # escaped
    assert "4 cases: 3 done, 1 failed." in page.read_text()


def test_summary_page_shows_each_status_word_counts_them_and_highlights_the_unfinished(
    tmp_path: Path,
) -> None:
    statuses = ["done", "skipped", "failed", "interrupted", "done"]
    page = write_summary_page(
        tmp_path, [CaseSummary(f"case-{i}", status) for i, status in enumerate(statuses)]
    )
    parser = _Links()
    parser.feed(page.read_text())
    _, *rows = parser.rows
    assert [cells[1] for _, cells in rows] == statuses  # the words summary.csv has
    assert [row_class for row_class, _ in rows] == [None, None, "failed", "interrupted", None]
    text = page.read_text()
    assert "5 cases: 2 done, 1 skipped, 1 failed, 1 interrupted." in text
    assert "tr.failed td" in text and "tr.interrupted td" in text  # both are highlighted
    assert CaseSummary("x", "skipped").status is SummaryStatus.SKIPPED


def test_summary_page_refuses_a_status_that_is_not_one_of_the_words() -> None:
    with pytest.raises(ConfigError) as caught:
        CaseSummary("case-1", "ok")  # type: ignore[arg-type]
    message = str(caught.value)
    assert message == (
        "CaseSummary.status of 'case-1' must be one of done, skipped, failed, interrupted, got 'ok'"
    )


def test_read_case_summary_refuses_a_folder_without_volumes(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="volumes.json"):
        read_case_summary(tmp_path)


# ---------------------------------------------------------------------------------------------
# the pages in a real browser (headless Chromium)

#: Injected first into a copy of a page: records errors (script and failed resources) and
#: console.error calls, and after "load" writes every <img>'s decoded size into the DOM.
_PROBE = """<script>
window.__probe = {errors: []};
window.addEventListener("error", function (e) {
  var t = e.target;
  window.__probe.errors.push(t && t.tagName ? "failed to load " + t.tagName + " " + (t.src || t.href)
                                           : "script error " + e.message);
}, true);
var consoleError = console.error;
console.error = function () { window.__probe.errors.push("console.error " + [].join.call(arguments, " "));
                              consoleError.apply(console, arguments); };
window.addEventListener("load", function () {
  var images = [].map.call(document.images, function (i) {
    return {src: i.getAttribute("src"), complete: i.complete, width: i.naturalWidth,
            height: i.naturalHeight};
  });
  var out = document.createElement("pre");
  out.id = "medseg-probe";
  out.textContent = JSON.stringify({images: images, errors: window.__probe.errors});
  document.body.appendChild(out);
});
</script>"""


def _chromium(exe: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
         f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def _probe(exe: str, profile: Path, page: Path) -> dict[str, list]:  # type: ignore[type-arg]
    probe_page = page.with_name("_probe_" + page.name)
    probe_page.write_text(page.read_text().replace("<head>", "<head>" + _PROBE, 1))
    result = _chromium(
        exe, profile, "--virtual-time-budget=5000", "--dump-dom", probe_page.as_uri()
    )
    probe_page.unlink()
    found = re.search(r'<pre id="medseg-probe">(.*?)</pre>', result.stdout, re.DOTALL)
    assert found, f"no probe output from chromium:\n{result.stderr[-2000:]}"
    return json.loads(
        found.group(1).replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    )  # type: ignore[no-any-return]


def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    exe = require_tool("chromium")
    case = phantom.make_case(5, n_tumours=2)
    paths = phantom.write_case(case, tmp_path / "case", patient_id="PHANTOM-BROWSER")
    image = load_series(paths.ct_dir)
    labels = image.with_array(np.asarray(case.labels.array), VolumeKind.LABELS)
    rs = rtstruct.write(labels, image, [RoiSpec("tumour", 1)], tmp_path / "rtstruct.dcm")
    page = write_report(image, labels, {1: "tumour"}, tmp_path / "out" / "report", rtstruct_path=rs)
    summary = write_summary_page(
        tmp_path / "out", [CaseSummary("case", SummaryStatus.DONE, page, {"tumour": 1.0})]
    )
    profile = tmp_path / "chromium-profile"

    # 1. rendered to a PNG, with the browser's console log on stderr: no console message
    shot = tmp_path / "page.png"
    result = _chromium(
        exe, profile, "--enable-logging=stderr", "--v=0", "--window-size=1400,2400",
        f"--screenshot={shot}", page.as_uri(),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert [line for line in result.stderr.splitlines() if ":CONSOLE" in line] == []
    with Image.open(shot) as rendered:
        assert rendered.size == (1400, 2400)
        pixels = np.asarray(rendered.convert("L"), dtype=float)
    assert pixels.std() > 10  # not a blank page: text, tables and CT images

    # 2. every image decoded with its file's size, no errors; and the summary page likewise
    found = _probe(exe, profile, page)
    pngs = sorted(p.name for p in page.parent.glob("*.png"))
    assert len(pngs) == 3 * len(case.tumours)
    assert sorted(i["src"] for i in found["images"]) == pngs
    for image_info in found["images"]:
        assert image_info["complete"]
        assert (image_info["width"], image_info["height"]) == _png_size(
            page.parent / image_info["src"]
        )
    assert found["errors"] == []
    assert _probe(exe, profile, summary)["errors"] == []

    # 3. the check fails when it should: a missing PNG is caught
    (page.parent / pngs[0]).unlink()
    broken = _probe(exe, profile, page)
    assert any(pngs[0] in error for error in broken["errors"])
    assert [i["width"] for i in broken["images"] if i["src"] == pngs[0]] == [0]
