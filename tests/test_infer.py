"""Prediction returns labels on exactly the input's grid, whatever its size and orientation."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import medseg
from medseg.config import load_config
from medseg.errors import InputError
from medseg.geometry import Geometry
from medseg.infer import predict
from medseg.model import LoadedModel, build_network
from medseg.volume import SourceInfo, Volume, VolumeKind

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


def _untrained_model() -> LoadedModel:
    config = load_config(TINY)
    torch.manual_seed(0)
    network = build_network(config.model).eval()
    return LoadedModel(network, config, dict(config.model.labels), medseg.__version__)


def _oblique_direction() -> tuple[float, ...]:
    a, b = math.radians(20.0), math.radians(-35.0)
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    return tuple((rz @ rx).ravel())


GRIDS = {
    "odd-37x51x63-oblique": Geometry(
        (37, 51, 63), (2.5, 0.77, 0.91), (-123.4, 56.7, -890.1), _oblique_direction()
    ),
    "smaller-than-roi": Geometry((5, 7, 9), (3.0, 1.0, 1.0), (0.0, 0.0, 0.0)),
    "one-slice": Geometry((1, 40, 40), (5.0, 0.5, 0.5), (10.0, 20.0, 30.0)),
}


@pytest.mark.parametrize("grid", GRIDS.values(), ids=GRIDS.keys())
def test_prediction_is_on_exactly_the_input_grid(grid: Geometry) -> None:
    rng = np.random.default_rng(0)
    source = SourceInfo(
        path=Path("/data/case.nii.gz"),
        series_instance_uid="1.2.3",
        frame_of_reference_uid="1.2.3.4",
        sop_instance_uids=tuple(f"1.2.3.4.{k}" for k in range(grid.shape[0])),
        modality="CT",
    )
    hu = rng.normal(0.0, 300.0, grid.shape).astype(np.float32)
    image = Volume(hu, grid, VolumeKind.IMAGE, source)

    labels = predict(_untrained_model(), image)

    assert labels.kind is VolumeKind.LABELS
    assert labels.array.dtype == np.uint8
    assert labels.array.shape == grid.shape
    assert labels.geometry == image.geometry  # the same object values, not merely "close"
    assert labels.source == image.source
    assert set(np.unique(labels.array)) <= {0, 1}


def test_argmax_channel_is_the_label_value() -> None:
    model = _untrained_model()
    with torch.no_grad():  # make the network say "label 1" everywhere
        convolutions = (torch.nn.Conv3d, torch.nn.ConvTranspose3d)
        last = [m for m in model.network.modules() if isinstance(m, convolutions)][-1]
        last.weight.zero_()
        last.bias.copy_(torch.tensor([0.0, 5.0]))
    grid = Geometry((16, 32, 32), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    labels = predict(model, Volume(np.zeros(grid.shape, np.float32), grid))
    assert np.all(labels.array == 1)


def test_labels_input_is_refused() -> None:
    grid = Geometry((4, 4, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    with pytest.raises(InputError, match="needs an image volume"):
        labels = Volume(np.zeros(grid.shape, np.uint8), grid, VolumeKind.LABELS)
        predict(_untrained_model(), labels)


def test_training_mode_is_restored() -> None:
    model = _untrained_model()
    model.network.train()
    grid = Geometry((8, 8, 8), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    predict(model, Volume(np.zeros(grid.shape, np.float32), grid))
    assert model.network.training
