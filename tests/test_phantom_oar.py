"""medseg.synthetic.phantom_oar: CT-like images painted on the real head-and-neck organ grids.

Real data: DeepMind's oncologist contours of 21 organs (``hn-oar-labels``), which carry the CT
grid but no image. The expensive full-grid phantom is made once per module (its volumes are
read-only, so sharing it cannot leak state between tests).
"""

from __future__ import annotations

import functools
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from medseg import geometry as geo
from medseg.errors import ConfigError, GeometryError, InputError
from medseg.synthetic.phantom import ct_from_label_maps
from medseg.synthetic.phantom_oar import (
    AIR_HU,
    HU_BY_ORGAN,
    LabelMapPhantom,
    load_label_maps,
    organ_hu,
    organ_key,
)
from medseg.volume import Volume, VolumeKind
from tests.conftest import REPO_ROOT, require_data

#: The smallest grid of the set (145 x 512 x 512), all 21 organs present.
SCAN = "hn-oar-labels/oncologist/TCGA-CV-5978/segmentations"
#: The noise of the HU tests; its in-plane correlation (0.7 voxel Gaussian) pools about
#: 4 * pi * 0.7**2 voxels into one independent sample.
NOISE_HU = 15.0
_CORRELATED_VOXELS = 4 * math.pi * 0.7**2


@functools.lru_cache(maxsize=1)
def _maps() -> dict[str, Volume]:
    return load_label_maps(require_data(SCAN))


@functools.lru_cache(maxsize=2)
def _phantom(blur_mm: float) -> LabelMapPhantom:
    return ct_from_label_maps(_maps(), seed=3, noise_std_hu=NOISE_HU, blur_mm=blur_mm)


def _cropped_maps(stop_slices: int = 12) -> dict[str, Volume]:
    """The organs in a slab of slices through the eyes and ears (fast to paint)."""
    maps = _maps()
    lens = np.flatnonzero(np.asarray(maps["Lens-Lt"].array).any(axis=(1, 2)))
    start = (max(0, int(lens[0]) - stop_slices), 100, 150)
    stop = (int(lens[-1]) + stop_slices, 300, 370)
    window = tuple(slice(a, b) for a, b in zip(start, stop, strict=True))
    grid = geo.crop_geometry(maps["Lens-Lt"].geometry, start, stop)
    return {
        name: Volume(np.asarray(v.array)[window], grid, VolumeKind.LABELS)
        for name, v in maps.items()
    }


def _noise_tolerance_hu(n_voxels: int) -> float:
    """Five standard errors of a mean of correlated noise, plus int16 rounding."""
    return 5 * NOISE_HU * math.sqrt(max(1.0, _CORRELATED_VOXELS) / n_voxels) + 0.5


def test_output_grid_is_exactly_the_label_grid() -> None:
    phantom = _phantom(1.0)
    grid = _maps()["Brain"].geometry
    for volume in (phantom.image, phantom.labels, phantom.body):
        assert volume.geometry == grid  # the same shape, spacing, origin and direction
    assert phantom.image.kind is VolumeKind.IMAGE and phantom.image.array.dtype == np.int16
    assert phantom.labels.kind is VolumeKind.LABELS and phantom.labels.array.dtype == np.uint8


def test_without_blur_every_organ_has_its_hu_on_average() -> None:
    phantom = _phantom(0.0)
    image, labels = np.asarray(phantom.image.array), np.asarray(phantom.labels.array)
    assert len(phantom.label_names) == 21
    for value, name in phantom.label_names.items():
        voxels = image[labels == value]
        assert voxels.size > 0, name
        expected = HU_BY_ORGAN[organ_key(name)]
        assert abs(voxels.mean() - expected) < _noise_tolerance_hu(voxels.size), name


def test_with_blur_organ_interiors_keep_their_hu() -> None:
    """Partial volume mixes values only near edges: 3 blur widths inside, the organ's HU."""
    phantom = _phantom(1.0)
    image, labels = np.asarray(phantom.image.array), np.asarray(phantom.labels.array)
    spacing = phantom.labels.geometry.spacing_mm
    checked = []
    for value, name in phantom.label_names.items():
        organ = labels == value
        box = ndimage.find_objects(organ.astype(np.uint8))[0]
        depth = ndimage.distance_transform_edt(np.pad(organ[box], 1), sampling=spacing)
        interior = image[box][depth[1:-1, 1:-1, 1:-1] >= 3.0]
        if interior.size >= 50:
            expected = HU_BY_ORGAN[organ_key(name)]
            tolerance = 3.0 + _noise_tolerance_hu(interior.size)
            assert abs(interior.mean() - expected) < tolerance, name
            checked.append(name)
    assert {"Brain", "Lung-Lt", "Mandible", "Parotid-Rt", "Orbit-Lt"} <= set(checked)


def test_class_ids_follow_class_names_and_smaller_organs_win_overlaps() -> None:
    maps = _cropped_maps()
    names = [*sorted(maps, reverse=True), "Esophagus"]  # a class absent from the scan
    phantom = ct_from_label_maps(maps, seed=0, class_names=names, hu={"esophagus": 40.0})
    labels = np.asarray(phantom.labels.array)
    assert phantom.label_names == {i + 1: name for i, name in enumerate(names)}
    assert not np.any(labels == len(names))  # the absent class has no voxels
    coverage = sum(np.asarray(v.array, dtype=np.int32) for v in maps.values())
    for value, name in phantom.label_names.items():
        if name not in maps:
            continue
        mask = np.asarray(maps[name].array) > 0
        assert np.all(mask[labels == value]), name  # never outside its own map
        assert np.all(labels[mask & (coverage == 1)] == value), name  # alone: always its own
    # the lens lies inside the globe (orbit) and keeps every voxel
    lens = np.asarray(maps["Lens-Lt"].array) > 0
    assert lens.any() and np.all(labels[lens] == names.index("Lens-Lt") + 1)


def test_same_seed_same_image_other_seed_other_noise() -> None:
    maps = _cropped_maps()
    a = ct_from_label_maps(maps, seed=7, hu_jitter_hu=10.0)
    b = ct_from_label_maps(maps, seed=7, hu_jitter_hu=10.0)
    c = ct_from_label_maps(maps, seed=8, hu_jitter_hu=10.0)
    assert np.array_equal(a.image.array, b.image.array)
    assert not np.array_equal(a.image.array, c.image.array)
    assert np.array_equal(a.labels.array, c.labels.array)
    assert np.array_equal(a.body.array, c.body.array)


def test_body_contains_every_organ_is_one_piece_and_air_is_outside() -> None:
    phantom = _phantom(1.0)
    body = np.asarray(phantom.body.array) > 0
    assert np.all(body[np.asarray(phantom.labels.array) > 0])
    _, n_pieces = ndimage.label(body)
    assert n_pieces == 1
    # the first 40 rows (40 mm) of every slice are far outside the body: air and noise only
    assert not body[:, :40].any()
    air = np.asarray(phantom.image.array)[:, :40].astype(float)
    assert abs(air.mean() - AIR_HU) < 2.0
    assert 0.8 * NOISE_HU < air.std() < 1.2 * NOISE_HU
    # soft tissue and fat in the body away from organs: between fat and muscle
    image = np.asarray(phantom.image.array)
    between = body & (np.asarray(phantom.labels.array) == 0)
    assert -100.0 < float(np.median(image[between])) < 60.0


def test_organ_names_and_hu_lookup() -> None:
    assert organ_key("Optic-Nerve-Lt") == "optic-nerve"
    assert organ_key("Lung_R") == "lung"
    assert organ_key("Spinal Cord") == "spinal-cord"
    assert organ_hu("Parotid-Rt") == HU_BY_ORGAN["parotid"]
    assert organ_hu("Parotid-Rt", {"parotid": -10.0}) == -10.0
    assert organ_hu("Parotid-Rt", {"parotid": -10.0, "Parotid-Rt": 7.0}) == 7.0
    with pytest.raises(InputError, match="Thyroid"):
        organ_hu("Thyroid")


def _two_maps() -> dict[str, Volume]:
    grid = geo.Geometry((8, 16, 16), (2.5, 1.0, 1.0), (0.0, 0.0, 0.0))
    a = np.zeros(grid.shape, dtype=np.uint8)
    a[3:5, 4:8, 4:8] = 1
    b = np.zeros(grid.shape, dtype=np.uint8)
    b[3:5, 9:12, 9:12] = 1
    return {
        "Lens-Lt": Volume(a, grid, VolumeKind.LABELS),
        "Lens-Rt": Volume(b, grid, VolumeKind.LABELS),
    }


def test_refuses_bad_inputs(tmp_path: Path) -> None:
    maps = _two_maps()
    grid = maps["Lens-Lt"].geometry
    moved = geo.Geometry(grid.shape, grid.spacing_mm, (0.0, 0.0, 5.0))
    with pytest.raises(GeometryError):
        ct_from_label_maps(
            {
                **maps,
                "Lens-Rt": Volume(np.asarray(maps["Lens-Rt"].array), moved, VolumeKind.LABELS),
            },
            seed=0,
        )
    two = np.asarray(maps["Lens-Rt"].array) * 2
    with pytest.raises(InputError, match="binary"):
        ct_from_label_maps({**maps, "Lens-Rt": Volume(two, grid, VolumeKind.LABELS)}, seed=0)
    with pytest.raises(InputError, match="no HU known"):
        ct_from_label_maps({"Thyroid": maps["Lens-Lt"]}, seed=0)
    assert ct_from_label_maps({"Thyroid": maps["Lens-Lt"]}, seed=0, hu={"thyroid": 80.0})
    with pytest.raises(InputError, match="not in class_names"):
        ct_from_label_maps(maps, seed=0, class_names=["Lens-Lt"])
    with pytest.raises(ConfigError, match="noise_std_hu"):
        ct_from_label_maps(maps, seed=0, noise_std_hu=-1.0)
    with pytest.raises(ConfigError, match="unique"):
        ct_from_label_maps(maps, seed=0, class_names=["Lens-Lt", "Lens-Rt", "Lens-Lt"])
    with pytest.raises(InputError, match="no label maps"):
        ct_from_label_maps({}, seed=0)
    with pytest.raises(InputError, match="no label maps"):
        load_label_maps(tmp_path)


@pytest.mark.slow
def test_benchmark_quick_prints_dice_per_organ_and_the_speed_ratio(tmp_path: Path) -> None:
    data_root = require_data("hn-oar-labels/oncologist").parents[1]
    script = REPO_ROOT / "benchmarks" / "train_hn_oar.py"
    run = subprocess.run(
        [sys.executable, str(script), "--quick", "--data", str(data_root), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=240, check=False, cwd=REPO_ROOT,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    sys.path.insert(0, str(script.parent))
    try:
        from train_hn_oar import CLASS_NAMES
    finally:
        sys.path.remove(str(script.parent))
    for name in CLASS_NAMES:
        line = re.search(rf"^Dice {re.escape(name)} .*?(\d\.\d+)\s+\S+$", run.stdout, re.MULTILINE)
        assert line is not None, f"no Dice line for {name}:\n{run.stdout}"
        assert 0.0 <= float(line.group(1)) <= 1.0
    ratio = re.search(
        r"medseg ([\d.]+), MONAI CacheDataset loop ([\d.]+), ratio medseg/MONAI ([\d.]+)x",
        run.stdout,
    )
    assert ratio is not None, run.stdout
    medseg_sps, monai_sps, shown = map(float, ratio.groups())
    assert medseg_sps > 0 and monai_sps > 0
    assert shown == pytest.approx(medseg_sps / monai_sps, abs=0.02)
    assert (tmp_path / "best.pt").is_file()
