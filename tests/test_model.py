"""Checkpoints: round trip, and refusal of anything that is not tensors and primitives."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import medseg
from medseg.config import ModelConfig, load_config
from medseg.errors import ModelError
from medseg.model import (
    CHECKPOINT_FORMAT,
    ONNX_OPSET,
    build_network,
    export_onnx,
    load_checkpoint,
    save_checkpoint,
    with_subpixel_upsampling,
)

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


def test_network_has_one_output_per_label_plus_background() -> None:
    config = load_config(TINY)
    network = build_network(config.model)
    out = network(torch.zeros(1, 1, *config.train.patch_size))
    assert out.shape == (1, 1 + len(config.model.labels), *config.train.patch_size)


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    config = load_config(TINY)
    torch.manual_seed(1)
    network = build_network(config.model)
    path = save_checkpoint(
        tmp_path / "sub" / "model.pt", network, config, {"epoch": 3, "val_dice": 0.5}
    )

    loaded = load_checkpoint(path)

    assert loaded.config == config
    assert loaded.label_names == {1: "tumour"}
    assert loaded.medseg_version == medseg.__version__
    assert dict(loaded.extra) == {"epoch": 3, "val_dice": 0.5}
    assert not loaded.network.training
    original, restored = network.state_dict(), loaded.network.state_dict()
    assert original.keys() == restored.keys()
    for key in original:
        assert torch.equal(original[key], restored[key]), key
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temporary left over


def test_checkpoint_is_plain_data_loadable_with_weights_only(tmp_path: Path) -> None:
    config = load_config(TINY)
    path = save_checkpoint(tmp_path / "model.pt", build_network(config.model), config)
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == CHECKPOINT_FORMAT
    (structure,) = payload["config"]["model"]["labels"]
    assert (structure["name"], structure["type"]) == ("tumour", "GTV")


def test_checkpoint_of_medseg_before_structures_loads_unchanged(tmp_path: Path) -> None:
    """Checkpoints written before structures (``labels: {1: tumour}``) keep loading, with the
    interpreted type decided from the name, and give the same network outputs."""
    config = load_config(TINY)
    network = build_network(config.model)
    path = save_checkpoint(tmp_path / "model.pt", network, config)
    payload = torch.load(path, weights_only=True)
    payload["config"]["model"]["labels"] = {1: "tumour"}  # exactly as 0.1.0 wrote it
    old = tmp_path / "old.pt"
    torch.save(payload, old)
    loaded = load_checkpoint(old)
    assert loaded.label_names == {1: "tumour"}
    assert [(s.name, s.interpreted_type.value) for s in loaded.structures] == [("tumour", "GTV")]
    assert loaded.structures == load_checkpoint(path).structures
    x = torch.rand(1, 1, *config.train.patch_size)
    with torch.no_grad():
        torch.testing.assert_close(loaded.network(x), network.eval()(x))


class _Exploit:
    """Unpickling this would create a file: what a malicious checkpoint could do."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (Path.write_text, (str(self.target), "pwned"))  # type: ignore[return-value]


def test_checkpoint_with_code_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "marker.txt"
    path = tmp_path / "evil.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "payload": _Exploit(marker)}, path)
    with pytest.raises(ModelError, match="refused to load"):
        load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "payload",
    [{"state_dict": {}}, [1, 2, 3], {"format": CHECKPOINT_FORMAT, "format_version": 99}],
    ids=["no-format", "not-a-dict", "future-version"],
)
def test_foreign_checkpoint_is_refused(tmp_path: Path, payload: object) -> None:
    path = tmp_path / "foreign.pt"
    torch.save(payload, path)
    with pytest.raises(ModelError, match="foreign.pt"):
        load_checkpoint(path)


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path: Path) -> None:
    config = load_config(TINY)
    path = save_checkpoint(tmp_path / "model.pt", build_network(config.model), config)
    payload = torch.load(path, weights_only=True)
    bigger = config.model.model_copy(update={"channels": (8, 16, 32)})
    payload["state_dict"] = build_network(bigger).state_dict()
    torch.save(payload, path)
    with pytest.raises(ModelError, match="weights do not fit"):
        load_checkpoint(path)


def test_missing_or_garbage_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        load_checkpoint(tmp_path / "absent.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ModelError, match="garbage.pt"):
        load_checkpoint(garbage)


def test_extra_must_be_primitives(tmp_path: Path) -> None:
    config = load_config(TINY)
    with pytest.raises(ModelError, match="extra values"):
        save_checkpoint(tmp_path / "m.pt", build_network(config.model), config, {"x": [1, 2]})
    assert not (tmp_path / "m.pt").exists()


# exact rewrites for the exported runtimes: transposed convolutions as sub-pixel convolutions

#: (kernel, stride, padding, output_padding) per axis whose output is exactly stride x input.
_SUBPIXEL_AXES = [
    (3, 2, 1, 1),
    (2, 2, 0, 0),
    (4, 2, 1, 0),
    (5, 2, 2, 1),
    (3, 1, 1, 0),
    (4, 4, 0, 0),
    (6, 3, 2, 1),
]


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    axes=st.tuples(*[st.sampled_from(_SUBPIXEL_AXES)] * 3),
    channels=st.tuples(st.integers(1, 5), st.integers(1, 5)),
    shape=st.tuples(*[st.integers(1, 7)] * 3),
    bias=st.booleans(),
    batch=st.integers(1, 3),
)
def test_subpixel_convolution_equals_the_transposed_convolution(
    axes: tuple[tuple[int, int, int, int], ...],
    channels: tuple[int, int],
    shape: tuple[int, int, int],
    bias: bool,
    batch: int,
) -> None:
    from medseg.model import SubPixelConvTranspose3d, subpixel_supported

    kernel, stride, padding, output_padding = (tuple(a[i] for a in axes) for i in range(4))
    torch.manual_seed(sum(shape) + 7 * channels[0] + channels[1])
    deconv = torch.nn.ConvTranspose3d(channels[0], channels[1], kernel, stride, padding,
                                      output_padding, bias=bias)  # fmt: skip
    assert subpixel_supported(deconv)
    x = torch.randn(batch, channels[0], *shape)
    with torch.no_grad():
        expected, got = deconv(x), SubPixelConvTranspose3d(deconv)(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "module",
    [
        torch.nn.ConvTranspose3d(2, 2, 3, 2, 1, 0),  # output 2n - 1
        torch.nn.ConvTranspose3d(2, 2, 3, 2, 1, 1, groups=2),
        torch.nn.ConvTranspose3d(2, 2, 3, 2, 2, 1, dilation=2),
        torch.nn.Conv3d(2, 2, 3),
    ],
    ids=["odd-output", "groups", "dilation", "not-transposed"],
)
def test_subpixel_leaves_other_modules_alone(module: torch.nn.Module) -> None:
    from medseg.model import SubPixelConvTranspose3d, subpixel_supported, with_subpixel_upsampling

    assert not subpixel_supported(module)
    assert type(with_subpixel_upsampling(torch.nn.Sequential(module))[0]) is type(module)
    if isinstance(module, torch.nn.ConvTranspose3d):
        with pytest.raises(ValueError, match="not a sub-pixel"):
            SubPixelConvTranspose3d(module)


@pytest.mark.parametrize("name", ["demo", "dynunet"], ids=["unet", "dynunet"])
def test_subpixel_network_gives_the_network_s_logits(name: str) -> None:
    from medseg.model import SubPixelConvTranspose3d, with_subpixel_upsampling

    config = load_config(TINY.with_name("demo.yaml")).model
    if name == "dynunet":
        config = config.model_copy(update={"name": "dynunet"})
    torch.manual_seed(3)
    network = build_network(config).train()
    before = {k: v.clone() for k, v in network.state_dict().items()}
    rewritten = with_subpixel_upsampling(network)
    assert network.training and not rewritten.training  # the original's mode is kept
    assert not any(isinstance(m, torch.nn.ConvTranspose3d) for m in rewritten.modules())
    assert any(isinstance(m, SubPixelConvTranspose3d) for m in rewritten.modules())
    x = torch.randn(2, 1, 32, 48, 40)
    network.eval()
    with torch.no_grad():
        torch.testing.assert_close(rewritten(x), network(x), rtol=1e-4, atol=1e-4)
    assert all(torch.equal(v, before[k]) for k, v in network.state_dict().items())


# ---------------------------------------------------------------------------------------------
# ONNX export: the graph that ONNX Runtime and OpenVINO run (medseg.runtime)

#: The opset export_onnx used with torch's legacy TorchScript exporter: the reference below.
_LEGACY_OPSET = 17
#: Exported graph against torch, as tests/test_infer.py's OpenVINO check.
_ONNX_ATOL = 1e-4

#: tiny.yaml's network: id -> (architecture, transposed convolutions as sub-pixel convolutions,
#: as medseg.runtime exports it).
_EXPORTED = {
    "unet-subpixel": ("unet", True),
    "dynunet-subpixel": ("dynunet", True),
    "unet": ("unet", False),
    # per-axis strides and (1, 3, 3) kernels (tests below), as medseg.runtime exports them:
    # (1, 2, 2) up-sampling rewritten
    "dynunet-anisotropic-subpixel": ("dynunet-anisotropic", True),
}


def _legacy_onnx(network: torch.nn.Module, path: Path, window: tuple[int, ...]) -> Path:
    """The graph export_onnx wrote before it moved off the TorchScript exporter."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's own deprecation, tracer notes
        torch.onnx.export(
            network,
            (torch.zeros((1, 1, *window)),),
            str(path),
            dynamo=False,
            opset_version=_LEGACY_OPSET,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        )
    return path


def _run_onnx(runtime: str, path: Path, batch: np.ndarray) -> np.ndarray:
    if runtime == "onnxruntime":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return np.asarray(session.run(["logits"], {"image": batch})[0])
    import openvino

    compiled = openvino.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return np.array(compiled({"image": batch})[compiled.output(0)])


@pytest.mark.parametrize(("name", "subpixel"), _EXPORTED.values(), ids=_EXPORTED.keys())
def test_onnx_export_gives_the_network_s_and_the_legacy_exporter_s_logits(
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    name: str,
    subpixel: bool,
) -> None:
    """One self-contained file, batch free and window fixed, written without a warning or a
    line of output, whose logits in both runtimes are torch's and the legacy exporter's."""
    onnx = pytest.importorskip("onnx")
    for runtime in ("onnxruntime", "openvino"):
        pytest.importorskip(runtime)
    config = load_config(TINY)
    torch.manual_seed(0)
    if name == "dynunet-anisotropic":
        model = _anisotropic_model()
        assert all(s % f == 0 for s, f in zip(config.infer.roi_size, model.downsampling_factor))
    else:
        model = config.model.model_copy(update={"name": name})
    network = build_network(model).eval()
    if subpixel:
        network = with_subpixel_upsampling(network)
    window = config.infer.roi_size
    capfd.readouterr()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = export_onnx(network, tmp_path / "export" / "model.onnx", window)

    assert [f"{w.category.__name__}: {w.message}" for w in caught] == []
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert [p.name for p in path.parent.iterdir()] == ["model.onnx"]  # no weights beside it
    graph = onnx.load(str(path), load_external_data=False)
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in graph.graph.initializer)
    assert {o.domain: o.version for o in graph.opset_import}[""] == ONNX_OPSET
    (image,), (logits,) = graph.graph.input, graph.graph.output
    shapes = {v.name: v.type.tensor_type.shape.dim for v in (image, logits)}
    assert set(shapes) == {"image", "logits"}
    for dims in shapes.values():  # batch free, the rest fixed
        assert dims[0].dim_param and not dims[0].HasField("dim_value")
    assert [d.dim_value for d in shapes["image"][1:]] == [1, *window]
    assert [d.dim_value for d in shapes["logits"][1:]] == [1 + len(config.model.labels), *window]

    legacy = _legacy_onnx(network, tmp_path / "legacy.onnx", window)
    for batch in (1, 2):
        x = torch.rand((batch, 1, *window), generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            expected = network(x).numpy()
        for runtime in ("onnxruntime", "openvino"):
            got = _run_onnx(runtime, path, x.numpy())
            assert got.shape == expected.shape, (runtime, batch)
            np.testing.assert_allclose(got, expected, atol=_ONNX_ATOL, err_msg=runtime)
            reference = _run_onnx(runtime, legacy, x.numpy())
            np.testing.assert_allclose(got, reference, atol=_ONNX_ATOL, err_msg=runtime)


class _DataDependent(torch.nn.Module):
    """Branches on a voxel value: a trace would keep one branch, torch.export refuses it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y if bool(y.sum() > 0) else -y


def test_onnx_export_that_fails_says_so_in_one_line_and_leaves_no_file(tmp_path: Path) -> None:
    network = _DataDependent().train()
    with pytest.raises(ModelError, match=r"model\.onnx: ONNX export failed") as caught:
        export_onnx(network, tmp_path / "model.onnx", (4, 4, 4))
    assert "\n" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []
    assert network.training  # its mode is restored


def test_onnx_export_refuses_weights_too_large_for_one_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import medseg.model

    network = torch.nn.Conv3d(1, 2, 1)  # 2 weights and 2 biases: 16 bytes
    monkeypatch.setattr(medseg.model, "ONNX_MAX_WEIGHT_BYTES", 15)
    with pytest.raises(ModelError, match=r"model\.onnx: 16 bytes of weights .* \(at most 15\)"):
        export_onnx(network, tmp_path / "model.onnx", (4, 4, 4))
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# nnU-Net-style plans: per-axis strides and kernel sizes

#: A small plan for thick slices: no pooling across slices at the first level, a (1, 3, 3)
#: first kernel (nnU-Net's 3d_fullres plan for 5 mm slices looks like this).
_ANISOTROPIC = {
    "channels": (4, 8, 16),
    "strides": ((1, 2, 2), (2, 2, 2)),
    "kernel_sizes": ((1, 3, 3), (3, 3, 3), (3, 3, 3)),
}


def _anisotropic_model(name: str = "dynunet", **update: object) -> ModelConfig:
    fields = {**_ANISOTROPIC, **update}
    if name != "dynunet":
        fields.pop("kernel_sizes", None)
    model = load_config(TINY).model.model_copy(update={"name": name, **fields})
    return ModelConfig.model_validate(model.model_dump())  # validated, as from YAML


def _level_shapes(network: torch.nn.Module, x: torch.Tensor) -> list[tuple[int, ...]]:
    """Spatial shapes of every Conv3d's output, in call order."""
    shapes: list[tuple[int, ...]] = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape[2:])))
        for m in network.modules()
        if type(m) is torch.nn.Conv3d
    ]
    with torch.no_grad():
        network(x)
    for hook in hooks:
        hook.remove()
    return shapes


@pytest.mark.parametrize(
    ("name", "num_res_units"),
    [("unet", 0), ("unet", 2), ("dynunet", 0), ("dynunet", 1)],
    ids=["unet", "unet-residual", "dynunet", "dynunet-residual"],
)
def test_per_axis_strides_pool_each_axis_by_its_own_factor(name: str, num_res_units: int) -> None:
    """With strides (1, 2, 2), (2, 2, 2) the coarsest features are (d / 2, h / 4, w / 4): the
    slice axis is pooled once, not twice, so 2 slices are a valid input."""
    config = _anisotropic_model(name, num_res_units=num_res_units)
    assert config.downsampling_factor == (2, 4, 4)
    network = build_network(config).eval()
    for shape in ((2, 8, 12), (6, 16, 8)):
        x = torch.randn(1, 1, *shape)
        shapes = _level_shapes(network, x)
        coarsest = (shape[0] // 2, shape[1] // 4, shape[2] // 4)
        assert min(shapes, key=lambda s: s[0] * s[1] * s[2]) == coarsest
        with torch.no_grad():
            assert network(x).shape == (1, 2, *shape)


def test_dynunet_kernel_sizes_reach_the_convolutions() -> None:
    network = build_network(_anisotropic_model())
    kernels = {tuple(m.kernel_size) for m in network.modules() if type(m) is torch.nn.Conv3d}
    assert (1, 3, 3) in kernels and (3, 3, 3) in kernels
    first = network.input_block.conv1.conv  # the first level's first convolution
    assert tuple(first.kernel_size) == (1, 3, 3) and tuple(first.padding) == (0, 1, 1)
    ups = [m for m in network.modules() if isinstance(m, torch.nn.ConvTranspose3d)]
    assert sorted(tuple(m.stride) for m in ups) == [(1, 2, 2), (2, 2, 2)]
    assert all(tuple(m.kernel_size) == tuple(m.stride) for m in ups)


@pytest.mark.parametrize("name", ["unet", "dynunet"])
def test_int_strides_and_per_axis_triples_build_the_same_network(name: str) -> None:
    """``[2, 2]`` and ``[[2, 2, 2], [2, 2, 2]]`` (and kernel_sizes 3 written out) are one
    network: same parameters, same logits from the same seed."""
    plain = load_config(TINY).model.model_copy(update={"name": name})
    spelled = {"strides": ((2, 2, 2), (2, 2, 2))}
    if name == "dynunet":
        spelled["kernel_sizes"] = ((3, 3, 3),) * 3
    triples = ModelConfig.model_validate({**plain.model_dump(), **spelled})
    torch.manual_seed(4)
    a = build_network(plain).eval()
    torch.manual_seed(4)
    b = build_network(triples).eval()
    assert {k: v.shape for k, v in a.state_dict().items()} == {
        k: v.shape for k, v in b.state_dict().items()
    }
    x = torch.randn(1, 1, 8, 16, 16)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_checkpoint_written_before_per_axis_strides_loads_and_gives_the_same_logits(
    tmp_path: Path,
) -> None:
    """A checkpoint config without the keys issue 20 added (kernel_sizes, intensity_mean,
    intensity_std, resample_separate_z), as medseg wrote it before, loads bit for bit."""
    for name in ("unet", "dynunet"):
        config = load_config(TINY)
        config = config.model_copy(update={"model": config.model.model_copy(update={"name": name})})
        network = build_network(config.model).eval()
        path = save_checkpoint(tmp_path / f"{name}.pt", network, config)
        payload = torch.load(path, weights_only=True)
        del payload["config"]["model"]["kernel_sizes"]
        for key in ("intensity_mean", "intensity_std", "resample_separate_z"):
            del payload["config"]["preprocess"][key]
        old = tmp_path / f"{name}-old.pt"
        torch.save(payload, old)
        loaded = load_checkpoint(old)
        assert loaded.config == config and loaded.config.model.strides == (2, 2)
        x = torch.rand(1, 1, *config.train.patch_size)
        with torch.no_grad():
            assert torch.equal(loaded.network(x), network(x))


def test_anisotropic_checkpoint_round_trip(tmp_path: Path) -> None:
    config = load_config(TINY)
    config = config.model_copy(update={"model": _anisotropic_model(deep_supervision=True)})
    network = build_network(config.model)
    loaded = load_checkpoint(save_checkpoint(tmp_path / "model.pt", network, config))
    assert loaded.config.model.strides == ((1, 2, 2), (2, 2, 2))
    assert loaded.config.model.kernel_sizes == ((1, 3, 3), (3, 3, 3), (3, 3, 3))
    x = torch.rand(1, 1, 6, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded.network(x), network.eval()(x))


def test_deep_supervision_heads_with_per_axis_strides() -> None:
    network = build_network(_anisotropic_model(deep_supervision=True)).train()
    out = network(torch.randn(2, 1, 6, 16, 16))
    assert out.shape == (2, 2, 2, 6, 16, 16)  # (batch, 1 + levels, classes, ...)
    out.sum().backward()  # every head is differentiable at full size
    assert network.eval()(torch.randn(1, 1, 6, 16, 16)).shape == (1, 2, 6, 16, 16)


@pytest.mark.parametrize("name", ["unet", "dynunet"])
def test_subpixel_network_with_per_axis_strides_gives_the_network_s_logits(name: str) -> None:
    """(1, 2, 2) transposed convolutions (stride 1 along slices) are rewritten too, exactly."""
    from medseg.model import SubPixelConvTranspose3d, subpixel_supported

    torch.manual_seed(5)
    network = build_network(_anisotropic_model(name)).eval()
    ups = [m for m in network.modules() if isinstance(m, torch.nn.ConvTranspose3d)]
    assert any(tuple(m.stride) == (1, 2, 2) for m in ups)
    assert all(subpixel_supported(m) for m in ups)
    rewritten = with_subpixel_upsampling(network)
    assert not any(isinstance(m, torch.nn.ConvTranspose3d) for m in rewritten.modules())
    strides = sorted(
        m.strides for m in rewritten.modules() if isinstance(m, SubPixelConvTranspose3d)
    )
    assert (1, 2, 2) in strides
    x = torch.randn(2, 1, 6, 20, 12)
    with torch.no_grad():
        torch.testing.assert_close(rewritten(x), network(x), rtol=1e-4, atol=1e-4)


@settings(max_examples=10, deadline=None, derandomize=True)
@given(
    name=st.sampled_from(["unet", "dynunet"]),
    strides=st.lists(st.tuples(*[st.sampled_from([1, 2])] * 3), min_size=1, max_size=3),
    multiple=st.tuples(*[st.integers(2, 3)] * 3),
)
def test_any_per_axis_strides_keep_the_input_size_and_pool_by_their_product(
    name: str, strides: list[tuple[int, int, int]], multiple: tuple[int, int, int]
) -> None:
    """For any per-axis strides, an input that is a multiple of downsampling_factor per axis
    comes out at its own size, and the coarsest features are the input / that factor."""
    if name == "dynunet" and len(strides) < 2:
        strides = [*strides, (1, 2, 2)]  # DynUNet needs 3 levels (the config says so)
    config = ModelConfig.model_validate(
        {
            **load_config(TINY).model.model_dump(),
            "name": name,
            "channels": [2 * (level + 1) for level in range(len(strides) + 1)],
            "strides": strides,
            "num_res_units": 0,
        }
    )
    factor = config.downsampling_factor
    assert factor == tuple(int(np.prod([s[a] for s in strides])) for a in range(3))
    shape = tuple(f * m for f, m in zip(factor, multiple, strict=True))
    x = torch.randn(1, 1, *shape)
    network = build_network(config).eval()
    shapes = _level_shapes(network, x)
    assert min(shapes, key=lambda s: s[0] * s[1] * s[2]) == tuple(multiple)
    with torch.no_grad():
        assert network(x).shape == (1, 2, *shape)
