"""Experiment tracking with MLflow: the only module that imports ``mlflow``.

``mlflow`` is imported inside functions, so importing this module stays cheap.

Where runs go (:func:`resolve_tracking_uri`):

1. ``tracking.tracking_uri`` from the config, if set;
2. else the environment variable ``MLFLOW_TRACKING_URI``;
3. else a local store in the working directory: ``sqlite:///<cwd>/mlflow.db``, with artifacts
   in ``<cwd>/mlruns`` (MLflow 3's own default; its plain-file store is deprecated). Browse it
   with ``mlflow ui --backend-store-uri sqlite:///mlflow.db`` run in that directory.

For a ``sqlite:`` store, a new experiment keeps its artifacts in ``mlruns`` next to the
database file; a tracking server decides itself (``--default-artifact-root``).

A trained model is logged three ways, so each of these URIs works with :func:`resolve_model`:

* ``runs:/<run_id>/checkpoints/best.pt``: the checkpoint as a plain run artifact;
* ``runs:/<run_id>/model``: an MLflow (pyfunc) model whose artifact is the checkpoint;
* ``models:/<name>/<version>``: that model, registered when ``registered_model_name`` is set.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import socket
import subprocess
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import yaml

import medseg
from medseg.config import ExperimentConfig
from medseg.errors import ConfigError, ModelError

__all__ = [
    "CHECKPOINT_ARTIFACT_DIR",
    "LOCAL_STORE_DB",
    "MODEL_NAME",
    "Tracker",
    "flatten_params",
    "resolve_model",
    "resolve_tracking_uri",
]

#: Database file of the default local store, in the working directory.
LOCAL_STORE_DB = "mlflow.db"
#: Artifact folder next to a local ``sqlite:`` database.
LOCAL_ARTIFACT_DIR = "mlruns"
#: Run artifact folder holding checkpoint files.
CHECKPOINT_ARTIFACT_DIR = "checkpoints"
#: Name of the logged MLflow model within a run (``runs:/<run_id>/model``).
MODEL_NAME = "model"
#: Key of the checkpoint among the pyfunc model's artifacts.
_CHECKPOINT_KEY = "checkpoint"

# Generated "models from code" file: the pyfunc model holds no pickle, only this import.
_MODEL_CODE = "from medseg.tracking import _set_pyfunc_model\n\n_set_pyfunc_model()\n"


def resolve_tracking_uri(configured: str | None = None, workdir: Path | None = None) -> str:
    """The tracking URI to use: ``configured``, else ``$MLFLOW_TRACKING_URI``, else local.

    Args:
        configured: ``tracking.tracking_uri`` from the config.
        workdir: folder of the default local store (default: the working directory).

    Returns:
        A URI, e.g. ``http://127.0.0.1:5000`` or ``sqlite:////abs/path/mlflow.db``.
    """
    if configured:
        return configured
    from_env = os.environ.get("MLFLOW_TRACKING_URI")
    if from_env:
        return from_env
    folder = (workdir or Path.cwd()).resolve()
    return f"sqlite:///{folder / LOCAL_STORE_DB}"


def flatten_params(config: ExperimentConfig) -> dict[str, str]:
    """The config as flat MLflow params, e.g. ``{"train.epochs": "40", "model.labels.1": ...}``.

    Credentials in ``tracking.tracking_uri`` are masked.
    """
    flat: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        elif isinstance(value, (tuple, list)):
            flat[prefix] = ",".join(str(v) for v in value)
        else:
            flat[prefix] = str(value)

    walk("", _redacted(config).model_dump())
    return flat


class Tracker:
    """An MLflow run for one training, used as a context manager.

    On entry it starts a run in ``config.tracking.experiment`` (creating the experiment if
    needed), logs the flattened config as params and the resolved config as
    ``config/config.yaml``. On exit it ends the run (status ``FAILED`` on an exception) and
    restores MLflow's previous tracking URI.

    Example::

        with Tracker(config) as tracker:
            result = train(config, train_cases, val_cases, out_dir, tracker)

    Args:
        config: the experiment config (``config.tracking`` says where to log).
        run_name: a readable run name (MLflow invents one when ``None``).
        workdir: folder of the default local store (default: the working directory).

    Raises:
        ConfigError: on entry, if the tracking store cannot be reached or refuses the run.
    """

    def __init__(
        self,
        config: ExperimentConfig,
        *,
        run_name: str | None = None,
        workdir: Path | None = None,
    ) -> None:
        self._config = config
        self._run_name = run_name
        self._tracking_uri = resolve_tracking_uri(config.tracking.tracking_uri, workdir)
        self._run_id: str | None = None
        self._uri_scope: contextlib.AbstractContextManager[None] | None = None

    @property
    def tracking_uri(self) -> str:
        """Where this tracker logs."""
        return self._tracking_uri

    @property
    def run_id(self) -> str:
        """Id of the run (available from entering the ``with`` block on).

        Raises:
            RuntimeError: before the run was started.
        """
        if self._run_id is None:
            raise RuntimeError("Tracker.run_id is available once its `with` block is entered")
        return self._run_id

    def __enter__(self) -> Self:
        import mlflow
        from mlflow.exceptions import MlflowException

        self._uri_scope = _using_tracking_uri(self._tracking_uri)
        self._uri_scope.__enter__()
        try:
            experiment_id = self._experiment_id()
            run = mlflow.start_run(experiment_id=experiment_id, run_name=self._run_name)
            self._run_id = run.info.run_id
            mlflow.set_tags(
                {
                    "medseg_version": medseg.__version__,
                    "host": socket.gethostname(),
                    "git_commit": _git_commit() or "unknown",
                }
            )
            mlflow.log_params(flatten_params(self._config))
            mlflow.log_text(_redacted(self._config).to_yaml(), "config/config.yaml")
        except (MlflowException, OSError) as exc:
            self._close("FAILED")
            raise ConfigError(
                f"cannot start an MLflow run in experiment {self._config.tracking.experiment!r} "
                f"at {_redact_uri(self._tracking_uri)}: {exc}"
            ) from exc
        except BaseException:
            self._close("FAILED")
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            status = "FINISHED"
        elif issubclass(exc_type, KeyboardInterrupt):
            status = "KILLED"
        else:
            status = "FAILED"
        self._close(status)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Record metric values at ``step`` (the epoch)."""
        import mlflow

        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Tag the run (e.g. ``dataset_fingerprint``); no patient identifiers."""
        import mlflow

        mlflow.set_tags(dict(tags))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Store a file with the run, under ``artifact_path`` (a folder) if given."""
        import mlflow

        mlflow.log_artifact(str(path), artifact_path)

    def log_model(self, checkpoint_path: Path) -> str:
        """Log a checkpoint as a run artifact and as an MLflow model; register it if configured.

        The checkpoint goes to ``checkpoints/<file name>``; the model, named ``model``, is a
        pyfunc model whose only artifact is the checkpoint (its ``predict`` takes a float
        array in HU, ``(slice, row, column)``, and returns uint8 labels). With
        ``tracking.registered_model_name`` set, a new version of that registered model is
        created.

        Returns:
            ``runs:/<run_id>/model``.
        """
        import mlflow
        from mlflow.models import ModelSignature
        from mlflow.types.schema import Schema, TensorSpec

        self.log_artifact(checkpoint_path, CHECKPOINT_ARTIFACT_DIR)
        signature = ModelSignature(
            inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1, -1))]),
            outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1))]),
        )
        with tempfile.TemporaryDirectory(prefix="medseg-model-") as tmp:
            code_path = Path(tmp) / "medseg_model.py"
            code_path.write_text(_MODEL_CODE, encoding="utf-8")
            with warnings.catch_warnings():
                # The signature is given explicitly; an input example would cost an inference.
                warnings.filterwarnings("ignore", message=".*input example was not provided")
                mlflow.pyfunc.log_model(
                    name=MODEL_NAME,
                    python_model=str(code_path),
                    artifacts={_CHECKPOINT_KEY: str(checkpoint_path)},
                    signature=signature,
                    pip_requirements=_requirements(),
                    registered_model_name=self._config.tracking.registered_model_name,
                )
        return f"runs:/{self.run_id}/{MODEL_NAME}"

    # -- internals ---------------------------------------------------------------------------

    def _experiment_id(self) -> str:
        import mlflow

        name = self._config.tracking.experiment
        experiment = mlflow.get_experiment_by_name(name)
        if experiment is not None:
            return str(experiment.experiment_id)
        artifact_location = None
        if self._tracking_uri.startswith("sqlite:///"):
            database = Path(self._tracking_uri.removeprefix("sqlite:///"))
            artifact_location = (database.parent / LOCAL_ARTIFACT_DIR).resolve().as_uri()
        return str(mlflow.create_experiment(name, artifact_location=artifact_location))

    def _close(self, status: str) -> None:
        import mlflow

        try:
            if mlflow.active_run() is not None:
                mlflow.end_run(status=status)
        finally:
            if self._uri_scope is not None:
                self._uri_scope.__exit__(None, None, None)
                self._uri_scope = None


def resolve_model(
    uri_or_path: str | Path,
    *,
    tracking_uri: str | None = None,
    dst_dir: Path | None = None,
) -> Path:
    """A local checkpoint file for a path, ``runs:/…`` or ``models:/…`` URI.

    Accepted forms:

    * a checkpoint file path, or a folder holding exactly one ``.pt`` file or an MLflow model;
    * ``runs:/<run_id>/model`` (the logged model) or ``runs:/<run_id>/checkpoints/best.pt``;
    * ``models:/<name>/<version>`` (also ``models:/<name>@<alias>``, ``models:/<model_id>``).

    Args:
        uri_or_path: what to resolve.
        tracking_uri: store to download from; ``None``: as :func:`resolve_tracking_uri`.
        dst_dir: where downloads go (default: a temporary folder MLflow creates; a model in a
            local store may be returned in place, so treat the result as read-only).

    Returns:
        Path of the checkpoint file (load it with :func:`medseg.model.load_checkpoint`).

    Raises:
        ModelError: if the path does not exist, the URI cannot be downloaded, or no single
            checkpoint is found in what it points to.
    """
    text = str(uri_or_path)
    if text.startswith(("runs:/", "models:/")):
        import mlflow.artifacts
        from mlflow.exceptions import MlflowException

        uri = resolve_tracking_uri(tracking_uri)
        if dst_dir is not None:
            Path(dst_dir).mkdir(parents=True, exist_ok=True)
        # MLflow 3.17 resolves a run's logged model (runs:/<id>/model -> models:/<model_id>)
        # with the global tracking URI, ignoring the one passed in; so set it meanwhile.
        try:
            with _using_tracking_uri(uri):
                downloaded = mlflow.artifacts.download_artifacts(
                    artifact_uri=text,
                    dst_path=None if dst_dir is None else str(dst_dir),
                    tracking_uri=uri,
                    registry_uri=uri,
                )
        except (MlflowException, OSError) as exc:
            raise ModelError(f"{text}: cannot download from {_redact_uri(uri)}: {exc}") from exc
        local = Path(downloaded)
    else:
        local = Path(text)
        if not local.exists():
            raise ModelError(f"{text}: no such checkpoint file or folder")
    return _find_checkpoint(local, text)


# ---------------------------------------------------------------------------------------------
# helpers


@contextlib.contextmanager
def _using_tracking_uri(uri: str) -> Iterator[None]:
    """Set MLflow's global tracking URI, then restore it and ``$MLFLOW_TRACKING_URI``."""
    import mlflow
    from mlflow.tracking._tracking_service import utils as tracking_utils

    previous_env = os.environ.get("MLFLOW_TRACKING_URI")
    previous_uri = mlflow.get_tracking_uri() if tracking_utils.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous_uri)  # type: ignore[arg-type]  # None: unset
        # set_tracking_uri writes (or clears) the environment variable too; put it back as it was.
        if previous_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous_env


def _git_commit() -> str | None:
    """Commit of the source checkout medseg runs from, or ``None`` outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(medseg.__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _find_checkpoint(local: Path, what: str) -> Path:
    if local.is_file():
        return local
    mlmodel = local / "MLmodel"
    if mlmodel.is_file():
        try:
            meta = yaml.safe_load(mlmodel.read_text(encoding="utf-8"))
            relative = meta["flavors"]["python_function"]["artifacts"][_CHECKPOINT_KEY]["path"]
        except (yaml.YAMLError, KeyError, TypeError) as exc:
            raise ModelError(f"{what}: an MLflow model without a medseg checkpoint") from exc
        checkpoint = local / relative
        if not checkpoint.is_file():
            raise ModelError(f"{what}: checkpoint {relative} missing from the MLflow model")
        return checkpoint
    candidates = sorted(local.glob("*.pt"))
    if len(candidates) != 1:
        names = [c.name for c in candidates]
        raise ModelError(f"{what}: expected exactly one .pt checkpoint in the folder, got {names}")
    return candidates[0]


def _redact_uri(uri: str) -> str:
    """``http://user:secret@host`` -> ``http://***@host``."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


def _redacted(config: ExperimentConfig) -> ExperimentConfig:
    uri = config.tracking.tracking_uri
    if uri is None or _redact_uri(uri) == uri:
        return config
    tracking = config.tracking.model_copy(update={"tracking_uri": _redact_uri(uri)})
    return config.model_copy(update={"tracking": tracking})


def _requirements() -> list[str]:
    pins = [f"medseg=={medseg.__version__}"]
    for package in ("torch", "monai", "numpy"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            pins.append(f"{package}=={importlib.metadata.version(package)}")
    return pins


def _set_pyfunc_model() -> None:
    """Define and register the pyfunc model; run by the generated models-from-code file."""
    import mlflow.models
    from mlflow.pyfunc import PythonModel

    class MedsegModel(PythonModel):  # type: ignore[misc]
        """Segments a CT array in HU, ``(slice, row, column)``, with a medseg checkpoint.

        The array carries no spacing: it must already be on the grid spacing the model was
        trained on.
        """

        def load_context(self, context: Any) -> None:
            from medseg.model import load_checkpoint

            self._model = load_checkpoint(Path(context.artifacts[_CHECKPOINT_KEY]))

        def predict(self, context: Any, model_input: np.ndarray, params: Any = None) -> np.ndarray:
            from medseg.geometry import Geometry
            from medseg.infer import predict
            from medseg.volume import Volume

            array = np.asarray(model_input, dtype=np.float32)
            shape = array.shape
            grid = Geometry(shape, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))  # type: ignore[arg-type]
            return np.asarray(predict(self._model, Volume(array, grid)).array)

    mlflow.models.set_model(MedsegModel())
