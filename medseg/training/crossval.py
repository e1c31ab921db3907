"""k-fold cross-validation: ``medseg train CONFIG --fold K`` and ``--folds all``.

The folds are drawn from ``config.seed`` over the training cases (a datalist's ``training``
list, or the patients of a DICOM + RT-STRUCT ``data.dicom_root``)
(:func:`medseg.training.splits.make_folds`) and saved as ``splits.json`` in the output folder; a
saved split file is reused, so every fold of a study trains on the same partition. Each fold
trains into ``fold_K/`` as its own MLflow run (``<experiment>-fold<K>``) with the split file
as an artifact.

With ``--folds all`` the fold runs are nested under one parent run (``<experiment>-folds``),
and once every fold has finished the parent logs the k folds as ONE MLflow model, their
:class:`~medseg.model.FoldEnsemble` (``runs:/<parent>/model``), registered under
``tracking.registered_model_name`` when that is set (the fold models then are not
registered, so every version of the registered model is an ensemble). The output folder
itself is that ensemble too (:func:`fold_checkpoints`): ``medseg predict --model OUT``.
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from medseg.config import ExperimentConfig
from medseg.errors import ConfigError, ModelError
from medseg.io.files import claim_output_dir
from medseg.privacy import redact
from medseg.training import data, datasets, splits

if TYPE_CHECKING:  # loads torch
    from medseg.training.train import TrainResult

__all__ = ["FOLD_DIR", "SPLIT_FILE", "FoldsResult", "fold_checkpoints", "load_cases", "train_folds"]

_log = logging.getLogger(__name__)

#: Name of the split file written into the output folder.
SPLIT_FILE = "splits.json"
#: Folder of fold K inside the output folder (``FOLD_DIR.format(k=K)``).
FOLD_DIR = "fold_{k}"
_FOLD_DIR_PATTERN = re.compile(r"fold_(\d+)")


@dataclass(frozen=True, slots=True)
class FoldsResult:
    """Outcome of :func:`train_folds`.

    Attributes:
        folds: one ``TrainResult`` per fold trained, in the order trained.
        out_dir: the output folder (``splits.json`` and ``fold_K/``).
        run_id: the parent MLflow run of ``--folds all`` (``None`` for single folds or
            without tracking).
        model_uri: ``runs:/<run_id>/model``, the k-fold ensemble, when it was logged.
    """

    folds: tuple[TrainResult, ...]
    out_dir: Path
    run_id: str | None = None
    model_uri: str | None = None


def train_folds(
    config: ExperimentConfig, out_dir: Path, folds: Sequence[int] | None = None
) -> FoldsResult:
    """Train the given folds (``None``: all, as one ensemble) into ``out_dir/fold_K``.

    With ``folds=None`` the fold runs are children of one parent MLflow run, which logs the
    k-fold ensemble as its model once all folds are trained (see the module docstring).

    Raises:
        ConfigError: if ``data.datalist`` is unset, a fold number is out of range, or a saved
            split file names other cases than the datalist.
    """
    from medseg import tracking
    from medseg.training.distributed import is_main_process
    from medseg.training.train import train

    cases = load_cases(config)
    out_dir = claim_output_dir(Path(out_dir), inputs=(config.data.datalist, config.data.dicom_root))
    split_path = out_dir / SPLIT_FILE
    if split_path.is_file():
        all_folds = splits.load_folds(split_path)
        named = {i for f in all_folds for i in (*f.train, *f.validation)}
        if named != set(cases):
            raise ConfigError(f"{split_path}: names other cases than the config's data")
    else:
        all_folds = splits.make_folds(list(cases), config.data.num_folds, config.seed)
        splits.write_folds(split_path, all_folds, config.seed)
    wanted = range(len(all_folds)) if folds is None else folds
    for k in wanted:
        if not 0 <= k < len(all_folds):
            raise ConfigError(f"fold {k} does not exist: folds are 0..{len(all_folds) - 1}")
    fingerprint = splits.dataset_fingerprint(list(cases))
    main = is_main_process()  # under torchrun only rank 0 has MLflow runs
    experiment = config.tracking.experiment
    ensemble = folds is None and main
    parent_scope = (
        tracking.Tracker(config, run_name=f"{experiment}-folds")
        if ensemble
        else contextlib.nullcontext(None)
    )
    results: list[TrainResult] = []
    with parent_scope as parent:
        if parent is not None:
            parent.set_tags({"folds": str(len(all_folds)), "dataset_fingerprint": fingerprint})
            parent.log_artifact(split_path, "splits")
        for k in wanted:
            fold = all_folds[k]
            pairs = [(cases[i].image, cases[i].labels) for i in fold.train]
            val_pairs = [(cases[i].image, cases[i].labels) for i in fold.validation]
            scope = (
                tracking.Tracker(
                    config,
                    run_name=f"{experiment}-fold{k}",
                    parent_run_id=None if parent is None else parent.run_id,
                    register=parent is None,
                )
                if main
                else contextlib.nullcontext()
            )
            with scope as tracker:
                if tracker is not None:
                    tracker.set_tags({"fold": str(k), "dataset_fingerprint": fingerprint})
                    tracker.log_artifact(split_path, "splits")
                results.append(
                    train(config, pairs, val_pairs, out_dir / FOLD_DIR.format(k=k), tracker)
                )
        model_uri = None
        if parent is not None:
            model_uri = parent.log_ensemble(
                [r.checkpoint_path for r in results], [r.run_id or "" for r in results]
            )
    return FoldsResult(
        folds=tuple(results),
        out_dir=out_dir,
        run_id=None if parent is None else parent.run_id,
        model_uri=model_uri,
    )


def fold_checkpoints(folder: Path) -> tuple[Path, ...]:
    """The best checkpoint of every fold of a cross-validation output folder, in fold order.

    The rule: a folder holding ``splits.json`` is a k-fold ensemble of the k folds that file
    lists, fold K being ``fold_K/best.pt``; every one must be there (a partial ensemble is
    not silently a smaller one), and no ``fold_K/`` beyond the k may be.

    Raises:
        ModelError: naming the file or folder, when ``splits.json`` is missing or unreadable,
            a fold it lists has no folder or no ``best.pt``, or a ``fold_K`` folder is not
            one of its folds.
    """
    from medseg.training.train import BEST_CHECKPOINT

    folder = Path(folder)
    split_path = folder / SPLIT_FILE
    if not split_path.is_file():
        raise ModelError(f"{folder}: not a cross-validation folder (no {SPLIT_FILE})")
    try:
        n_folds = len(splits.load_folds(split_path))
    except ConfigError as exc:
        raise ModelError(str(exc)) from exc
    if n_folds == 0:
        raise ModelError(f"{split_path}: lists no folds")
    found = {
        int(match.group(1)): path
        for path in folder.iterdir()
        if path.is_dir() and (match := _FOLD_DIR_PATTERN.fullmatch(path.name))
    }
    strays = sorted(k for k in found if k >= n_folds)
    if strays:
        raise ModelError(
            f"{found[strays[0]]}: not a fold of {split_path}, which lists folds 0..{n_folds - 1}"
        )
    checkpoints = []
    for k in range(n_folds):
        fold_dir = folder / FOLD_DIR.format(k=k)
        if k not in found:
            raise ModelError(
                f"{fold_dir}: missing; {split_path} lists {n_folds} folds "
                f"(train it with: medseg train CONFIG --out {folder} --fold {k})"
            )
        checkpoint = fold_dir / BEST_CHECKPOINT
        if not checkpoint.is_file():
            raise ModelError(f"{checkpoint}: missing; fold {k} has no best checkpoint yet")
        checkpoints.append(checkpoint)
    return tuple(checkpoints)


def load_cases(config: ExperimentConfig) -> dict[str, data.LabelledCase]:
    """Case id -> case, from ``data.datalist`` (its ``training`` list) or ``data.dicom_root``.

    Patients of a DICOM source that cannot be used (no RT-STRUCT, a label without ROI) are
    logged as warnings and left out. Their messages, and the warnings of reading the
    patients, name each patient folder by its case id (``<case_002>``), since folder names
    are often patient names or IDs; ``privacy.log_identifiers`` keeps the paths.

    Raises:
        ConfigError: if neither source is set, DICOM label values differ from
            ``model.labels``', or no usable case remains.
    """
    source = config.data
    if source.dicom_root is not None and source.labels is not None:
        if set(source.labels) != set(config.model.label_names):
            raise ConfigError(
                f"data.labels values {sorted(source.labels)} must be model.labels values "
                f"{sorted(config.model.label_names)}"
            )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            dataset = datasets.load_dicom_rtstruct_folder(
                Path(source.dicom_root),
                source.labels,
                cache_dir=source.cache_dir,
                preprocess=config.preprocess.model_dump(),
            )
        folders = {**dataset.folders, **{s.case_id: s.folder for s in dataset.skipped}}
        names = (
            {}
            if config.privacy.log_identifiers
            else {
                str(path): f"<{case_id}>"
                for case_id, folder in folders.items()
                for path in (folder, folder.absolute(), folder.resolve())
            }
        )
        for caught_warning in caught:
            warnings.warn(
                redact(str(caught_warning.message), names), caught_warning.category, stacklevel=2
            )
        for skipped in dataset.skipped:
            where = skipped.folder if config.privacy.log_identifiers else skipped.case_id
            _log.warning("skipped %s: %s", where, redact(skipped.reason, names))
        if not dataset.cases:
            raise ConfigError(f"{source.dicom_root}: no usable patient folder")
        return {c.case_id: c for c in dataset.cases}
    if source.datalist is None:
        raise ConfigError("set data.datalist (a dataset.json) or data.dicom_root")
    return {c.case_id: c for c in data.load_training_cases(Path(source.datalist))}
