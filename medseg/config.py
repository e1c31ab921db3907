"""Typed experiment configuration, loaded from one YAML file per experiment.

Every section is a frozen pydantic model with ``extra="forbid"``: a mistyped key fails with a
:class:`~medseg.errors.ConfigError` naming the file and the key's path (``train.epoch``).
Choices are ``Literal`` values; config holds values, never code.

Per-axis tuples (``patch_size``, ``roi_size``) are in array order ``(slice, row, column)``,
in voxels.

Example:
    >>> from pathlib import Path
    >>> config = load_config(Path(__file__).parents[1] / "configs" / "tiny.yaml")
    >>> config.model.labels
    {1: 'tumour'}
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from medseg.errors import ConfigError

__all__ = [
    "DataConfig",
    "ExperimentConfig",
    "InferConfig",
    "LabelPostprocessConfig",
    "ModelConfig",
    "PostprocessConfig",
    "PreprocessConfig",
    "SeriesSelection",
    "TrackingConfig",
    "TrainConfig",
    "load_config",
    "parse_config",
]

#: Predicted label maps are uint8, so 255 foreground labels at most.
_MAX_LABELS = 255

PositiveInt = Annotated[StrictInt, Field(gt=0)]
#: A per-axis size in voxels, array order ``(slice, row, column)``.
Shape3 = tuple[PositiveInt, PositiveInt, PositiveInt]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DataConfig(_Section):
    """Where the training data is.

    Attributes:
        datalist: a Decathlon-style JSON file
            ``{"training": [{"image": ..., "label": ...}], "validation": [...]}`` whose paths
            are relative to the JSON file. A relative ``datalist`` in a YAML file is resolved
            against the YAML file's folder by :func:`load_config`. ``None`` when data paths
            come from the command line (e.g. ``medseg demo`` generates phantoms).
    """

    datalist: Path | None = None

    @field_serializer("datalist")
    def _path_as_str(self, value: Path | None) -> str | None:
        # model_dump() is logged and stored in checkpoints: primitives only.
        return None if value is None else str(value)


class PreprocessConfig(_Section):
    """CT intensity window, mapped linearly onto ``[0, 1]`` and clipped.

    Attributes:
        lower_hu: HU mapped to 0 (and everything below it).
        upper_hu: HU mapped to 1 (and everything above it).
    """

    lower_hu: StrictFloat
    upper_hu: StrictFloat

    @model_validator(mode="after")
    def _window_is_ordered(self) -> PreprocessConfig:
        if not (math.isfinite(self.lower_hu) and math.isfinite(self.upper_hu)):
            raise ValueError(f"window must be finite, got [{self.lower_hu}, {self.upper_hu}] HU")
        if self.upper_hu <= self.lower_hu:
            raise ValueError(
                f"upper_hu must be > lower_hu, got lower_hu={self.lower_hu}, "
                f"upper_hu={self.upper_hu}"
            )
        return self


class ModelConfig(_Section):
    """A MONAI 3D U-Net with one input channel and ``1 + len(labels)`` output channels.

    Attributes:
        name: the architecture; only ``"unet"``.
        channels: feature channels per level, e.g. ``(8, 16, 32, 64)``.
        strides: downsampling stride between levels; ``len(channels) - 1`` values.
        num_res_units: residual units per block (0 = plain convolutions).
        labels: label value -> structure name, values ``1..N`` without gaps; 0 is background
            and is implicit. Output channel ``c`` predicts label value ``c``.
    """

    name: Literal["unet"] = "unet"
    channels: tuple[PositiveInt, ...]
    strides: tuple[PositiveInt, ...]
    num_res_units: Annotated[StrictInt, Field(ge=0)] = 2
    labels: dict[StrictInt, str]

    @field_validator("labels")
    @classmethod
    def _labels_are_contiguous(cls, labels: dict[int, str]) -> dict[int, str]:
        if not labels:
            raise ValueError("at least one foreground label is needed, got {}")
        if len(labels) > _MAX_LABELS:
            raise ValueError(
                f"at most {_MAX_LABELS} labels fit a uint8 label map, got {len(labels)}"
            )
        expected = list(range(1, len(labels) + 1))
        if sorted(labels) != expected:
            raise ValueError(
                f"label values must be {expected} (0 is background), got {sorted(labels)}"
            )
        names = [name.strip() for name in labels.values()]
        if any(not name for name in names) or len(set(names)) != len(names):
            raise ValueError(
                f"label names must be non-empty and unique, got {list(labels.values())}"
            )
        return labels

    @model_validator(mode="after")
    def _levels_match(self) -> ModelConfig:
        if len(self.channels) < 2:
            raise ValueError(f"channels needs at least 2 levels, got {self.channels}")
        if len(self.strides) != len(self.channels) - 1:
            raise ValueError(
                f"strides needs len(channels) - 1 = {len(self.channels) - 1} values, "
                f"got {self.strides}"
            )
        return self

    @property
    def downsampling_factor(self) -> int:
        """Product of the strides: every patch/ROI size must be a multiple of it."""
        return math.prod(self.strides)


class TrainConfig(_Section):
    """The training loop.

    Attributes:
        epochs: passes over the training cases.
        patch_size: training patch in voxels, array order ``(slice, row, column)``.
        batch_size: patches per optimiser step.
        samples_per_case: patches drawn from each training case per epoch.
        foreground_fraction: probability that a patch is centred on a foreground voxel
            (the rest are centred anywhere), as MONAI's ``RandCropByPosNegLabel``.
        learning_rate: Adam learning rate.
        loss: ``"dice_ce"`` = MONAI ``DiceCELoss(to_onehot_y=True, softmax=True)``.
        val_every: validate every this many epochs (and always after the last one).
        device: ``"cpu"`` or ``"cuda"``.
        num_threads: torch intra-op threads.
    """

    epochs: PositiveInt
    patch_size: Shape3
    batch_size: PositiveInt = 2
    samples_per_case: PositiveInt = 4
    foreground_fraction: Annotated[StrictFloat, Field(ge=0.0, le=1.0)] = 0.5
    learning_rate: Annotated[StrictFloat, Field(gt=0.0)] = 1e-3
    loss: Literal["dice_ce"] = "dice_ce"
    val_every: PositiveInt = 1
    device: Literal["cpu", "cuda"] = "cpu"
    num_threads: PositiveInt = 2


class InferConfig(_Section):
    """Sliding-window inference (MONAI ``sliding_window_inference``).

    Attributes:
        roi_size: window in voxels, array order ``(slice, row, column)``.
        overlap: fraction of overlap between windows, in ``[0, 1)``.
        sw_batch_size: windows per forward pass.
        blend: how overlapping windows are combined.
    """

    roi_size: Shape3
    overlap: Annotated[StrictFloat, Field(ge=0.0, lt=1.0)] = 0.25
    sw_batch_size: PositiveInt = 2
    blend: Literal["gaussian", "constant"] = "gaussian"


class TrackingConfig(_Section):
    """MLflow tracking.

    Attributes:
        tracking_uri: MLflow tracking URI. ``None``: the environment variable
            ``MLFLOW_TRACKING_URI`` if set, else a local store ``sqlite:///mlflow.db`` (with
            artifacts under ``./mlruns``) in the working directory.
        experiment: MLflow experiment name.
        registered_model_name: register each trained model under this name (``None``: don't).
    """

    tracking_uri: str | None = None
    experiment: Annotated[str, Field(min_length=1)] = "medseg"
    registered_model_name: Annotated[str, Field(min_length=1)] | None = None


class SeriesSelection(_Section):
    """Which DICOM image series to load from a folder that holds several.

    ``medseg.io.discovery.select_series`` applies the filters in order (kind, modality,
    min_slices, localizer, descriptions), then ``prefer``, then ``require``. Only CT/MR image
    volumes are ever candidates; RT-STRUCT, RT plan/dose, SR and other images are not.

    Attributes:
        modalities: accepted Modality values.
        min_slices: fewest slices (frames) a series must have.
        exclude_localizers: drop series whose ImageType contains ``LOCALIZER`` or ``SCOUT``.
        include_description: keep only series whose SeriesDescription matches this regular
            expression (``re.search``; case-sensitive unless it starts with ``(?i)``).
        exclude_description: drop series whose SeriesDescription matches this expression.
        prefer: among the series left, keep only the best: ``"thinnest"`` slice spacing or
            ``"most_slices"``; ``None`` keeps them all.
        require: ``"exactly_one"``: more than one series left is an error that lists them;
            ``"first"``: take the first (by ``prefer``, then SeriesNumber, then UID).
    """

    modalities: tuple[Literal["CT", "MR"], ...] = ("CT", "MR")
    min_slices: PositiveInt = 1
    exclude_localizers: StrictBool = True
    include_description: str | None = None
    exclude_description: str | None = None
    prefer: Literal["thinnest", "most_slices"] | None = None
    require: Literal["exactly_one", "first"] = "exactly_one"

    @field_validator("modalities")
    @classmethod
    def _some_modalities(cls, modalities: tuple[str, ...]) -> tuple[str, ...]:
        if not modalities or len(set(modalities)) != len(modalities):
            raise ValueError(f"modalities must be non-empty and unique, got {list(modalities)}")
        return modalities

    @field_validator("include_description", "exclude_description")
    @classmethod
    def _is_a_regex(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from exc
        return pattern


class LabelPostprocessConfig(_Section):
    """Clean-up of one label's mask; the steps run in the order listed here.

    Attributes:
        min_component_volume_ml: remove connected components smaller than this volume (mL,
            from the grid's voxel volume, so the rule means the same at any resolution);
            0 keeps every component.
        keep_largest_component: then keep only the largest remaining component (for organs
            that are one piece; not for tumours, which may be several lesions).
        fill_holes: then fill enclosed background: ``"none"``; ``"3d"``: background not
            face-connected to the volume's border; ``"slice"``: the same in 2D in each slice
            (array axis 0, axial on an axial scan), which also closes tunnels that run across
            slices. Only background voxels are filled, never another label.
    """

    min_component_volume_ml: Annotated[StrictFloat, Field(ge=0.0, allow_inf_nan=False)] = 0.0
    keep_largest_component: StrictBool = False
    fill_holes: Literal["none", "3d", "slice"] = "none"

    @property
    def is_noop(self) -> bool:
        """True if this rule leaves every mask unchanged."""
        return (
            self.min_component_volume_ml == 0.0
            and not self.keep_largest_component
            and self.fill_holes == "none"
        )


class PostprocessConfig(_Section):
    """Per-label clean-up of predicted label maps (``medseg.postprocess.apply_postprocess``).

    The default is no post-processing, so configs without this section behave as before.

    Attributes:
        connectivity: neighbourhood that joins voxels into components: 6 (faces), 18 (and
            edges) or 26 (and corners).
        default: the rule for every label value not listed in ``labels``.
        labels: label value -> rule, for labels that need their own.
    """

    connectivity: Literal[6, 18, 26] = 26
    default: LabelPostprocessConfig = LabelPostprocessConfig()
    labels: dict[StrictInt, LabelPostprocessConfig] = Field(default_factory=dict)

    @field_validator("labels")
    @classmethod
    def _foreground_labels(
        cls, labels: dict[int, LabelPostprocessConfig]
    ) -> dict[int, LabelPostprocessConfig]:
        bad = sorted(value for value in labels if value < 1)
        if bad:
            raise ValueError(f"label values must be >= 1 (0 is background), got {bad}")
        return labels

    def rule_for(self, label: int) -> LabelPostprocessConfig:
        """The rule that applies to ``label``."""
        return self.labels.get(label, self.default)


class ExperimentConfig(_Section):
    """One experiment: everything needed to train a model and to apply it.

    The config is stored inside every checkpoint, so a model is always applied with the
    intensity window and label names it was trained with.
    """

    seed: StrictInt
    data: DataConfig = DataConfig()
    preprocess: PreprocessConfig
    model: ModelConfig
    train: TrainConfig
    infer: InferConfig
    tracking: TrackingConfig = TrackingConfig()
    postprocess: PostprocessConfig = PostprocessConfig()
    series_selection: SeriesSelection = SeriesSelection()

    @model_validator(mode="after")
    def _sizes_fit_the_network(self) -> ExperimentConfig:
        factor = self.model.downsampling_factor
        sizes = {"train.patch_size": self.train.patch_size, "infer.roi_size": self.infer.roi_size}
        for where, size in sizes.items():
            if any(s % factor for s in size):
                raise ValueError(
                    f"{where} must be a multiple of the product of model.strides ({factor}) "
                    f"in every axis, got {size}"
                )
        return self

    def to_yaml(self) -> str:
        """The resolved config as YAML (what is logged to MLflow); :func:`parse_config` reads it."""
        return yaml.safe_dump(_lists(self.model_dump()), sort_keys=False, default_flow_style=None)


def _lists(value: Any) -> Any:
    """Tuples -> lists, recursively (YAML's safe dumper has no tuples)."""
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_lists(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------
# loading


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-3`` as a float (YAML 1.2) and refuses duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# PyYAML follows YAML 1.1, where a float needs a dot: "1e-3" would be the string "1e-3".
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _format_errors(error: ValidationError, source: str) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "<top level>"
        if item["type"] == "extra_forbidden":
            lines.append(f"  {where}: unknown key")
        elif item["type"] == "missing" and item["loc"] and isinstance(item["loc"][-1], int):
            parent = ".".join(str(part) for part in item["loc"][:-1])
            lines.append(f"  {parent}: too few values, got {item['input']!r}")
        elif item["type"] == "missing":
            lines.append(f"  {where}: required key is missing")
        else:
            message = item["msg"].removeprefix("Value error, ")
            lines.append(f"  {where}: {message} (got {item['input']!r})")
    return f"{source}: invalid config:\n" + "\n".join(lines)


def parse_config(text: str, source: str = "<string>") -> ExperimentConfig:
    """Parse YAML text into an :class:`ExperimentConfig`.

    Args:
        text: the YAML document.
        source: what to name in error messages (usually the file path).

    Raises:
        ConfigError: on invalid YAML, a duplicate or unknown key, a wrong type or value.
    """
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(data).__name__}")
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from exc


def load_config(path: Path | str) -> ExperimentConfig:
    """Load an experiment config from a YAML file.

    A relative ``data.datalist`` is resolved against the YAML file's folder, so a config works
    from any working directory.

    Raises:
        ConfigError: if the file cannot be read, or on any problem :func:`parse_config` finds.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror or exc}") from exc
    config = parse_config(text, source=str(path))
    datalist = config.data.datalist
    if datalist is not None and not datalist.is_absolute():
        resolved = (path.parent / datalist).resolve()
        config = config.model_copy(update={"data": DataConfig(datalist=resolved)})
    return config
