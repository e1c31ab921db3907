"""Config loading: unknown keys, bad shapes and bad values fail with the key's path and file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from medseg.config import ExperimentConfig, load_config, parse_config
from medseg.errors import ConfigError

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def _tiny_dict() -> dict:
    return yaml.safe_load(
        (Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml").read_text()
    )


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_load(path: Path) -> None:
    config = load_config(path)
    assert isinstance(config, ExperimentConfig)
    assert config.model.label_names == {1: "tumour"}
    assert config.model.labels[0].interpreted_type.value == "GTV"  # a tumour is a target


def test_configs_folder_has_demo_and_tiny() -> None:
    assert {"demo.yaml", "tiny.yaml"} <= {p.name for p in CONFIGS}


@pytest.mark.parametrize(
    ("section", "key"),
    [("train", "epoch"), ("model", "chanels"), ("infer", "overlapp"), ("", "sede")],
    ids=["train.epoch", "model.chanels", "infer.overlapp", "top-level"],
)
def test_unknown_key_names_its_path_and_file(tmp_path: Path, section: str, key: str) -> None:
    data = _tiny_dict()
    (data[section] if section else data)[key] = 1
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert (f"{section}.{key}" if section else key) in message
    assert "unknown key" in message
    assert str(path) in message


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("train", "patch_size", [16, 32], "train.patch_size: too few values, got [16, 32]"),
        ("train", "patch_size", [16, 32, 32, 32], "train.patch_size"),
        ("train", "patch_size", [16, 0, 32], "train.patch_size.1"),
        ("infer", "roi_size", [16, -32, 32], "infer.roi_size.1"),
        ("train", "patch_size", [16, 30, 32], "train.patch_size must be a multiple"),
        ("infer", "roi_size", [15, 32, 32], "infer.roi_size must be a multiple"),
        ("train", "patch_size", [16.5, 32, 32], "train.patch_size.0"),
        ("model", "strides", [2], "strides needs"),
        ("model", "labels", {2: "tumour"}, "label values must be [1]"),
        ("model", "labels", {}, "at least one foreground label"),
        ("model", "name", "vnet", "model.name"),
        ("train", "device", "gpu", "train.device"),
        ("infer", "blend", "max", "infer.blend"),
        ("infer", "overlap", 1.0, "infer.overlap"),
        ("preprocess", "upper_hu", -200.0, "upper_hu must be > lower_hu"),
        ("train", "epochs", "10", "train.epochs"),
    ],
    ids=[
        "two-values",
        "four-values",
        "zero",
        "negative",
        "not-divisible-patch",
        "not-divisible-roi",
        "float-size",
        "strides-count",
        "label-gap",
        "no-labels",
        "unknown-model",
        "unknown-device",
        "unknown-blend",
        "overlap-one",
        "window-inverted",
        "string-for-int",
    ],
)
def test_bad_values_are_refused(
    tmp_path: Path, section: str, key: str, value: object, expected: str
) -> None:
    data = _tiny_dict()
    data[section][key] = value
    with pytest.raises(ConfigError, match="experiment.yaml") as info:
        load_config(_write(tmp_path, data))
    assert expected in str(info.value)


def test_missing_section_is_named(tmp_path: Path) -> None:
    data = _tiny_dict()
    del data["infer"]
    with pytest.raises(ConfigError, match="infer: required key is missing"):
        load_config(_write(tmp_path, data))


def test_duplicate_key_is_refused() -> None:
    text = "seed: 1\nseed: 2\n"
    with pytest.raises(ConfigError, match="duplicate key 'seed'"):
        parse_config(text, "dup.yaml")


def test_exponent_without_dot_is_a_float(tmp_path: Path) -> None:
    text = (Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml").read_text()
    text = text.replace("learning_rate: 1.0e-2", "learning_rate: 1e-2")
    assert "learning_rate: 1e-2" in text
    assert parse_config(text).train.learning_rate == pytest.approx(0.01)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "nope.yaml")


def test_config_is_frozen() -> None:
    config = load_config(CONFIGS[0])
    with pytest.raises(ValidationError, match="frozen"):
        config.seed = 3  # type: ignore[misc]


def test_relative_datalist_resolves_against_the_yaml_folder(tmp_path: Path) -> None:
    data = _tiny_dict()
    data["data"]["datalist"] = "lists/datalist.json"
    config = load_config(_write(tmp_path, data))
    assert config.data.datalist == (tmp_path / "lists" / "datalist.json").resolve()


def test_relative_data_paths_resolve_and_other_data_keys_survive(tmp_path: Path) -> None:
    data = _tiny_dict()
    data["data"] = {
        "dicom_root": "patients",
        "labels": {1: ["GTV*"]},
        "num_folds": 3,
        "cache_dir": "/abs/cache",
    }
    config = load_config(_write(tmp_path, data))
    assert config.data.dicom_root == (tmp_path / "patients").resolve()
    assert config.data.cache_dir == Path("/abs/cache")
    assert config.data.num_folds == 3
    assert config.data.labels == {1: ("GTV*",)}


def test_yaml_and_dump_round_trip() -> None:
    config = load_config(CONFIGS[0])
    assert parse_config(config.to_yaml()) == config
    assert ExperimentConfig.model_validate(config.model_dump()) == config
    dumped = config.model_dump()
    (structure,) = dumped["model"]["labels"]  # always stored in the list form, plain values
    assert (structure["label"], structure["name"], structure["type"]) == (1, "tumour", "GTV")
    assert isinstance(structure["type"], str) and len(structure["color"]) == 3


def test_model_labels_take_both_forms_and_decide_types() -> None:
    from medseg.config import ModelConfig

    def labels(value: object) -> list[tuple[str, str]]:
        model = ModelConfig(channels=(4, 8), strides=(2,), labels=value)
        return [(s.name, s.interpreted_type.value) for s in model.labels]

    assert labels({1: "CTV", 2: "Tumor", 3: "PTV_70", 4: "Lesion"}) == [
        ("CTV", "CTV"),
        ("Tumor", "GTV"),
        ("PTV_70", "PTV"),
        ("Lesion", "GTV"),
    ]
    assert labels([{"label": 2, "name": "Cord", "type": "OAR"}, {"label": 1, "name": "GTV"}]) == [
        ("GTV", "GTV"),
        ("Cord", "OAR"),
    ]
    with pytest.warns(UserWarning, match=r"model\.labels: .*'label_2' \(label 2\).*ORGAN"):
        assert labels({1: "GTV", 2: "label_2"})[1] == ("label_2", "ORGAN")


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        pytest.param({1: "A", 2: "A"}, "duplicate name", id="duplicate-name"),
        pytest.param([{"label": 1, "name": "A", "type": "TUMOUR"}], "Interpreted Type", id="type"),
        pytest.param([{"label": 1, "name": "A", "colour": [1, 2, 3]}], r"0\.colour: unknown key", id="key"),
        pytest.param([{"label": 1, "name": "A", "color": [1, 2, 300]}], r"0\.color", id="colour"),
        pytest.param({1: "A", 3: "B"}, r"label values must be \[1, 2\]", id="gap"),
        pytest.param([{"label": 1, "name": "A", "standard_name": "Parotid_Lt"}], "TG-263", id="tg263"),
        pytest.param("GTV", "a map", id="string"),
    ],
)  # fmt: skip
def test_model_labels_refuse_invalid_structures(labels: object, match: str) -> None:
    tiny = next(path for path in CONFIGS if path.name == "tiny.yaml")
    config_text = tiny.read_text().replace("labels: {1: tumour}", "labels: " + json.dumps(labels))
    with pytest.raises(ConfigError, match=match):
        parse_config(config_text)


# ---------------------------------------------------------------------------------------------
# nnU-Net-style plans: per-axis strides, kernel sizes, intensity statistics, separate z


def _anisotropic_dict(**model: object) -> dict:
    """tiny.yaml as a DynUNet with [1, 2, 2], [2, 2, 2] strides and a (2, 4, 4)-fitting size."""
    data = _tiny_dict()
    data["model"].update({"name": "dynunet", "strides": [[1, 2, 2], [2, 2, 2]], **model})
    data["train"]["patch_size"] = [6, 32, 32]
    data["infer"]["roi_size"] = [6, 32, 32]
    return data


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_int_strides_load_and_dump_as_before(path: Path) -> None:
    config = load_config(path)
    raw = yaml.safe_load(path.read_text())["model"]
    assert config.model.strides == tuple(raw["strides"])  # ints stay ints
    assert config.model.model_dump()["strides"] == tuple(raw["strides"])
    assert config.model.kernel_sizes is None
    product = 1
    for stride in raw["strides"]:
        product *= stride
    assert config.model.downsampling_factor == (product, product, product)
    assert config.model.kernel_sizes_by_axis == ((3, 3, 3),) * len(raw["channels"])


def test_per_axis_strides_and_kernels_parse_and_round_trip() -> None:
    data = _anisotropic_dict(kernel_sizes=[[1, 3, 3], 3, [3, 3, 3]])
    config = parse_config(yaml.safe_dump(data))
    assert config.model.strides == ((1, 2, 2), (2, 2, 2))
    assert config.model.strides_by_axis == ((1, 2, 2), (2, 2, 2))
    assert config.model.downsampling_factor == (2, 4, 4)
    assert config.model.kernel_sizes_by_axis == ((1, 3, 3), (3, 3, 3), (3, 3, 3))
    assert parse_config(config.to_yaml()) == config
    assert ExperimentConfig.model_validate(config.model_dump()) == config


def test_mixed_int_and_per_axis_strides_multiply_per_axis() -> None:
    data = _anisotropic_dict(strides=[[1, 2, 2], 2, [3, 1, 1]])
    data["model"]["channels"] = [4, 8, 16, 32]
    data["train"]["patch_size"] = data["infer"]["roi_size"] = [12, 8, 8]
    assert parse_config(yaml.safe_dump(data)).model.downsampling_factor == (6, 4, 4)


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        pytest.param({"strides": [[1, 2], 2]}, "model.strides: entry 0 must be a positive int or 3", id="two-axes"),
        pytest.param({"strides": [2, [1, 2, 2, 2]]}, "model.strides: entry 1", id="four-axes"),
        pytest.param({"strides": [2, [1, 0, 2]]}, "model.strides: entry 1", id="zero-axis"),
        pytest.param({"strides": [2, [1, 2.0, 2]]}, "model.strides: entry 1", id="float-axis"),
        pytest.param({"strides": [True, 2]}, "model.strides: entry 0", id="bool"),
        pytest.param({"strides": [[1, 2, 2]]}, "strides needs len(channels) - 1 = 2", id="count"),
        pytest.param({"kernel_sizes": [3, 3]}, "kernel_sizes needs len(channels) = 3", id="k-count"),
        pytest.param({"kernel_sizes": [3, [1, 2, 3], 3]}, "model.kernel_sizes: entry 1 must be an odd", id="k-even"),
        pytest.param({"kernel_sizes": [3, 3, 0]}, "model.kernel_sizes: entry 2", id="k-zero"),
        pytest.param({"name": "unet", "kernel_sizes": [3, 3, 3]}, "kernel_sizes needs name 'dynunet'", id="k-unet"),
        pytest.param({"channels": [4, 8], "strides": [[1, 2, 2]], "kernel_sizes": None}, "'dynunet' needs at least 3 levels", id="dynunet-2-levels"),
        pytest.param({"strides": [[1, 3, 3], 2], "kernel_sizes": [3, [1, 1, 1], 3]}, "kernel_sizes entry 1 [1, 1, 1] must be at least strides entry 0 [1, 3, 3] minus 1", id="k-below-stride"),
    ],
)  # fmt: skip
def test_bad_strides_and_kernels_name_the_key(model: dict, expected: str) -> None:
    data = _anisotropic_dict(**model)
    data["train"]["patch_size"] = data["infer"]["roi_size"] = [36, 36, 36]
    with pytest.raises(ConfigError) as info:
        parse_config(yaml.safe_dump(data), "plan.yaml")
    assert expected in str(info.value)
    assert "plan.yaml" in str(info.value)


@pytest.mark.parametrize(
    ("where", "size", "axis"),
    [
        pytest.param("train", [5, 32, 32], "5 along axis 0 (slice) is not a multiple of 2", id="slice"),
        pytest.param("infer", [6, 30, 32], "30 along axis 1 (row) is not a multiple of 4", id="row"),
        pytest.param("infer", [6, 32, 34], "34 along axis 2 (column) is not a multiple of 4", id="column"),
    ],
)  # fmt: skip
def test_sizes_must_fit_the_strides_per_axis(where: str, size: list[int], axis: str) -> None:
    data = _anisotropic_dict()
    data[where]["patch_size" if where == "train" else "roi_size"] = size
    with pytest.raises(ConfigError) as info:
        parse_config(yaml.safe_dump(data))
    message = str(info.value)
    assert f"{where}." in message and "model.strides [2, 4, 4]" in message and axis in message


def test_per_axis_strides_allow_sizes_int_strides_would_refuse() -> None:
    data = _anisotropic_dict()
    data["train"]["patch_size"] = data["infer"]["roi_size"] = [2, 4, 4]
    assert parse_config(yaml.safe_dump(data)).train.patch_size == (2, 4, 4)
    data["model"]["strides"] = [2, 2]
    with pytest.raises(ConfigError, match="axis 0 .slice."):
        parse_config(yaml.safe_dump(data))


@pytest.mark.parametrize(
    ("preprocess", "expected"),
    [
        pytest.param({"intensity": "clip_zscore"}, "needs intensity_mean and intensity_std", id="none"),
        pytest.param({"intensity": "clip_zscore", "intensity_mean": 40.0}, "needs intensity_std", id="no-std"),
        pytest.param({"intensity": "clip_zscore", "intensity_std": 9.0}, "needs intensity_mean", id="no-mean"),
        pytest.param({"intensity": "clip_zscore", "intensity_mean": 40.0, "intensity_std": 0.0}, "preprocess.intensity_std", id="std-zero"),
        pytest.param({"intensity": "clip_zscore", "intensity_mean": float("nan"), "intensity_std": 1.0}, "preprocess.intensity_mean", id="mean-nan"),
        pytest.param({"intensity": "window", "intensity_mean": 40.0}, "intensity_mean apply only to intensity 'clip_zscore', got intensity 'window'", id="window"),
        pytest.param({"intensity": "image_zscore", "intensity_std": 3.0}, "intensity_std apply only", id="image-zscore"),
        pytest.param({"intensity": "zscore", "intensity_mean": 1.0, "intensity_std": 3.0}, "intensity_mean and intensity_std apply only", id="zscore"),
        pytest.param({"intensity": "percentile"}, "preprocess.intensity", id="unknown"),
        pytest.param({"resample_separate_z": True}, "resample_separate_z needs spacing_mm", id="separate-z"),
        pytest.param({"resample_separate_z": 1}, "preprocess.resample_separate_z", id="separate-z-int"),
    ],
)  # fmt: skip
def test_intensity_statistics_and_separate_z_are_checked(preprocess: dict, expected: str) -> None:
    data = _tiny_dict()
    data["preprocess"].update(preprocess)
    with pytest.raises(ConfigError) as info:
        parse_config(yaml.safe_dump(data), "plan.yaml")
    assert expected in str(info.value)
    assert "preprocess" in str(info.value)


@pytest.mark.parametrize("mode", ["window", "zscore", "image_zscore"])
def test_intensity_modes_without_statistics_load(mode: str) -> None:
    data = _tiny_dict()
    data["preprocess"].update(intensity=mode, spacing_mm=[3.0, 1.0, 1.0], resample_separate_z=True)
    config = parse_config(yaml.safe_dump(data))
    assert config.preprocess.intensity == mode
    assert config.preprocess.resample_separate_z is True
    assert (config.preprocess.intensity_mean, config.preprocess.intensity_std) == (None, None)


def test_clip_zscore_with_statistics_round_trips() -> None:
    data = _tiny_dict()
    data["preprocess"].update(intensity="clip_zscore", intensity_mean=41.5, intensity_std=12.25)
    config = parse_config(yaml.safe_dump(data))
    assert (config.preprocess.intensity_mean, config.preprocess.intensity_std) == (41.5, 12.25)
    assert config.preprocess.resample_separate_z is False
    assert parse_config(config.to_yaml()) == config
