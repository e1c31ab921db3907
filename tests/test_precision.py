"""Verified reduced precision (medseg.precision, medseg.infer.verify_precision,
``medseg verify-precision``, ``infer.precision: auto``): a faster arithmetic is used only where
the checkpoint records that it gave float32's labels on this backend and device, and only
where this machine computes in it natively."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from medseg import precision
from medseg.cli import app
from medseg.config import load_config
from medseg.infer import predict, verify_precision
from medseg.io import dicom, nifti
from medseg.model import LoadedModel, load_checkpoint, save_checkpoint, with_extra
from medseg.postprocess import apply_postprocess
from medseg.synthetic import phantom
from medseg.volume import VolumeKind

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny U-Net trained for seconds on two phantoms (it finds some tumour)."""
    from medseg.training.train import train

    config = load_config(TINY)
    config = config.model_copy(
        update={"train": config.train.model_copy(update={"epochs": 8, "foreground_fraction": 0.7})}
    )
    cases = [
        phantom.make_case(seed, shape=(32, 64, 64), n_tumours=2, radius_range_mm=(10.0, 16.0))
        for seed in range(2)
    ]
    out = tmp_path_factory.mktemp("tiny-precision")
    return Path(train(config, [(c.image, c.labels) for c in cases], [], out).checkpoint_path)


@pytest.fixture(scope="module")
def cases_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("verification-cases")
    for seed in (11, 12):
        case = phantom.make_case(seed, shape=(32, 64, 64), n_tumours=2, radius_range_mm=(9.0, 14.0))
        nifti.save(case.image, folder / f"case{seed}.nii.gz")
    return folder


def _numpy_dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


#: The window settings of tiny.yaml's models, as their records keep them.
TINY_SETTINGS = precision.inference_settings(load_config(TINY).infer)


def _record(
    accepted: bool,
    backend: str = "torch",
    device: str = "cpu",
    settings: dict[str, object] | None = None,
) -> str:
    record = precision.PrecisionRecord(
        precision="bfloat16",
        backend=backend,
        device=device,
        cases=3,
        worst_dice=0.9995 if accepted else 0.98,
        worst_volume_change=0.001,
        structures={"GTV": (0.9995 if accepted else 0.98, 0.001)},
        settings=TINY_SETTINGS if settings is None else settings,
    )
    return precision.Verification(records=(record,), cases=3, native=("bfloat16",)).to_json()


def _with_record(model: LoadedModel, text: str) -> LoadedModel:
    return LoadedModel(
        model.network,
        model.config,
        model.label_names,
        model.medseg_version,
        extra={precision.EXTRA_KEY: text},
    )


def test_compare_labels_counts_dice_and_volume_change_per_structure() -> None:
    reference = np.zeros((4, 4, 4), np.uint8)
    other = np.zeros_like(reference)
    reference[0, :2, :2] = 1  # 4 voxels
    other[0, :2, :1] = 1  # 2 of them
    other[3, 3, 3] = 2  # only in other
    out = precision.compare_labels(reference, other, {1: "a", 2: "b", 3: "c"})
    assert out["a"] == pytest.approx((2 * 2 / 6, 0.5))
    assert out["b"] == (0.0, 1.0)  # float32 found nothing, this precision something
    assert out["c"] == (1.0, 0.0)  # empty in both
    record = precision.summarise("bfloat16", "torch", "cpu", [out, {"a": (1.0, 0.0)}])
    assert record.worst_dice == 0.0 and record.worst_volume_change == 1.0
    assert record.structures["a"] == pytest.approx((2 * 2 / 6, 0.5)) and not record.accepted


def test_a_verification_reads_back_from_its_json() -> None:
    text = _record(True)
    back = precision.Verification.from_json(text)
    assert back.to_json() == text
    (record,) = back.records
    assert record.accepted and record.structures == {"GTV": (0.9995, 0.001)}
    assert json.loads(text)["records"][0]["accepted"] is True
    with pytest.raises(ValueError, match="not a medseg precision verification"):
        precision.Verification.from_json('{"records": []}')


def test_merged_keeps_the_older_records_of_other_backends_and_devices() -> None:
    older = precision.Verification.from_json(_record(False, backend="torch"))
    cuda = precision.Verification.from_json(_record(True, device="cuda")).records
    older = dataclasses.replace(older, records=older.records + cuda)
    newer = precision.Verification.from_json(_record(True, backend="openvino"))
    merged = newer.merged(older)
    keys = [(r.backend, r.device, r.accepted) for r in merged.records]
    assert keys == [("torch", "cpu", False), ("torch", "cuda", True), ("openvino", "cpu", True)]
    again = precision.Verification.from_json(_record(True, backend="torch")).merged(merged)
    torch_cpu = again.record("bfloat16", "torch", "cpu")
    assert torch_cpu is not None and torch_cpu.accepted  # replaced, not duplicated
    assert len(again.records) == 3
    assert newer.merged(None) is newer


def test_native_precisions_follow_the_cpu_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bfloat16 only with AVX512-BF16 or AMX; none for ONNX Runtime; this machine's answer
    agrees with its /proc/cpuinfo read independently."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor : 0\nflags : fpu sse2 avx2 avx512f avx512_bf16\n")
    assert precision.cpu_flags(cpuinfo) >= {"avx2", "avx512_bf16"}
    assert precision.cpu_flags(tmp_path / "missing") == frozenset()
    real = Path("/proc/cpuinfo")
    if real.is_file():
        flags = set(next(l for l in real.read_text().splitlines() if l.startswith("flags")).split())
        expected = ("bfloat16",) if flags & {"avx512_bf16", "amx_bf16"} else ()
        assert precision.native_precisions("cpu") == expected
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"amx_bf16"}))
    assert precision.native_precisions("cpu", "torch") == ("bfloat16",)
    assert precision.native_precisions("cpu", "openvino") == ("bfloat16",)
    assert precision.native_precisions("cpu", "onnxruntime") == ()
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    assert precision.native_precisions("cpu") == ()  # emulated bfloat16 is slower: never


def test_auto_uses_only_an_accepted_native_record_of_the_same_backend(
    tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = load_checkpoint(tiny)
    assert model.config.infer.precision == "auto"
    monkeypatch.setattr(precision, "native_precisions", lambda device, backend="torch": ())
    assert precision.choose(_with_record(model, _record(True)))[0] == "float32"
    monkeypatch.setattr(
        precision, "native_precisions", lambda device, backend="torch": ("bfloat16",)
    )
    used, reason = precision.choose(model)
    assert used == "float32" and "not verified" in reason
    used, reason = precision.choose(_with_record(model, _record(True)))
    assert used == "bfloat16" and "verified on 3 cases" in reason
    assert precision.choose(_with_record(model, _record(False)))[0] == "float32"
    assert precision.choose(_with_record(model, _record(True, backend="openvino")))[0] == "float32"
    assert precision.choose(_with_record(model, _record(True, device="cuda")))[0] == "float32"
    # a record holds for the window settings it was measured with, and a record that does
    # not say (empty settings) holds for none
    gaussian = precision.with_precision(_with_record(model, _record(True)), "auto")
    infer = gaussian.config.infer
    other = "constant" if infer.blend == "gaussian" else "gaussian"
    for changed in ({"blend": other}, {"overlap": 0.6}, {"flip_tta": (0, 2)},
                    {"roi_size": (8, 16, 16)}):  # fmt: skip
        moved = dataclasses.replace(
            gaussian,
            config=gaussian.config.model_copy(update={"infer": infer.model_copy(update=changed)}),
        )
        used, reason = precision.choose(moved)
        assert used == "float32" and "other window settings" in reason, changed
    unsaid = _with_record(model, _record(True, settings={}))
    assert precision.choose(unsaid)[0] == "float32"
    batch = dataclasses.replace(
        gaussian,
        config=gaussian.config.model_copy(
            update={"infer": infer.model_copy(update={"sw_batch_size": 7, "num_threads": 1})}
        ),
    )
    assert precision.choose(batch)[0] == "bfloat16"  # batching and threads are not settings
    ensemble = dataclasses.replace(_with_record(model, _record(True)), folds=(tiny, tiny))
    assert precision.choose(ensemble) == (
        "float32",
        "auto: an ensemble's folds are not verified together",
    )
    configured = precision.with_precision(_with_record(model, _record(True)), "float32")
    assert precision.choose(configured) == ("float32", "configured")


def test_verify_precision_records_the_dice_of_the_labels_each_precision_gives(
    tiny: Path, cases_dir: Path
) -> None:
    """bfloat16 asked for explicitly (this CPU may only emulate it): the record's worst Dice
    and volume change are those of the label maps predict() gives in each precision."""
    model = load_checkpoint(tiny)
    images = [nifti.load(p, VolumeKind.IMAGE) for p in sorted(cases_dir.iterdir())]
    verification = verify_precision(model, iter(images), ["bfloat16"])
    (record,) = verification.records
    assert (record.precision, record.backend, record.device, record.cases) == (
        "bfloat16",
        "torch",
        "cpu",
        2,
    )
    assert record.settings == precision.inference_settings(model.config.infer)
    assert precision.Verification.from_json(verification.to_json()) == verification
    dices, changes = [], []
    for image in images:
        ref = np.asarray(predict(precision.with_precision(model, "float32"), image).array)
        low = np.asarray(predict(precision.with_precision(model, "bfloat16"), image).array)
        assert (ref == 1).any(), "the model finds no tumour: the comparison is void"
        dices.append(_numpy_dice(ref == 1, low == 1))
        changes.append(abs(int((low == 1).sum()) - int((ref == 1).sum())) / int((ref == 1).sum()))
    assert record.worst_dice == pytest.approx(min(dices), abs=1e-12)
    assert record.worst_volume_change == pytest.approx(max(changes), abs=1e-12)
    assert record.accepted == (
        min(dices) >= precision.MIN_DICE and max(changes) <= precision.MAX_VOLUME_CHANGE
    )
    with pytest.raises(Exception, match="cannot verify precision 'float32'"):
        verify_precision(model, iter(images), ["float32"])


def test_cli_writes_a_verified_copy_and_never_the_model(
    tiny: Path, cases_dir: Path, tmp_path: Path
) -> None:
    source = tmp_path / "model.pt"
    source.write_bytes(tiny.read_bytes())
    before = source.read_bytes()
    out = tmp_path / "verified.pt"
    run = CliRunner().invoke(
        app,
        ["verify-precision", str(source), "--cases", str(cases_dir), "--precision", "bfloat16",
         "--out", str(out)],
    )  # fmt: skip
    assert run.exit_code == 0, run.output
    assert "bfloat16 (torch, cpu): 2 cases, worst Dice vs float32" in run.output
    infer = load_config(TINY).infer
    flips = ", ".join(map(str, infer.flip_tta)) or "none"
    assert (
        f"windows {'x'.join(map(str, infer.roi_size))}, overlap {infer.overlap} {infer.blend}, "
        f"flips {flips}"
    ) in run.output
    assert "infer.precision auto runs this model in" in run.output
    verified = load_checkpoint(out)
    record = precision.read_verification(verified)
    assert record is not None and record.records[0].precision == "bfloat16"
    # the weights and config are the source's, the other extras kept
    original = load_checkpoint(source)
    for key, value in original.network.state_dict().items():
        assert verified.network.state_dict()[key].equal(value)
    assert verified.config == original.config
    assert {k: v for k, v in verified.extra.items() if k != precision.EXTRA_KEY} == original.extra
    assert source.read_bytes() == before

    hostile = {
        "out-is-the-model": (["--out", str(source)], "output is the input"),
        "out-exists": (["--out", str(out)], "exists"),
        "no-cases": (["--out", str(tmp_path / "x.pt"), "--cases", str(tmp_path / "empty")],
                     "no cases"),
        "bad-precision": (["--out", str(tmp_path / "y.pt"), "--precision", "float32"],
                          "cannot verify precision 'float32'"),
    }  # fmt: skip
    (tmp_path / "empty").mkdir()
    for name, (options, message) in hostile.items():
        args = ["verify-precision", str(source), *options]
        if "--cases" not in options:
            args += ["--cases", str(cases_dir)]
        run = CliRunner().invoke(app, args)
        assert run.exit_code == 2, (name, run.output)
        lines = [line for line in run.output.splitlines() if line.strip()]
        assert len(lines) == 1 and message in lines[0], (name, run.output)
        assert source.read_bytes() == before, name
    assert not (tmp_path / "x.pt").exists() and not (tmp_path / "y.pt").exists()
    # --overwrite replaces a medseg checkpoint, but never another file
    run = CliRunner().invoke(
        app, ["verify-precision", str(source), "--cases", str(cases_dir), "--out", str(out),
              "--overwrite"],
    )  # fmt: skip
    assert run.exit_code == 0, run.output
    foreign = tmp_path / "notes.pt"
    foreign.write_text("mine")
    run = CliRunner().invoke(
        app, ["verify-precision", str(source), "--cases", str(cases_dir), "--out", str(foreign),
              "--overwrite"],
    )  # fmt: skip
    assert run.exit_code == 2 and foreign.read_text() == "mine", run.output


def test_cli_verifies_a_second_backend_and_keeps_the_first_ones_records(
    tiny: Path, cases_dir: Path, tmp_path: Path
) -> None:
    """``--backend openvino`` on a checkpoint verified for torch: the copy holds both, each
    compared with its own backend's float32 labels, so ``auto`` with either backend finds
    its own record; an unknown backend is one line, exit 2."""
    pytest.importorskip("openvino")
    first, second = tmp_path / "torch.pt", tmp_path / "both.pt"
    common = ["--cases", str(cases_dir), "--precision", "bfloat16"]
    run = CliRunner().invoke(app, ["verify-precision", str(tiny), *common, "--out", str(first)])
    assert run.exit_code == 0, run.output
    before = first.read_bytes()
    run = CliRunner().invoke(
        app,
        ["verify-precision", str(first), *common, "--backend", "openvino", "--out", str(second)],
    )
    assert run.exit_code == 0, run.output
    assert "bfloat16 (openvino, cpu): 2 cases" in run.output
    assert first.read_bytes() == before
    verification = precision.read_verification(load_checkpoint(second))
    assert verification is not None
    assert {(r.backend, r.device) for r in verification.records} == {
        ("torch", "cpu"),
        ("openvino", "cpu"),
    }
    openvino = verification.record("bfloat16", "openvino", "cpu")
    assert openvino is not None and openvino.cases == 2
    # the openvino record is openvino's own labels: recomputed here independently
    model = load_checkpoint(tiny)
    on = model.with_infer(backend="openvino")
    worst = 1.0
    for path in sorted(cases_dir.iterdir()):
        image = nifti.load(path, VolumeKind.IMAGE)
        ref = np.asarray(predict(precision.with_precision(on, "float32"), image).array)
        low = np.asarray(predict(precision.with_precision(on, "bfloat16"), image).array)
        worst = min(worst, _numpy_dice(ref == 1, low == 1))
    assert openvino.worst_dice == pytest.approx(worst, abs=1e-12)
    run = CliRunner().invoke(
        app,
        ["verify-precision", str(first), *common, "--backend", "tensorrt", "--out",
         str(tmp_path / "z.pt")],
    )  # fmt: skip
    lines = [line for line in run.output.splitlines() if line.strip()]
    assert run.exit_code == 2 and len(lines) == 1, run.output
    assert "cannot verify backend 'tensorrt'" in lines[0]
    assert not (tmp_path / "z.pt").exists()


def test_predict_case_runs_and_records_the_precision_auto_chose(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unverified: float32, said in volumes.json, the RT-STRUCT and SEG provenance and the QA
    page. With an accepted record on a machine native in bfloat16, the labels are exactly
    those of bfloat16 and every provenance says so."""
    from medseg.pipeline import predict_case

    case = phantom.make_case(21, shape=(24, 64, 64), n_tumours=2, radius_range_mm=(9.0, 13.0))
    paths = phantom.write_case(case, tmp_path / "ct", patient_id="PHANTOM-PRECISION")
    model = load_checkpoint(tiny)
    first = predict_case(model, paths.ct_dir, tmp_path / "plain")
    document = json.loads(first.volumes_path.read_text())
    assert document["precision"]["used"] == "float32"
    assert "auto" in document["precision"]["reason"]

    monkeypatch.setattr(
        precision, "native_precisions", lambda device, backend="torch": ("bfloat16",)
    )
    verified = tmp_path / "verified.pt"
    with_extra(tiny, verified, {precision.EXTRA_KEY: _record(True)})
    model = load_checkpoint(verified)
    result = predict_case(model, paths.ct_dir, tmp_path / "fast")
    document = json.loads(result.volumes_path.read_text())
    assert document["precision"]["used"] == "bfloat16"
    raw = predict(precision.with_precision(model, "bfloat16"), dicom.load_series(paths.ct_dir))
    labels = apply_postprocess(raw, model.config.postprocess, model.structures)
    assert np.array_equal(np.asarray(result.labels.array), np.asarray(labels.array))
    for folder, word in ((first.out_dir, "in float32"), (result.out_dir, "in bfloat16")):
        rt = pydicom.dcmread(folder / "rtstruct.dcm")
        assert all(word in r.ROIGenerationDescription for r in rt.StructureSetROISequence)
        assert word in pydicom.dcmread(folder / "seg.dcm").ContentDescription
        assert word in (folder / "report" / "report.html").read_text(encoding="utf-8")


def test_training_verifies_best_pt_where_a_faster_precision_is_native(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a machine native in bfloat16 (the CPU probe replaced: this one may not be),
    training verifies best.pt on the validation images and keeps the record in it, beside
    it and as run metrics; on one that is not, nothing is verified."""
    from medseg.training.train import PRECISION_FILE, train

    class Recorder:
        run_id = "r"

        def __init__(self) -> None:
            self.metrics: dict[str, float] = {}
            self.artifacts: list[str] = []

        def log_metrics(self, metrics: dict[str, float], step: int) -> None:
            self.metrics.update(metrics)

        def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
            self.artifacts.append(Path(path).name)

        def set_tags(self, tags: dict[str, str]) -> None:
            pass

        def log_model(self, checkpoint_path: Path) -> str:
            self.logged = precision.read_verification(load_checkpoint(checkpoint_path))
            return "runs:/r/model"

    config = load_config(TINY)
    config = config.model_copy(update={"train": config.train.model_copy(update={"epochs": 2})})
    cases = [phantom.make_case(s, shape=(24, 48, 48), n_tumours=1) for s in range(3)]
    pairs = [(c.image, c.labels) for c in cases]
    # a machine with no faster native precision (this one may have one: AVX512-BF16)
    monkeypatch.setattr(precision, "native_precisions", lambda device, backend="torch": ())
    result = train(config, pairs[:2], pairs[2:], tmp_path / "plain")
    assert precision.EXTRA_KEY not in load_checkpoint(result.checkpoint_path).extra
    assert not (tmp_path / "plain" / PRECISION_FILE).exists()

    monkeypatch.setattr(
        precision, "native_precisions", lambda device, backend="torch": ("bfloat16",)
    )
    tracker = Recorder()
    result = train(config, pairs[:2], pairs[2:], tmp_path / "native", tracker)
    verification = precision.read_verification(load_checkpoint(result.checkpoint_path))
    assert verification is not None and verification.cases == 1
    (record,) = verification.records
    assert record.precision == "bfloat16" and record.device == "cpu"
    assert tracker.logged == verification  # the MLflow model holds it
    assert PRECISION_FILE in tracker.artifacts
    assert tracker.metrics["precision_bfloat16_worst_dice"] == record.worst_dice
    on_disk = (tmp_path / "native" / PRECISION_FILE).read_text()
    assert precision.Verification.from_json(on_disk) == verification


def test_save_checkpoint_extra_survives_with_extra(tmp_path: Path) -> None:
    from medseg.model import build_network

    config = load_config(TINY)
    network = build_network(config.model)
    path = save_checkpoint(tmp_path / "a.pt", network, config, {"epoch": 3})
    with_extra(path, path, {"note": "x"})
    assert load_checkpoint(path).extra == {"epoch": 3, "note": "x"}
