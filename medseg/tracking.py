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
* ``runs:/<run_id>/model``: an MLflow model in the ``mlflow.pytorch`` flavour (signature,
  input example, pip requirements) that carries the checkpoint as an extra file;
* ``models:/<name>/<version>``: that model, registered when ``registered_model_name`` is set.

``medseg train --folds all`` also logs its k folds as one model (:meth:`Tracker.log_ensemble`):
the parent run ``<experiment>-folds`` holds, as ``model``, the folds' :class:`FoldEnsemble`
with each fold's checkpoint as the extra file ``fold_K.pt``; the fold runs are its nested
children, each with its own (unregistered) model. :func:`resolve_model` returns such a model
as its folder, and :func:`model_checkpoints` lists the fold checkpoints in it.

Security: ``mlflow.pytorch.load_model`` unpickles the network, so use it only on stores you
trust. medseg itself never does: :func:`resolve_model` returns the checkpoint the model
carries, and :func:`medseg.model.load_checkpoint` reads it with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import re
import shutil
import socket
import subprocess
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import urlsplit

import numpy as np
import yaml

import medseg
from medseg.config import ExperimentConfig
from medseg.errors import ConfigError, ModelError
from medseg.privacy import redact_credentials

if TYPE_CHECKING:  # loads torch
    from medseg.model import LoadedModel

__all__ = [
    "CHECKPOINT_ARTIFACT_DIR",
    "LOCAL_STORE_DB",
    "MODEL_NAME",
    "Tracker",
    "flatten_params",
    "model_checkpoints",
    "resolve_model",
    "resolve_tracking_uri",
]

# MLflow 3 reports usage to its vendor's server unless told not to; hospital networks and
# patient data call for no outbound traffic the user did not configure. Set the variable to
# "false" before importing medseg to allow it.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

#: Database file of the default local store, in the working directory.
LOCAL_STORE_DB = "mlflow.db"
#: Artifact folder next to a local ``sqlite:`` database.
LOCAL_ARTIFACT_DIR = "mlruns"
#: Run artifact folder holding checkpoint files.
CHECKPOINT_ARTIFACT_DIR = "checkpoints"
#: Name of the logged MLflow model within a run (``runs:/<run_id>/model``).
MODEL_NAME = "model"
#: Key of the checkpoint among the artifacts of models logged by medseg 0.1 (pyfunc flavour).
_CHECKPOINT_KEY = "checkpoint"
#: File name of fold K's checkpoint inside a logged ensemble model.
_FOLD_CHECKPOINT = "fold_{k}.pt"
_FOLD_CHECKPOINT_PATTERN = re.compile(r"fold_(\d+)\.pt")


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
    """The config as flat MLflow params, e.g. ``{"train.epochs": "40", "model.labels.1": "GTV",
    "model.labels.1.type": "GTV", ...}``.

    Credentials in ``tracking.tracking_uri`` are masked.
    """
    flat: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        elif (
            isinstance(value, (tuple, list))
            and value
            and all(isinstance(v, Mapping) and "label" in v for v in value)
        ):  # structures: model.labels.<value> = name, .type, .color, ... (unset ones left out)
            for item in value:
                flat[f"{prefix}.{item['label']}"] = str(item["name"])
                walk(
                    f"{prefix}.{item['label']}",
                    {k: v for k, v in item.items() if k not in ("label", "name") and v is not None},
                )
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
        parent_run_id: start the run as a nested child of this (active) run, as the fold
            runs of ``--folds all`` are children of their ensemble's run.
        register: whether :meth:`log_model` registers the model under
            ``tracking.registered_model_name`` (the folds of an ensemble are not registered).

    Raises:
        ConfigError: on entry, if the tracking store cannot be reached or refuses the run.
    """

    def __init__(
        self,
        config: ExperimentConfig,
        *,
        run_name: str | None = None,
        workdir: Path | None = None,
        parent_run_id: str | None = None,
        register: bool = True,
    ) -> None:
        self._config = config
        self._run_name = run_name
        self._parent_run_id = parent_run_id
        self._register = register
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
            run = mlflow.start_run(
                experiment_id=experiment_id,
                run_name=self._run_name,
                nested=self._parent_run_id is not None,
                parent_run_id=self._parent_run_id,
            )
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
            _log_plan(self._config)
        except (MlflowException, OSError) as exc:
            self._close("FAILED")
            raise ConfigError(
                f"cannot start an MLflow run in experiment {self._config.tracking.experiment!r} "
                f"at {redact_credentials(self._tracking_uri)}: {redact_credentials(str(exc))}"
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

        The checkpoint goes to ``checkpoints/<file name>``. The model, named ``model``, is the
        network in the ``mlflow.pytorch`` flavour: ``mlflow.pytorch.load_model`` gives a
        ``torch.nn.Module`` that maps ``(batch, 1, slice, row, column)`` float32 intensities,
        already preprocessed as the config says (window to ``[0, 1]``, model spacing), to
        ``(batch, classes, slice, row, column)`` logits; each spatial size must be a
        multiple of ``model.downsampling_factor`` along that axis. The signature says so, the
        input example is a small zero-filled batch of that kind, and the pip requirements pin
        medseg,
        torch, MONAI and numpy. The checkpoint (weights only, with its config) travels with
        the model as an extra file, and the MLmodel metadata lists the structures
        (``metadata["structures"]``). With ``tracking.registered_model_name`` set, a new
        version of that registered model is created.

        Returns:
            ``runs:/<run_id>/model``.
        """
        from medseg.model import load_checkpoint

        self.log_artifact(checkpoint_path, CHECKPOINT_ARTIFACT_DIR)
        registered = self._config.tracking.registered_model_name if self._register else None
        return self._log_loaded(
            load_checkpoint(checkpoint_path), [Path(checkpoint_path)], {}, registered
        )

    def log_ensemble(self, checkpoints: Sequence[Path], fold_run_ids: Sequence[str]) -> str:
        """Log k fold checkpoints as ONE MLflow model, named ``model``; register it if configured.

        As :meth:`log_model`, but the network is the folds' :class:`medseg.model.FoldEnsemble`
        (its output: the log of the mean of the folds' softmax, ``(batch, classes, slice, row,
        column)``, k times one network's time), and each fold's checkpoint travels with it as
        the extra file ``fold_K.pt``. The MLmodel metadata adds ``folds`` (k) and
        ``fold_run_ids``. With ``tracking.registered_model_name`` set, a new version of it is
        created.

        Args:
            checkpoints: each fold's best checkpoint, in fold order.
            fold_run_ids: each fold's run id, in the same order.

        Returns:
            ``runs:/<run_id>/model``.

        Raises:
            ModelError: if the folds do not make one ensemble (see
                :func:`medseg.model.load_ensemble`).
        """
        from medseg.model import load_ensemble

        ensemble = load_ensemble(checkpoints)
        with tempfile.TemporaryDirectory(prefix="medseg-ensemble-") as folder:
            renamed = [Path(folder) / _FOLD_CHECKPOINT.format(k=k) for k in range(len(checkpoints))]
            for source, copy in zip(checkpoints, renamed, strict=True):
                shutil.copyfile(source, copy)
            metadata = {"folds": len(renamed), "fold_run_ids": list(fold_run_ids)}
            registered = self._config.tracking.registered_model_name
            return self._log_loaded(ensemble, renamed, metadata, registered)

    def _log_loaded(
        self,
        loaded: LoadedModel,
        checkpoints: Sequence[Path],
        metadata: Mapping[str, Any],
        registered_model_name: str | None,
    ) -> str:
        """Log ``loaded``'s network as the run's MLflow model, carrying ``checkpoints``."""
        import mlflow.pytorch
        from mlflow.models import ModelSignature
        from mlflow.types.schema import Schema, TensorSpec

        n_classes = 1 + len(loaded.label_names)
        # two of the coarsest level's voxels along each axis: the smallest input that fits
        size = tuple(2 * f for f in self._config.model.downsampling_factor)
        example = np.zeros((1, 1, *size), dtype=np.float32)
        signature = ModelSignature(
            inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 1, -1, -1, -1))]),
            outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, n_classes, -1, -1, -1))]),
        )
        with warnings.catch_warnings():
            # MLflow warns that pickled models depend on the code version; the requirements
            # pin it.
            warnings.filterwarnings("ignore", category=UserWarning, module="mlflow")
            mlflow.pytorch.log_model(
                loaded.network.cpu().eval(),
                name=MODEL_NAME,
                signature=signature,
                input_example=example,
                pip_requirements=_requirements(),
                extra_files=[str(p) for p in checkpoints],
                registered_model_name=registered_model_name,
                # the structures (name, interpreted type, colour, codes) in the MLmodel
                # file, so a registry user sees what each output channel is
                metadata={
                    "structures": [s.model_dump(mode="json") for s in loaded.structures],
                    **metadata,
                },
                # pt2 (torch.export) would fix every dimension to the input example's
                serialization_format="pickle",
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
    """A local checkpoint file, or k-fold ensemble folder, for a path, ``runs:/…`` or
    ``models:/…`` URI.

    Accepted forms:

    * a checkpoint file path, or a folder holding exactly one ``.pt`` file or an MLflow model;
    * a k-fold ensemble folder: the output of ``medseg train --folds all`` (``splits.json``
      and ``fold_K/best.pt`` for every fold it lists; see
      :func:`medseg.training.crossval.fold_checkpoints`), or an MLflow model holding several
      checkpoints (``fold_K.pt``, as :meth:`Tracker.log_ensemble` logs one);
    * ``runs:/<run_id>/model`` (the logged model) or ``runs:/<run_id>/checkpoints/best.pt``;
    * ``models:/<name>/<version>`` (also ``models:/<name>@<alias>``, ``models:/<model_id>``).

    A folder is read in this order: an ``MLmodel`` file makes it an MLflow model, else a
    ``splits.json`` a cross-validation folder, else it must hold exactly one ``.pt`` file.

    Args:
        uri_or_path: what to resolve.
        tracking_uri: store to download from; ``None``: as :func:`resolve_tracking_uri`.
        dst_dir: where downloads go (default: a temporary folder MLflow creates; a model in a
            local store may be returned in place, so treat the result as read-only).

    Returns:
        Path of the checkpoint file (load it with :func:`medseg.model.load_checkpoint`), or
        of the ensemble's folder (:func:`model_checkpoints` lists its folds' checkpoints).

    Raises:
        ModelError: if the path does not exist, the URI cannot be downloaded, no single
            checkpoint is found in what it points to, or an ensemble folder is incomplete.
    """
    text = str(uri_or_path)
    if text.startswith(("runs:/", "models:/")):
        import mlflow.artifacts
        from mlflow.exceptions import MlflowException

        uri = resolve_tracking_uri(tracking_uri)
        _require_reachable_store(text, uri)
        if dst_dir is not None:
            Path(dst_dir).mkdir(parents=True, exist_ok=True)
        # MLflow 3.17 resolves a run's logged model (runs:/<id>/model -> models:/<model_id>)
        # with the global tracking URI, ignoring the one passed in; so set it meanwhile.
        try:
            with _using_tracking_uri(uri), _bounded_http():
                downloaded = mlflow.artifacts.download_artifacts(
                    artifact_uri=text,
                    dst_path=None if dst_dir is None else str(dst_dir),
                    tracking_uri=uri,
                    registry_uri=uri,
                )
        except (MlflowException, OSError) as exc:
            raise ModelError(
                redact_credentials(f"{text}: cannot download from {uri}: {exc}")
            ) from exc
        local = Path(downloaded)
    else:
        local = Path(text)
        if not local.exists():
            raise ModelError(f"{text}: no such checkpoint file or folder")
    found = _find_checkpoints(local, text)
    return found[0] if len(found) == 1 else local


def model_checkpoints(path: Path) -> tuple[Path, ...]:
    """The checkpoint files of a model :func:`resolve_model` returned: itself for a file, the
    folds' checkpoints in fold order for an ensemble folder.

    Raises:
        ModelError: as :func:`resolve_model` for a folder.
    """
    path = Path(path)
    return (path,) if path.is_file() else _find_checkpoints(path, str(path))


# ---------------------------------------------------------------------------------------------
# helpers


@contextlib.contextmanager
def _using_tracking_uri(uri: str) -> Iterator[None]:
    """Set MLflow's global tracking URI, then restore it and ``$MLFLOW_TRACKING_URI``.

    The URI restored is MLflow's own process-wide value (``None`` when only the environment
    variable set it, as in MLflow's private ``_use_tracking_uri``): restoring the resolved URI
    would pin the variable's value for the rest of the process, and later ``runs:/`` loads
    against another store would fail with "Run not found".
    """
    import mlflow
    from mlflow.tracking._tracking_service import utils as tracking_utils

    previous_env = os.environ.get("MLFLOW_TRACKING_URI")
    previous_uri = tracking_utils._tracking_uri
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


def _is_folds_folder(local: Path) -> bool:
    from medseg.training.crossval import SPLIT_FILE

    return local.is_dir() and (local / SPLIT_FILE).is_file()


def _find_checkpoints(local: Path, what: str) -> tuple[Path, ...]:
    """The checkpoint(s) of ``local``: a file, an MLflow model, a folds folder or a folder
    with one ``.pt``."""
    if local.is_file():
        return (local,)
    mlmodel = local / "MLmodel"
    if mlmodel.is_file():
        try:
            flavors = yaml.safe_load(mlmodel.read_text(encoding="utf-8"))["flavors"]
            if "pytorch" in flavors:  # the checkpoint(s) are extra files of the model
                paths = [entry["path"] for entry in flavors["pytorch"].get("extra_files") or []]
                relative = [str(p) for p in paths if str(p).endswith(".pt")]
                if not relative:
                    raise ModelError(f"{what}: an MLflow model without a medseg checkpoint")
                if len(relative) > 1:  # an ensemble: fold_K.pt, in fold order
                    relative = _in_fold_order(relative, what)
            else:  # models logged before 2026-11: pyfunc, the checkpoint its artifact
                relative = [flavors["python_function"]["artifacts"][_CHECKPOINT_KEY]["path"]]
        except (yaml.YAMLError, KeyError, TypeError) as exc:
            raise ModelError(f"{what}: an MLflow model without a medseg checkpoint") from exc
        for name in relative:
            if not (local / name).is_file():
                raise ModelError(f"{what}: checkpoint {name} missing from the MLflow model")
        return tuple(local / name for name in relative)
    if _is_folds_folder(local):
        from medseg.training.crossval import fold_checkpoints

        return fold_checkpoints(local)
    candidates = sorted(local.glob("*.pt"))
    if len(candidates) != 1:
        names = [c.name for c in candidates]
        raise ModelError(
            f"{what}: expected exactly one .pt checkpoint in the folder (or splits.json and "
            f"fold_K/ of medseg train --folds all, or an MLflow model), got {names}"
        )
    return (candidates[0],)


def _in_fold_order(names: Sequence[str], what: str) -> list[str]:
    folds = {}
    for name in names:
        match = _FOLD_CHECKPOINT_PATTERN.fullmatch(Path(name).name)
        if match is None:
            raise ModelError(f"{what}: MLflow model checkpoint {name} is not named fold_K.pt")
        folds[int(match.group(1))] = name
    if sorted(folds) != list(range(len(folds))):
        raise ModelError(f"{what}: MLflow model folds {sorted(folds)} are not 0..{len(folds) - 1}")
    return [folds[k] for k in range(len(folds))]


#: Seconds one HTTP request to a tracking server may take, and how often MLflow retries,
#: unless ``MLFLOW_HTTP_REQUEST_TIMEOUT`` / ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` say otherwise
#: (MLflow's own defaults, 120 s and 7 retries with back-off, let an unreachable server
#: take over four minutes to fail).
HTTP_TIMEOUT_S = 15
HTTP_MAX_RETRIES = 1


def _require_reachable_store(model: str, uri: str) -> None:
    """Fail fast, and create nothing, when the store a model URI names is not there: a local
    SQLite file that does not exist (MLflow would create an empty store in its place), or a
    tracking server that does not answer within :data:`HTTP_TIMEOUT_S`."""
    parts = urlsplit(uri)
    if parts.scheme == "sqlite":
        db = Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None
        if db is not None and str(db) not in ("", ":memory:") and not db.is_file():
            raise ModelError(
                f"{model}: no MLflow store at {db} (set MLFLOW_TRACKING_URI, or run from the "
                "folder that holds mlflow.db)"
            )
    elif parts.scheme in ("http", "https"):
        timeout = float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", HTTP_TIMEOUT_S))
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise ModelError(redact_credentials(f"{model}: tracking URI {uri}: {exc}")) from exc
        try:
            with socket.create_connection((parts.hostname or "", port), timeout=timeout):
                pass
        except OSError as exc:
            raise ModelError(
                redact_credentials(
                    f"{model}: the MLflow tracking server {uri} does not answer "
                    f"({exc.strerror or exc}; waited at most {timeout:g} s)"
                )
            ) from exc
    elif parts.scheme in ("", "file"):
        root = Path(parts.path if parts.scheme == "file" else uri)
        if not root.is_dir():
            raise ModelError(f"{model}: no MLflow store at {root}")


@contextlib.contextmanager
def _bounded_http() -> Iterator[None]:
    """MLflow's HTTP timeout and retries bounded for this call (unless the user set them)."""
    names = {
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(HTTP_TIMEOUT_S),
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(HTTP_MAX_RETRIES),
    }
    added = [name for name in names if name not in os.environ]
    for name in added:
        os.environ[name] = names[name]
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def _log_plan(config: ExperimentConfig) -> None:
    """A planned experiment's YAML (with its comments) and fingerprint, as ``plan/`` artifacts
    of the active run, and tags saying it was planned."""
    import mlflow

    plan = config.plan
    if plan is None:
        return
    mlflow.set_tags({"planned_by": plan.generated_by, "plan_device": plan.device})
    for path in (plan.source, plan.fingerprint):
        if path is not None and Path(path).is_file():
            mlflow.log_artifact(str(path), "plan")


def _redacted(config: ExperimentConfig) -> ExperimentConfig:
    uri = config.tracking.tracking_uri
    if uri is None or redact_credentials(uri) == uri:
        return config
    tracking = config.tracking.model_copy(update={"tracking_uri": redact_credentials(uri)})
    return config.model_copy(update={"tracking": tracking})


def _requirements() -> list[str]:
    pins = [f"medseg=={medseg.__version__}"]
    for package in ("torch", "monai", "numpy"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            pins.append(f"{package}=={importlib.metadata.version(package)}")
    return pins
