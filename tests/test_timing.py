"""Where a prediction's time goes (medseg.timing): the stages infer and predict_case report."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import medseg
from medseg.cli import app
from medseg.config import load_config
from medseg.geometry import Geometry
from medseg.infer import predict
from medseg.model import LoadedModel, build_network, save_checkpoint
from medseg.timing import STAGES, StageTimes, format_stage_seconds
from medseg.volume import Volume, VolumeKind

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
#: seconds each forward pass of the slow network sleeps
NAP_S = 0.05


class _Slow(torch.nn.Module):
    """The tiny U-Net, sleeping NAP_S in every forward pass (and counting them), so the
    network's share of the time is known; its bias says "label 1" everywhere."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network
        self.calls = 0
        self.seconds = 0.0  # inside forward
        with torch.no_grad():
            convolutions = (torch.nn.Conv3d, torch.nn.ConvTranspose3d)
            last = [m for m in network.modules() if isinstance(m, convolutions)][-1]
            last.weight.zero_()
            last.bias.copy_(torch.tensor([0.0, 5.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        started = time.perf_counter()
        self.calls += 1
        time.sleep(NAP_S)
        out = self.network(x)
        self.seconds += time.perf_counter() - started
        return out


def _model(**preprocess: object) -> tuple[LoadedModel, _Slow]:
    config = load_config(TINY)
    config = config.model_copy(
        update={"preprocess": config.preprocess.model_copy(update=preprocess)}
    )
    torch.manual_seed(0)
    slow = _Slow(build_network(config.model).eval())
    return LoadedModel(slow, config, config.model.label_names, medseg.__version__), slow


def test_stage_times_add_up_and_refuse_unknown_stages() -> None:
    times = StageTimes()
    times.add("network", 1.25)
    times.add("load", 0.5)
    times.add("network", 0.25)
    with times.stage("report"):
        time.sleep(0.01)
    seconds = times.seconds()
    assert list(seconds) == ["load", "network", "report"]  # STAGES order
    assert seconds["network"] == 1.5 and seconds["report"] >= 0.01
    with pytest.raises(ValueError, match="unknown stage 'nap'"):
        times.add("nap", 1.0)
    line = format_stage_seconds({"load": 0.5, "network": 1.5})
    assert line == "load 0.50 s, network 1.50 s (total 2.0 s)"


@pytest.mark.parametrize("spacing", [None, (3.0, 1.5, 1.5)], ids=["own-grid", "model-spacing"])
def test_predict_reports_network_apart_from_the_rest_and_every_window(
    spacing: tuple[float, float, float] | None,
) -> None:
    """The network's seconds are its forward passes (timed inside them here), the three
    stages add up to the call, and progress reaches every planned window in order."""
    model, slow = _model(spacing_mm=spacing)
    grid = Geometry((40, 70, 60), (2.0, 1.0, 1.2), (-10.0, 5.0, 3.0))
    hu = np.random.default_rng(0).normal(40.0, 20.0, grid.shape).astype(np.float32)
    seen: list[tuple[int, int]] = []
    times = StageTimes()
    started = time.perf_counter()
    predict(
        model,
        Volume(hu, grid, VolumeKind.IMAGE),
        times=times,
        progress=lambda done, total: seen.append((done, total)),
    )
    wall = time.perf_counter() - started
    seconds = times.seconds()
    assert list(seconds) == ["preprocess", "network", "postprocess"]
    assert slow.calls > 1
    # the forward passes themselves, and little else (stacking a batch, copying logits)
    assert NAP_S * slow.calls <= slow.seconds <= seconds["network"] + 0.002
    assert seconds["network"] <= slow.seconds + 0.01 * slow.calls + 0.05
    assert sum(seconds.values()) == pytest.approx(wall, abs=0.02)
    assert seconds["preprocess"] > 0 and seconds["postprocess"] > 0
    total = seen[-1][1]
    assert seen[-1] == (total, total) and total >= slow.calls
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_predict_case_keeps_stage_seconds_in_volumes_json_and_logs_them_with_v(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A DICOM case: every stage in volumes.json (after the keys users parse), the same in
    the result, and ``medseg -v predict`` logs them in one line."""
    from medseg.pipeline import predict_case
    from medseg.synthetic import phantom

    case = phantom.make_case(3, shape=(20, 48, 48), n_tumours=1)
    paths = phantom.write_case(case, tmp_path / "case", patient_id="PHANTOM-TIMING")
    model, _ = _model()
    result = predict_case(model, paths.ct_dir, tmp_path / "out")
    document = json.loads(result.volumes_path.read_text())
    assert list(document)[-3:] == ["labels", "stage_seconds", "precision"]
    assert list(document["stage_seconds"]) == list(STAGES)
    assert document["stage_seconds"] == result.stage_seconds
    assert all(v >= 0 for v in result.stage_seconds.values())

    checkpoint = save_checkpoint(tmp_path / "model.pt", model.network.network, model.config)
    caplog.set_level(logging.DEBUG, logger="medseg")
    cli = CliRunner().invoke(
        app, ["-v", "predict", str(paths.ct_dir), str(tmp_path / "cli"), "--model", str(checkpoint)]
    )
    assert cli.exit_code == 0, cli.output
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("stage seconds")]
    assert len(lines) == 1 and all(f"{stage} " in lines[0] for stage in STAGES), lines
