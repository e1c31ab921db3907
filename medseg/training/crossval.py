"""k-fold cross-validation: ``medseg train CONFIG --fold K`` and ``--folds all``.

The folds are drawn from ``config.seed`` over the training cases (a datalist's ``training``
list, or the patients of a DICOM + RT-STRUCT ``data.dicom_root``)
(:func:`medseg.training.splits.make_folds`) and saved as ``splits.json`` in the output folder; a
saved split file is reused, so every fold of a study trains on the same partition. Each fold
trains into ``fold_K/`` as its own MLflow run (``<experiment>-fold<K>``) with the split file
as an artifact.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medseg.config import ExperimentConfig
from medseg.errors import ConfigError
from medseg.io.files import claim_output_dir
from medseg.privacy import redact
from medseg.training import data, datasets, splits

__all__ = ["SPLIT_FILE", "load_cases", "train_folds"]

_log = logging.getLogger(__name__)

#: Name of the split file written into the output folder.
SPLIT_FILE = "splits.json"


def train_folds(
    config: ExperimentConfig, out_dir: Path, folds: Sequence[int] | None = None
) -> list[Any]:
    """Train the given folds (``None``: all) and return one ``TrainResult`` per fold.

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
    results = []
    for k in wanted:
        if not 0 <= k < len(all_folds):
            raise ConfigError(f"fold {k} does not exist: folds are 0..{len(all_folds) - 1}")
        fold = all_folds[k]
        pairs = [(cases[i].image, cases[i].labels) for i in fold.train]
        val_pairs = [(cases[i].image, cases[i].labels) for i in fold.validation]
        run_name = f"{config.tracking.experiment}-fold{k}"
        main = is_main_process()  # under torchrun only rank 0 has an MLflow run
        scope = tracking.Tracker(config, run_name=run_name) if main else contextlib.nullcontext()
        with scope as tracker:
            if tracker is not None:
                tracker.set_tags(
                    {"fold": str(k), "dataset_fingerprint": splits.dataset_fingerprint(list(cases))}
                )
                tracker.log_artifact(split_path, "splits")
            results.append(train(config, pairs, val_pairs, out_dir / f"fold_{k}", tracker))
    return results


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
