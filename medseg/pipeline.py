"""One case end to end. The CLI and batch runners call this and nothing below it.

Read the functions top to bottom to follow a scan: load -> infer -> postprocess -> export.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medseg import postprocess
from medseg.config import ExperimentConfig, IngestConfig, SeriesSelection
from medseg.io import dicom, nifti, rtstruct, seg
from medseg.io.files import atomic_dir, check_output, claim_output_dir
from medseg.report import write_lesions_csv, write_report, write_volumes_json
from medseg.timing import StageTimes, format_stage_seconds
from medseg.training import data
from medseg.volume import Volume, VolumeKind

if TYPE_CHECKING:  # these modules load torch, which is needed only to load or train a model
    from medseg.infer import WindowProgress
    from medseg.model import LoadedModel
    from medseg.precision import Verification
    from medseg.training.train import TrainResult

__all__ = [
    "CaseResult",
    "load_model",
    "predict_case",
    "train_from_config",
    "verification_cases",
    "verify_model_precision",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CaseResult:
    """What :func:`predict_case` wrote.

    Attributes:
        out_dir: the case's output folder.
        rtstruct_path: ``rtstruct.dcm`` (``None`` when the input was not DICOM).
        labels_path: ``labels.nii.gz``.
        volumes_path: ``volumes.json``.
        volumes_ml: structure name -> volume in mL.
        labels: the predicted LABELS volume (on the input's grid).
        stage_seconds: wall-clock seconds per stage (:data:`medseg.timing.STAGES`), as
            ``volumes.json`` records them.
        precision: the precision the network ran in and why (``{"used", "reason"}``, as
            ``volumes.json`` records it; :func:`medseg.precision.choose`).
    """

    out_dir: Path
    rtstruct_path: Path | None
    labels_path: Path
    volumes_path: Path
    volumes_ml: dict[str, float]
    labels: Volume
    stage_seconds: dict[str, float] = field(default_factory=dict)
    precision: dict[str, str] = field(default_factory=dict)


def load_model(model: str | Path, *, tracking_uri: str | None = None) -> LoadedModel:
    """A :class:`medseg.model.LoadedModel` from a checkpoint path or an MLflow model URI.

    Accepts ``path/to/best.pt``, ``runs:/<run_id>/model`` and ``models:/<name>/<version>``;
    URIs are looked up in ``tracking_uri`` (default: ``MLFLOW_TRACKING_URI`` or the local
    store in the working directory). A k-fold ensemble (the output folder of ``medseg train
    --folds all``, or the MLflow model that run logged) loads as ONE model that averages its
    folds' softmax (:func:`medseg.model.load_ensemble`), at k times one network's time and
    memory for weights; the rule for what is an ensemble is in
    :func:`medseg.tracking.resolve_model`.
    """
    from medseg import tracking
    from medseg.model import load_checkpoint, load_ensemble

    resolved = tracking.resolve_model(str(model), tracking_uri=tracking_uri)
    if resolved.is_file():
        return load_checkpoint(resolved)
    return load_ensemble(tracking.model_checkpoints(resolved), source_path=resolved)


def predict_case(
    model: LoadedModel,
    input_path: Path,
    out_dir: Path,
    *,
    overwrite: bool = False,
    selection: SeriesSelection | None = None,
    ingest: IngestConfig | None = None,
    progress: WindowProgress | None = None,
) -> CaseResult:
    """Segment one scan and write its outputs atomically into ``out_dir``.

    The model's own config decides everything after the network: ``postprocess`` (component
    and hole clean-up) is applied to the predicted labels before anything is written, and
    ``export`` sets the contour tolerance and what happens to structures not found.

    Writes ``rtstruct.dcm`` and ``seg.dcm`` (DICOM input only: they reference the input
    series), ``labels.nii.gz``, ``volumes.json`` and ``lesions.csv`` (per-structure and
    per-lesion volumes in mL, centroids and diameters in mm) and ``report/report.html`` (a QA
    page with axial/coronal/sagittal overlays through every lesion).

    Args:
        model: a :class:`medseg.model.LoadedModel`.
        input_path: a DICOM series folder or a NIfTI/NRRD image.
        out_dir: output folder; it appears complete or not at all.
        overwrite: replace an existing ``out_dir`` that medseg wrote (never another folder).
        selection: which series of a DICOM folder to segment (default: the model config's
            ``series_selection``).
        ingest: how irregular or tilted DICOM series are handled (default: the model
            config's ``ingest``, which refuses them).
        progress: told as the network's windows finish (:data:`medseg.infer.WindowProgress`).

    The seconds of each stage (:mod:`medseg.timing`: load, preprocess, network, postprocess,
    rtstruct, seg, report; ``report`` includes the QA page, ``labels.nii.gz`` and the tables)
    are logged at DEBUG (``medseg -v``), kept in ``volumes.json`` as ``stage_seconds`` and
    returned.
    """
    from medseg import precision as precisions
    from medseg.infer import predict, predict_probabilities

    config = model.config
    input_path, out_dir = Path(input_path), Path(out_dir)
    check_output(out_dir, inputs=(input_path, model.source_path), overwrite=overwrite)
    used, reason = precisions.choose(model)
    model = precisions.with_precision(model, used)
    ran_in = {"used": used, "reason": reason}
    log.debug("network precision %s (%s)", used, reason)
    times = StageTimes()
    with times.stage("load"):
        if input_path.is_dir():
            image = dicom.load_series(
                input_path,
                selection if selection is not None else config.series_selection,
                ingest if ingest is not None else config.ingest,
            )
        else:
            image = nifti.load(
                input_path, VolumeKind.IMAGE, ingest if ingest is not None else config.ingest
            )
    probabilities = None
    if config.export.contours == "subvoxel" and image.source.sop_instance_uids:
        # sub-voxel contours need the class probabilities (n_classes full-size float16 maps);
        # the labels are their argmax, exactly as predict() computes them
        probabilities = predict_probabilities(
            model, image, dtype=np.float16, times=times, progress=progress
        )
        with times.stage("postprocess"):
            raw = image.with_array(
                np.argmax(np.asarray(probabilities.array), axis=0).astype(np.uint8),
                kind=VolumeKind.LABELS,
            )
    else:
        raw = predict(model, image, times=times, progress=progress)
    with times.stage("postprocess"):
        labels = postprocess.apply_postprocess(raw, config.postprocess, model.structures)
        # components are found once per label, here; the tables and the QA page share them
        report = postprocess.volumes_report(labels, model.label_names)
    structures = model.structures
    present = {int(v) for v in np.unique(np.asarray(labels.array))}
    found = [s for s in structures if s.label in present]
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        rtstruct_path = None
        # a structure set and a SEG need at least one structure; when the model found none
        # (and empty structures are omitted, the default) neither is written and the report
        # and volumes.json say that nothing was found
        if image.source.sop_instance_uids and (found or config.export.empty_rois == "keep"):
            with times.stage("rtstruct"):
                rtstruct_path = rtstruct.write(
                    labels,
                    image,
                    structures,
                    tmp / "rtstruct.dcm",
                    model_id=_model_id(model),
                    empty=config.export.empty_rois,
                    tolerance_mm=config.export.tolerance_mm,
                    probabilities=probabilities,
                )
            if found:
                with times.stage("seg"):
                    seg.write_seg(labels, image, found, tmp / "seg.dcm", model_id=_model_id(model))
        elif image.source.sop_instance_uids:
            log.warning(
                "no structure found (%s); no RT-STRUCT or SEG written",
                ", ".join(s.name for s in structures),
            )
        with times.stage("report"):
            write_report(
                image,
                labels,
                structures,
                tmp / "report",
                rtstruct_path=rtstruct_path,
                model_id=_model_id(model),
                show_identifiers=config.privacy.log_identifiers,
                volumes=report,
            )
            nifti.save(labels, tmp / "labels.nii.gz")
            write_lesions_csv(report, tmp / "lesions.csv")
        stage_seconds = times.seconds()
        log.debug("stage seconds: %s", format_stage_seconds(stage_seconds))
        write_volumes_json(
            report,
            tmp / "volumes.json",
            stage_seconds=stage_seconds,
            precision=ran_in,
        )
    return CaseResult(
        out_dir=out_dir,
        rtstruct_path=out_dir / "rtstruct.dcm" if rtstruct_path else None,
        labels_path=out_dir / "labels.nii.gz",
        volumes_path=out_dir / "volumes.json",
        volumes_ml=report.volumes_ml,
        labels=labels,
        stage_seconds=stage_seconds,
        precision=ran_in,
    )


def _model_id(model: LoadedModel) -> str:
    """The model as provenance says it (RT-STRUCT ROIGenerationDescription, SEG
    ContentDescription, the QA page): medseg version, run id if known, for an ensemble
    ``k-fold ensemble``, and the precision the network ran in (``in float32``); never a path."""
    run_id = model.extra.get("run_id")
    ensemble = f" {len(model.folds)}-fold ensemble" if model.folds else ""
    return (
        f"medseg {model.medseg_version}{ensemble}"
        + (f" run {run_id}" if run_id else "")
        + f" in {model.config.infer.precision}"
    )


def _is_checkpoint(path: Path) -> bool:
    from medseg.errors import ModelError
    from medseg.model import load_checkpoint

    try:
        load_checkpoint(path)
    except ModelError:
        return False
    return True


def verification_cases(folder: Path, config: ExperimentConfig) -> Iterator[Volume]:
    """The cases of ``folder`` for :func:`verify_model_precision` (listed now, read one at a
    time in name order as the iterator is consumed): each NIfTI/NRRD/MHA file and each folder (a DICOM series, chosen by the model's
    ``series_selection``) directly inside it; hidden entries are skipped.

    Raises:
        InputError: if ``folder`` holds no case, or a case cannot be read (naming it).
    """
    from medseg.errors import InputError

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder of cases")
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    cases = [p for p in entries if p.is_dir() or nifti.is_image_file(p)]
    if not cases:
        raise InputError(
            f"{folder}: no cases (NIfTI/NRRD/MHA files or DICOM series folders) inside"
        )
    return _read_cases(cases, config)


def _read_cases(cases: Sequence[Path], config: ExperimentConfig) -> Iterator[Volume]:
    for path in cases:
        if path.is_dir():
            yield dicom.load_series(path, config.series_selection, config.ingest)
        else:
            yield nifti.load(path, VolumeKind.IMAGE, config.ingest)


def verify_model_precision(
    model: str | Path,
    out: Path,
    *,
    cases: Path | None = None,
    precisions: Sequence[str] | None = None,
    backends: Sequence[str] | None = None,
    overwrite: bool = False,
    tracking_uri: str | None = None,
) -> tuple[Verification, Path]:
    """``medseg verify-precision``: verify a checkpoint's faster precisions and write a copy
    of it that records them (the source checkpoint is never changed).

    Args:
        model: a checkpoint path or MLflow model URI (one network; not an ensemble).
        out: the verified checkpoint to write (atomically); never the source.
        cases: folder of verification cases (:func:`verification_cases`); default the
            validation images of the model's ``data.datalist``.
        precisions: as :func:`medseg.infer.verify_precision` (default: the native ones).
        backends: as :func:`medseg.infer.verify_precision` (default: the model's
            ``infer.backend``). Records the checkpoint already holds for other backends,
            devices or precisions are kept.
        overwrite: replace an existing ``out`` if it is a medseg checkpoint.
        tracking_uri: as :func:`load_model`.

    Returns:
        The verification written (old records kept included) and ``out``.

    Raises:
        ModelError: for an ensemble or a file that is not a checkpoint.
        InputError: for no cases or an unreadable one.
        OutputError: if ``out`` may not be written (it is an input, exists, ...).
    """
    from medseg import tracking
    from medseg.errors import InputError, ModelError
    from medseg.infer import verify_precision
    from medseg.model import load_checkpoint, with_extra
    from medseg.precision import EXTRA_KEY, read_verification

    source = tracking.resolve_model(str(model), tracking_uri=tracking_uri)
    if not source.is_file():
        raise ModelError(
            f"{source}: a k-fold ensemble; verify each fold's checkpoint (fold_K/best.pt)"
        )
    out = Path(out)
    check_output(
        out,
        inputs=(source, cases),
        overwrite=overwrite,
        is_folder=False,
        is_medseg_file=_is_checkpoint,
    )
    loaded = load_checkpoint(source)
    if cases is not None:
        images: Iterator[Volume] = verification_cases(Path(cases), loaded.config)
    elif loaded.config.data.datalist is not None:
        datalist = data.load_datalist(Path(loaded.config.data.datalist))
        if not datalist.validation:
            raise InputError(f"{loaded.config.data.datalist}: no validation cases; give --cases")
        images = (case.image for case in datalist.validation)
    else:
        raise InputError(f"{source}: its config names no validation cases; give --cases")
    older = read_verification(loaded)
    verification = verify_precision(loaded, images, precisions, backends).merged(older)
    with_extra(source, out, {EXTRA_KEY: verification.to_json()})
    return verification, out


def train_from_config(
    config: ExperimentConfig, out_dir: Path, *, resume_from: Path | None = None
) -> TrainResult:
    """Train on the config's data with MLflow tracking; returns its
    :class:`~medseg.training.train.TrainResult`.

    With ``data.datalist`` the Decathlon file's ``training`` and ``validation`` lists are used
    as given. With ``data.dicom_root`` (patients with CT + RT-STRUCT) every usable patient
    trains and none validates; use ``medseg train --fold K`` for a held-out fold.
    ``resume_from`` continues from a ``last.pt`` written by an interrupted run.
    """
    from medseg import tracking
    from medseg.errors import ConfigError
    from medseg.training import splits
    from medseg.training.crossval import load_cases
    from medseg.training.distributed import is_main_process
    from medseg.training.train import train

    claim_output_dir(Path(out_dir), inputs=(config.data.datalist, config.data.dicom_root))
    if config.data.datalist is not None:
        datalist = data.load_datalist(Path(config.data.datalist))
        pairs = [(c.image, c.labels) for c in datalist.training]
        val_pairs = [(c.image, c.labels) for c in datalist.validation]
        case_ids = [c.case_id for c in (*datalist.training, *datalist.validation)]
    elif config.data.dicom_root is not None:
        cases = load_cases(config)
        pairs = [(c.image, c.labels) for c in cases.values()]
        val_pairs = []
        case_ids = list(cases)
    else:
        raise ConfigError(
            "no training data: set data.datalist (a Decathlon-style dataset.json) or "
            "data.dicom_root with data.labels (patients with CT + RT-STRUCT)"
        )
    # under torchrun only rank 0 has an MLflow run (the others train without a tracker)
    scope = tracking.Tracker(config) if is_main_process() else contextlib.nullcontext(None)
    with scope as tracker:
        if tracker is not None:  # a hash of the case ids: which data, without naming anyone
            tracker.set_tags({"dataset_fingerprint": splits.dataset_fingerprint(case_ids)})
        return train(config, pairs, val_pairs, Path(out_dir), tracker, resume_from=resume_from)


def __getattr__(name: str) -> Any:
    """``run_demo`` and ``DemoResult`` moved to :mod:`medseg.synthetic.demo` (until 0.2)."""
    if name in ("run_demo", "DemoResult"):
        from medseg._compat import moved_name

        return moved_name(__name__, name, "medseg.synthetic.demo")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
