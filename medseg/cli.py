"""The ``medseg`` command line. Each command checks its paths, calls one library function and
prints a summary. Heavy imports (torch, MONAI, MLflow) happen inside the commands.

Exit codes: 0 success, 1 some cases failed, 2 usage, config or input error.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

import medseg
from medseg.errors import ConfigError, MedsegError
from medseg.status import SummaryStatus

if TYPE_CHECKING:
    from medseg.batch import RunOptions

__all__ = ["app"]

app = typer.Typer(
    name="medseg",
    help="3D medical image segmentation: DICOM/NIfTI in, MONAI U-Net, RT-STRUCT out.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class ExecutorChoice(str, enum.Enum):
    """Where ``medseg batch`` and ``medseg pacs run`` run their cases."""

    LOCAL = "local"
    POOL = "pool"
    RAY = "ray"


# Options shared by the commands that run cases (predict, batch, pacs run, pacs listen).
ModelOption = Annotated[
    str,
    typer.Option(
        "--model",
        help=(
            "Checkpoint path, runs:/<id>/model or models:/<name>/<v>; or a `train --folds all` "
            "folder (or the model it logged): its k folds averaged as one model, k times slower."
        ),
    ),
]
RunConfigOption = Annotated[
    Path | None,
    typer.Option(
        exists=True,
        dir_okay=False,
        help="Experiment YAML whose series_selection and batch apply (default: the model's).",
    ),
]
WorkersOption = Annotated[
    int, typer.Option(min=1, help="Worker processes; with --executor ray, CPUs of a local Ray.")
]
ExecutorOption = Annotated[
    ExecutorChoice, typer.Option(help="local (a process pool when --workers > 1), pool or ray.")
]
RayAddressOption = Annotated[
    str | None,
    typer.Option(help="Ray cluster to join (auto, ray://HOST:10001); default: start one."),
]


class MissingUidsChoice(str, enum.Enum):
    """What to do when the referenced CT has empty Study/Series Instance UIDs."""

    ERROR = "error"
    GENERATE = "generate"


class EmptyRoiChoice(str, enum.Enum):
    """What to do with a ROI that has no voxels."""

    KEEP = "keep"
    OMIT = "omit"


#: Exit code of a run stopped by Ctrl-C (SIGINT) or SIGTERM: 128 + the signal number, as a
#: shell reports a process killed by it, but after a clean stop (no partial output).
EXIT_INTERRUPTED = {signal.SIGINT: 130, signal.SIGTERM: 143}


def _fail(error: BaseException) -> NoReturn:
    from medseg.io.files import describe_os_error
    from medseg.privacy import redact_credentials

    if isinstance(error, OSError) and not isinstance(error, MedsegError):
        text = describe_os_error(error)
    else:
        text = str(error)
    # one line, whatever a library put into the message; credentials in URLs masked
    line = " ".join(redact_credentials(text).split())
    typer.echo(f"error: {line}", err=True)
    raise typer.Exit(code=2)


@contextlib.contextmanager
def _reported() -> Iterator[None]:
    """Turn what a command raises on purpose into one line and exit code 2: medseg's errors,
    and the file system's (a full or read-only disk, a missing permission) that reach the
    CLI; Ctrl-C or SIGTERM into one line and :data:`EXIT_INTERRUPTED`. Outputs are atomic, so
    nothing partial is left in any of these cases."""
    previous = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    except (MedsegError, OSError) as error:
        _fail(error)
    except _Terminated:
        typer.echo("interrupted (SIGTERM); no partial output was left", err=True)
        raise typer.Exit(code=EXIT_INTERRUPTED[signal.SIGTERM]) from None
    except KeyboardInterrupt as stop:
        from medseg.batch import BatchInterrupted

        if isinstance(stop, BatchInterrupted):  # SIGINT or SIGTERM; the summary is written
            typer.echo(str(stop), err=True)
            raise typer.Exit(code=stop.exit_code) from None
        typer.echo("interrupted (Ctrl-C); no partial output was left", err=True)
        raise typer.Exit(code=EXIT_INTERRUPTED[signal.SIGINT]) from None
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)


class _Terminated(BaseException):
    """SIGTERM, raised like KeyboardInterrupt so that ``finally`` blocks (the atomic writers'
    clean-up) run."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise _Terminated


def _version(value: bool) -> None:
    if value:
        typer.echo(f"medseg {medseg.__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug messages.")] = False,
    private: Annotated[
        bool,
        typer.Option(
            "--private",
            help="Outputs readable by their owner only (files 0600, "
            "folders 0700); default: as the umask allows.",
        ),
    ] = False,
) -> None:
    """medseg command line."""
    _configure_logging(verbose)
    if private:  # every file and folder this process (and its workers) creates
        os.umask(0o077)
    for stream in (sys.stdout, sys.stderr):  # file names that are not UTF-8 print escaped
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def _configure_logging(verbose: bool) -> None:
    """medseg's own messages at INFO and other libraries' at WARNING, so a run shows medseg's
    progress and not, for example, highdicom's note that a SEG's frames skip the empty
    slices; ``verbose``: everything at DEBUG."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("medseg").setLevel(logging.DEBUG if verbose else logging.INFO)
    from medseg.privacy import redact_log_credentials

    redact_log_credentials()
    if not verbose:  # MLflow sets its own loggers' level when imported, from this variable
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("medseg-demo"),
    config: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="Experiment YAML (default: built-in demo)."),
    ] = None,
    cases: Annotated[int, typer.Option(min=2, help="Number of training phantoms.")] = 8,
) -> None:
    """Make phantom CTs, train a U-Net, predict a held-out phantom and export an RT-STRUCT."""
    from medseg.config import builtin_config_path, load_config
    from medseg.synthetic.demo import run_demo

    with _reported():
        result = run_demo(
            load_config(config or builtin_config_path("demo.yaml")), out, n_cases=cases
        )
    typer.echo(
        f"tumour volume: predicted {result.predicted_volume_ml:.2f} mL, "
        f"truth {result.true_volume_ml:.2f} mL, Dice {result.dice:.3f}"
    )
    typer.echo(f"MLflow run id: {result.run_id}  (model: {result.model_uri})")
    written = ", ".join(
        sorted(
            p.name
            for p in result.case.out_dir.iterdir()
            if p.is_file() and not p.name.startswith(".")
        )
    )
    typer.echo(f"outputs: {result.case.out_dir} ({written}, report/report.html)")
    typer.echo(f"summary: {result.summary_path}")
    typer.echo(f"MLflow UI: .venv/bin/mlflow ui --backend-store-uri {result.tracking_uri}")


@app.command()
def train(
    config: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Experiment YAML.")],
    out: Annotated[Path, typer.Option("--out", help="Checkpoint folder.")] = Path("medseg-train"),
    fold: Annotated[
        int | None, typer.Option("--fold", min=0, help="Train cross-validation fold K only.")
    ] = None,
    folds: Annotated[
        str | None,
        typer.Option(
            "--folds",
            help=(
                "'all': train every cross-validation fold; the folder (and one MLflow model) "
                "is then their ensemble for --model."
            ),
        ),
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            "--resume",
            exists=True,
            dir_okay=False,
            help="Continue an interrupted run from its last.pt.",
        ),
    ] = None,
) -> None:
    """Train a model from an experiment config; tracked in MLflow.

    Distributed: `torchrun --nproc_per_node N -m medseg train CONFIG` (DDP; gloo on CPU, NCCL on
    CUDA; rank 0 alone logs to MLflow and writes checkpoints).
    """
    from medseg.config import load_config
    from medseg.pipeline import train_from_config
    from medseg.training import distributed
    from medseg.training.crossval import train_folds

    if folds not in (None, "all") or (fold is not None and folds is not None):
        raise typer.BadParameter("use either --fold K or --folds all", param_hint="--folds")
    if resume is not None and (fold is not None or folds is not None):
        raise typer.BadParameter("--resume continues one run, not folds", param_hint="--resume")
    with _reported():
        experiment = load_config(config)
        # under `torchrun --nproc_per_node N -m medseg train`: one DDP process group
        with distributed.session(experiment.train.device) as (rank, _):
            crossval = None
            if fold is None and folds is None:
                results = [train_from_config(experiment, out, resume_from=resume)]
            else:
                crossval = train_folds(experiment, out, None if fold is None else [fold])
                results = list(crossval.folds)
    if rank != 0:
        return
    for result in results:
        typer.echo(
            f"best checkpoint: {result.checkpoint_path} (epoch {result.best_epoch}, "
            f"val Dice {result.best_val_dice})"
        )
        typer.echo(f"MLflow run id: {result.run_id}  model: {result.model_uri}")
    if crossval is not None and folds == "all":
        typer.echo(
            f"{len(results)}-fold ensemble: --model {crossval.out_dir}  "
            f"(MLflow run id: {crossval.run_id}  model: {crossval.model_uri})"
        )


class DeviceChoice(str, enum.Enum):
    """What ``medseg plan`` plans for."""

    CPU = "cpu"
    CUDA = "cuda"


@app.command()
def plan(
    data: Annotated[
        Path,
        typer.Argument(
            exists=True,
            dir_okay=False,
            help="dataset.json (nnU-Net v2 raw layout or a datalist), or an experiment YAML "
            "whose data names a datalist or a dicom_root with labels.",
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="Plan YAML to write.")] = Path("plan.yaml"),
    device: Annotated[
        DeviceChoice | None,
        typer.Option(
            help="cuda: nnU-Net's GPU plan; cpu: scaled to the time budget here "
            "(default: cuda if one is visible)."
        ),
    ] = None,
    gpu_memory_gb: Annotated[
        float, typer.Option("--gpu-memory-gb", min=0.5, help="nnU-Net's GPU memory target.")
    ] = 8.0,
    time_budget_min: Annotated[
        float,
        typer.Option("--time-budget-min", min=1.0, help="With cpu: minutes training may take."),
    ] = 30.0,
    fold_count: Annotated[
        int, typer.Option("--fold-count", min=2, help="Cross-validation folds.")
    ] = 5,
    threads: Annotated[
        int | None, typer.Option(min=1, help="Torch threads of the planned training.")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace a plan (and fingerprint) medseg plan wrote.")
    ] = False,
) -> None:
    """Plan an experiment from a dataset as nnU-Net v2 would: spacing, intensities, network,
    patch, batch, training and inference defaults, with the reasons as comments; writes
    PLAN.yaml and fingerprint.json beside it."""
    from medseg.planning.command import plan_experiment

    with _reported():
        result = plan_experiment(
            data,
            out,
            device=None if device is None else device.value,
            gpu_memory_gb=gpu_memory_gb,
            time_budget_min=time_budget_min,
            fold_count=fold_count,
            num_threads=threads,
            overwrite=overwrite,
        )
    config = result.planned.config
    typer.echo(
        f"plan: {result.plan_path} (fingerprint: {result.fingerprint_path}); "
        f"{len(result.fingerprint.cases)} cases, spacing {list(config.preprocess.spacing_mm or ())} mm, "
        f"patch {list(config.train.patch_size)}, batch {config.train.batch_size}, "
        f"features {list(config.model.channels)}, {config.train.epochs} epochs"
    )
    for note in result.notes:
        typer.echo(f"  {note}")


@app.command()
def predict(
    input_path: Annotated[Path, typer.Argument(exists=True, help="DICOM series folder or NIfTI.")],
    out_dir: Annotated[Path, typer.Argument(help="Output folder (must not exist).")],
    model: ModelOption,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
) -> None:
    """Segment one scan: writes rtstruct.dcm, labels.nii.gz and volumes.json."""
    from medseg.pipeline import load_model, predict_case

    bar, update = _window_bar()
    with _reported(), bar:
        result = predict_case(
            load_model(model), input_path, out_dir, overwrite=overwrite, progress=update
        )
    for name, volume_ml in result.volumes_ml.items():
        typer.echo(f"{name}: {volume_ml:.2f} mL")
    typer.echo(f"outputs: {result.out_dir}")


@app.command("verify-precision")
def verify_precision(
    model: Annotated[
        str, typer.Argument(help="Checkpoint path, runs:/<id>/model or models:/<name>/<v>.")
    ],
    out: Annotated[Path, typer.Option(help="Verified copy of the checkpoint to write.")],
    cases: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            file_okay=False,
            help="Folder of cases (NIfTI/NRRD files, DICOM series folders); default the "
            "validation cases of the model's data.datalist.",
        ),
    ] = None,
    precision: Annotated[
        list[str] | None,
        typer.Option(
            help="Precision to verify (bfloat16, float16; repeatable); default each one this "
            "machine computes natively."
        ),
    ] = None,
    backend: Annotated[
        list[str] | None,
        typer.Option(
            help="infer.backend to verify (torch, openvino, onnxruntime; repeatable); default "
            "the model's own. Records of other backends in the checkpoint are kept."
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace an existing --out if it is a medseg checkpoint.")
    ] = False,
) -> None:
    """Compare the labels of faster precisions with float32's and record them in a copy of
    the checkpoint; `infer.precision: auto` then uses the fastest one that agrees."""
    from medseg import precision as precisions
    from medseg.model import load_checkpoint
    from medseg.pipeline import verify_model_precision

    with _reported():
        verification, path = verify_model_precision(
            model,
            out,
            cases=cases,
            precisions=precision or None,
            backends=backend or None,
            overwrite=overwrite,
        )
        chosen, reason = precisions.choose(load_checkpoint(path))
    native = ", ".join(verification.native) or "none"
    typer.echo(f"faster precisions native to this machine: {native}")
    for r in verification.records:
        verdict = "accepted" if r.accepted else "refused"
        typer.echo(
            f"{r.precision} ({r.backend}, {r.device}): {r.cases} case"
            f"{'' if r.cases == 1 else 's'}, worst Dice vs float32 "
            f"{r.worst_dice:.4f}, worst volume change {100 * r.worst_volume_change:.2f} %: "
            f"{verdict} (needs Dice >= {precisions.MIN_DICE}, change <= "
            f"{100 * precisions.MAX_VOLUME_CHANGE:.1f} %); {_window_settings(r.settings)}"
        )
    if reason == "configured":
        typer.echo(
            f"the model's config sets infer.precision {chosen}: it runs in {chosen}; with "
            "infer.precision auto it would use the record"
        )
    else:
        typer.echo(f"infer.precision auto runs this model in {chosen} ({reason})")
    typer.echo(f"verified checkpoint: {path}")


def _window_settings(settings: Mapping[str, Any]) -> str:
    """A precision record's window settings in words (``medseg verify-precision``)."""
    if not settings:
        return "window settings not recorded (holds for none)"
    roi = "x".join(str(v) for v in settings.get("roi_size", ()))
    flips = ", ".join(str(a) for a in settings.get("flip_tta", ())) or "none"
    return (
        f"windows {roi}, overlap {settings.get('overlap')} {settings.get('blend')}, flips {flips}"
    )


ToleranceMmOption = Annotated[
    float,
    typer.Option(
        min=0.0,
        help="Surface Dice and editing tolerance (mm) of structures no tolerance table has.",
    ),
]
TolerancesOption = Annotated[
    Path | None,
    typer.Option(
        exists=True,
        dir_okay=False,
        help="Tolerance table (YAML mapping or CSV: structure, mm), matched by name or "
        "TG-263 name; before medseg's H&N table and --tolerance-mm.",
    ),
]
DefaultTolerancesOption = Annotated[
    bool,
    typer.Option(
        help="Use medseg's H&N organ tolerances (median inter-observer HD95 of the DeepMind "
        "H&N scans) for organs the --tolerances table lacks."
    ),
]
ReferenceAgreementOption = Annotated[
    Path | None,
    typer.Option(
        exists=True,
        help="metrics_summary.json (or its folder) of 'medseg evaluate EXPERT_A EXPERT_B': "
        "the experts' medians are put beside the model's and structures where the model is "
        "worse are flagged.",
    ),
]


@app.command()
def evaluate(
    pred: Annotated[
        Path,
        typer.Argument(
            exists=True,
            file_okay=False,
            help="Predictions: a label map per case (NAME.nii.gz, .nrrd, ...) or a DICOM folder "
            "NAME/ holding an RT-STRUCT and its CT/MR series, or only the RT-STRUCT (predict's "
            "output) when REF's NAME/ holds that series.",
        ),
    ],
    ref: Annotated[
        Path,
        typer.Argument(
            exists=True,
            file_okay=False,
            help="References, named like the predictions: label maps or DICOM folders as for "
            "PRED. RT-STRUCT ROIs are matched to --rois names ignoring case, spaces, - and _; "
            "without --rois the ROI names are the labels, numbered in ROI order.",
        ),
    ],
    out: Annotated[Path, typer.Option(help="Folder for the metrics CSV/JSON.")] = Path(
        "medseg-evaluation"
    ),
    tolerance_mm: ToleranceMmOption = 2.0,
    tolerances: TolerancesOption = None,
    default_tolerances: DefaultTolerancesOption = True,
    reference_agreement: ReferenceAgreementOption = None,
    spacing_from: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            help="Image file, or folder of images named like the cases (e.g. REF), whose grid "
            "(spacing, origin, direction) label-map predictions adopt voxel for voxel; shapes "
            "must match.",
        ),
    ] = None,
    rois: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="rois.yaml naming the labels (as for export-rtstruct); default: label_<n>, "
            "or the ROI names where a case is an RT-STRUCT.",
        ),
    ] = None,
) -> None:
    """Dice, IoU, HD, HD95, ASSD, surface Dice (surface-distance's definitions), volume errors
    and editing effort (added path length, slices needing no edit), per case and summarised."""
    from medseg.evaluation import evaluate_folder
    from medseg.io.rois import load_roi_specs
    from medseg.tolerances import load_tolerances

    with _reported():
        structures = load_roi_specs(rois) if rois is not None else None
        table = load_tolerances(tolerances) if tolerances is not None else None
        summary = evaluate_folder(
            pred,
            ref,
            out,
            labels=structures,
            tolerance_mm=tolerance_mm,
            spacing_from=spacing_from,
            tolerances=table,
            tolerances_source=f"file {tolerances}" if tolerances is not None else "",
            builtin_tolerances=default_tolerances,
            reference_agreement=reference_agreement,
        )
    _echo_evaluation(summary)
    if not summary.ok:
        raise typer.Exit(code=1)


def _echo_evaluation(summary: Any) -> None:
    """What ``evaluate`` (and ``batch --references``) print of an evaluation summary."""
    typer.echo(f"{len(summary.cases)} cases evaluated, {len(summary.failures)} failed")
    for failure in summary.failures:
        typer.echo(f"failed: {failure.case}: {failure.reason}", err=True)
    for name, comparison in summary.expert_agreement.items():
        if comparison.outside:
            typer.echo(f"outside the experts' agreement: {name} ({', '.join(comparison.worse)})")
    typer.echo(f"per case: {summary.per_case_csv}\nsummary: {summary.summary_csv}")
    if summary.agreement_csv is not None:
        typer.echo(f"expert agreement: {summary.agreement_csv}")


@app.command()
def inspect(
    path: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="Folder to scan.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the inventory as JSON.")] = False,
) -> None:
    """List the studies and series under a folder, with the problems found in each."""
    import json

    from medseg.io.dicom import scan_folder

    with _reported():
        inventory = scan_folder(path)
    if as_json:
        typer.echo(json.dumps(inventory.to_dict(), indent=2))
        return
    typer.echo(f"{inventory.n_dicom_files} DICOM files of {inventory.n_files} under {path}")
    for study in inventory.studies:
        typer.echo(f"study {study.study_instance_uid} {study.study_description or ''}".rstrip())
        for s in study.series:
            spacing = (
                ""
                if s.pixel_spacing_mm is None
                else (
                    f" {s.pixel_spacing_mm[0]:g}x{s.pixel_spacing_mm[1]:g}"
                    + (f"x{s.slice_spacing_mm:g}" if s.slice_spacing_mm else "")
                    + " mm"
                )
            )
            orientation = f" {s.orientation.value}" if s.orientation is not None else ""
            # the user asked for this listing of their folder: descriptions included
            typer.echo(f"  {s.describe(log_identifiers=True)}{orientation}{spacing}")
            for problem in s.problems:
                typer.echo(f"    problem: {problem.message}")
    for problem in inventory.problems:
        typer.echo(f"problem: {problem.message}")


@app.command()
def convert(
    dicom_dir: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="DICOM folder.")],
    out_dir: Annotated[Path, typer.Argument(help="Output folder (must not exist).")],
    rtstruct: Annotated[
        Path | None, typer.Option(exists=True, dir_okay=False, help="RT-STRUCT: one mask per ROI.")
    ] = None,
    resample_irregular: Annotated[
        bool, typer.Option(help="Resample uneven/missing slices.")
    ] = False,
    resample_tilt: Annotated[bool, typer.Option(help="Resample a gantry-tilted stack.")] = False,
    partial: Annotated[bool, typer.Option(help="Skip contours whose slices are missing.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
) -> None:
    """DICOM series (+ RT-STRUCT) to NIfTI: image.nii.gz and masks/<ROI>.nii.gz."""
    from medseg.config import IngestConfig
    from medseg.io.convert import convert_dicom

    ingest = IngestConfig(
        irregular_slices="resample" if resample_irregular else "error",
        gantry_tilt="resample" if resample_tilt else "error",
        unplaced_contours="skip" if partial else "error",
    )
    with _reported():
        result = convert_dicom(
            dicom_dir, out_dir, rtstruct=rtstruct, ingest=ingest, overwrite=overwrite
        )
    typer.echo(f"image {result.shape}: {result.image}")
    for name, path in result.masks.items():
        typer.echo(f"{name}: {path}")


@app.command("export-rtstruct")
def export_rtstruct(
    ct: Annotated[Path, typer.Option(exists=True, file_okay=False, help="CT series folder.")],
    labels: Annotated[
        Path, typer.Option(exists=True, dir_okay=False, help="Label map (NIfTI/NRRD).")
    ],
    out: Annotated[Path, typer.Option(help="RT-STRUCT file to write.")],
    rois: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="rois.yaml: names, colours, types."),
    ] = None,
    missing_uids: Annotated[
        MissingUidsChoice,
        typer.Option(help="Empty Study/Series UIDs in the CT: error, or generate new ones."),
    ] = MissingUidsChoice.ERROR,
    empty: Annotated[
        EmptyRoiChoice,
        typer.Option(
            help="ROIs with no voxels: omit (readable by every reader) or keep (listed without contours)."
        ),
    ] = EmptyRoiChoice.OMIT,
    overwrite: Annotated[
        bool, typer.Option(help="Replace an existing --out if it is an RT-STRUCT medseg wrote.")
    ] = False,
    tg263: Annotated[
        bool,
        typer.Option(
            "--tg263",
            help="Propose TG-263 standard names (ROIDescription) for structures without one.",
        ),
    ] = False,
) -> None:
    """Export a label map from any tool (TotalSegmentator, nnU-Net, ...) as an RT-STRUCT on its CT."""
    from medseg.io.rois import export_rtstruct as export
    from medseg.io.rois import load_roi_specs
    from medseg.structures import with_standard_names

    with _reported():
        path = export(
            ct,
            labels,
            rois,
            out,
            missing_uids=missing_uids.value,
            empty=empty.value,
            overwrite=overwrite,
            tg263=tg263,
        )
        if tg263 and rois is not None:
            _, proposed, unmapped = with_standard_names(load_roi_specs(rois))
            for name, standard in proposed.items():
                typer.echo(f"TG-263: {name} -> {standard}")
            if unmapped:
                typer.echo(f"TG-263: no standard name for {', '.join(unmapped)}")
    typer.echo(f"RT-STRUCT written: {path}")


def _progress_bar() -> tuple[Any, Any]:
    """A rich progress bar on stderr (cases done/failed/skipped, ETA) and its update callback;
    where stderr is not a terminal (a service, a pipeline's log) no bar, so the log holds
    messages only."""
    if not sys.stderr.isatty():
        return contextlib.nullcontext(), None
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )
    task = bar.add_task("cases", total=None)

    def update(p: Any) -> None:
        bar.update(
            task,
            total=p.total,
            completed=p.finished,
            description=f"done {p.done}, failed {p.failed}, skipped {p.skipped}",
        )

    return bar, update


def _window_bar() -> tuple[Any, Any]:
    """A rich progress bar on stderr over the network's windows of one scan, removed when the
    scan is done, and its update callback (``medseg.infer.WindowProgress``); none where stderr
    is not a terminal, or for a scan of under :data:`_WINDOW_BAR_MIN` windows."""
    if not sys.stderr.isatty():
        return contextlib.nullcontext(), None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    bar = Progress(
        TextColumn("network windows"),
        BarColumn(),
        MofNCompleteColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    task = bar.add_task("windows", total=None, visible=False)

    def update(done: int, total: int) -> None:
        bar.update(task, total=total, completed=done, visible=total >= _WINDOW_BAR_MIN)

    return bar, update


#: Fewest windows for which ``medseg predict`` shows a progress bar (a few seconds on a CPU).
_WINDOW_BAR_MIN = 20


def _run_options(
    config: Path | None,
    *,
    executor: ExecutorChoice = ExecutorChoice.LOCAL,
    workers: int = 1,
    ray_address: str | None = None,
    retry_failed: bool = False,
    progress: Any = None,
) -> RunOptions:
    """The command's :class:`medseg.batch.RunOptions`: ``series_selection``, ``batch`` and
    ``privacy`` from ``--config`` (without it: the model's selection and settings, and the
    default privacy, never the model's), and the command's own options."""
    from medseg.batch import Executor, RunOptions
    from medseg.config import PrivacyConfig, load_config

    experiment = load_config(config) if config is not None else None
    return RunOptions(
        selection=experiment.series_selection if experiment else None,
        settings=experiment.batch if experiment else None,
        privacy=experiment.privacy if experiment else PrivacyConfig(),
        executor=Executor(executor.value),
        workers=workers,
        ray_address=ray_address,
        retry_failed=retry_failed,
        progress=progress,
    )


def _echo_batch(summary: Any) -> None:
    typer.echo(
        f"{len(summary.rows)} cases: {summary.n_done} done, {summary.n_skipped} "
        f"skipped (unchanged), {summary.n_failed} failed"
    )
    for row in summary.rows:
        if row.status is SummaryStatus.FAILED:
            typer.echo(f"failed: {row.case_id}: {row.error_class}", err=True)
    typer.echo(f"summary: {summary.summary_path}\nledger: {summary.ledger_path}")
    evaluation = summary.evaluation
    if evaluation is not None:
        typer.echo("references: ", nl=False)
        _echo_evaluation(evaluation)
    if not summary.ok or (evaluation is not None and not evaluation.ok):
        raise typer.Exit(code=1)


@app.command()
def batch(
    input_root: Annotated[
        Path,
        typer.Argument(
            exists=True, file_okay=False, help="Folder tree of DICOM studies (only read)."
        ),
    ],
    output_root: Annotated[
        Path, typer.Argument(file_okay=False, help="Case folders, ledger.sqlite and summary.csv.")
    ],
    model: ModelOption,
    config: RunConfigOption = None,
    workers: WorkersOption = 1,
    executor: ExecutorOption = ExecutorChoice.LOCAL,
    ray_address: RayAddressOption = None,
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="Run failed cases again even if unchanged.")
    ] = False,
    references: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            file_okay=False,
            help="Folder of reference RT-STRUCTs (e.g. the clinical contours; may be "
            "INPUT_ROOT): each is matched to the case whose series it was drawn on, and the "
            "predictions are evaluated into OUTPUT_ROOT/evaluation and the summary page.",
        ),
    ] = None,
    tolerance_mm: ToleranceMmOption = 2.0,
    tolerances: TolerancesOption = None,
    default_tolerances: DefaultTolerancesOption = True,
    reference_agreement: ReferenceAgreementOption = None,
) -> None:
    """Segment every study under INPUT_ROOT; resumable: a rerun skips done, unchanged cases.
    With --references, also compare each prediction with its reference RT-STRUCT."""
    import dataclasses

    from medseg.batch import run_batch
    from medseg.batch.references import ReferenceOptions
    from medseg.tolerances import load_tolerances

    with _reported():
        if references is None and (tolerances is not None or reference_agreement is not None):
            raise ConfigError(
                "--tolerances and --reference-agreement need --references (the reference "
                "RT-STRUCTs to compare the predictions with)"
            )
        bar, update = _progress_bar()
        options = _run_options(
            config,
            executor=executor,
            workers=workers,
            ray_address=ray_address,
            retry_failed=retry_failed,
            progress=update,
        )
        if references is not None:
            options = dataclasses.replace(
                options,
                references=ReferenceOptions(
                    references,
                    tolerance_mm=tolerance_mm,
                    tolerances=load_tolerances(tolerances) if tolerances is not None else None,
                    tolerances_source=f"file {tolerances}" if tolerances is not None else "",
                    builtin_tolerances=default_tolerances,
                    agreement=reference_agreement,
                ),
            )
        with bar:
            summary = run_batch(input_root, output_root, model, options=options)
    _echo_batch(summary)


pacs_app = typer.Typer(
    help="Work with a PACS (Orthanc): find, segment, send back.", no_args_is_help=True
)
app.add_typer(pacs_app, name="pacs")


@pacs_app.command("run")
def pacs_run(
    output_root: Annotated[
        Path, typer.Argument(file_okay=False, help="Case folders, ledger.sqlite and summary.csv.")
    ],
    url: Annotated[
        str, typer.Option("--url", help="Orthanc REST API, http(s)://[USER:PASSWORD@]HOST[:PORT].")
    ],
    model: ModelOption,
    modality: Annotated[
        list[str] | None,
        typer.Option("--modality", help="Series modality to take (repeat); default CT and MR."),
    ] = None,
    date_from: Annotated[str | None, typer.Option(help="First StudyDate, YYYYMMDD.")] = None,
    date_to: Annotated[str | None, typer.Option(help="Last StudyDate, YYYYMMDD.")] = None,
    include_unstable: Annotated[
        bool, typer.Option("--include-unstable", help="Also take studies still arriving.")
    ] = False,
    send: Annotated[bool, typer.Option(help="Send RT-STRUCT and SEG back to Orthanc.")] = True,
    config: RunConfigOption = None,
    workers: WorkersOption = 1,
    executor: ExecutorOption = ExecutorChoice.LOCAL,
    ray_address: RayAddressOption = None,
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="Run failed studies again even if unchanged.")
    ] = False,
) -> None:
    """Find studies in Orthanc, segment those new or changed, send the results into their study."""
    from medseg.batch.orthanc import PacsQuery, run_pacs

    with _reported():
        query = PacsQuery(
            tuple(modality) if modality else ("CT", "MR"), date_from, date_to, include_unstable
        )
        bar, update = _progress_bar()
        options = _run_options(
            config,
            executor=executor,
            workers=workers,
            ray_address=ray_address,
            retry_failed=retry_failed,
            progress=update,
        )
        with bar:
            summary = run_pacs(url, output_root, model, query=query, options=options, send=send)
    failed = [d for d in summary.deliveries if d.status == "failed"]
    typer.echo(
        f"sent {summary.n_sent} objects to {url.split('@')[-1]}, {len(failed)} failed"
        + (
            f"; {summary.n_unstable} studies still arriving, left for later"
            if summary.n_unstable
            else ""
        )
    )
    for delivery in failed:
        typer.echo(f"not sent: {delivery.case_id} {delivery.object}: {delivery.message}", err=True)
    _echo_batch(summary.batch)  # exits 1 if a case failed
    if failed:
        raise typer.Exit(code=1)


@pacs_app.command("listen")
def pacs_listen(
    output_root: Annotated[
        Path, typer.Argument(file_okay=False, help="Received files, case folders, ledger.sqlite.")
    ],
    model: ModelOption,
    aet: Annotated[str, typer.Option("--aet", help="AE title of the listener.")] = "MEDSEG",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="DICOM port.")] = 11112,
    host: Annotated[
        str,
        typer.Option(
            "--host", help="Address to listen on (default loopback; 0.0.0.0 for every interface)."
        ),
    ] = "127.0.0.1",
    allow_aet: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-aet",
            help="Calling AE title allowed to send (repeat); '*' accepts any. Required.",
        ),
    ] = None,
    reprocess_changed: Annotated[
        bool,
        typer.Option(
            "--reprocess-changed",
            help="Accept a changed instance (same SOPInstanceUID, other "
            "content) of a study already processed and run the study again (default: refuse it).",
        ),
    ] = False,
    destination: Annotated[
        str | None, typer.Option("--destination", help="Orthanc URL to send RT-STRUCT/SEG to.")
    ] = None,
    quiet_period: Annotated[
        float,
        typer.Option(
            "--quiet-period", min=0.0, help="Seconds without new instances before a study runs."
        ),
    ] = 30.0,
    config: RunConfigOption = None,
) -> None:
    """Receive studies by C-STORE, segment each once it is complete, send the results on."""
    from medseg.batch.listener import listen

    with _reported():
        options = _run_options(config)
        try:
            if not allow_aet:
                raise ConfigError(
                    "--allow-aet: name the calling AE titles allowed to send "
                    "(repeat the option), or '*' to accept any"
                )
            listen(
                output_root,
                model,
                aet=aet,
                port=port,
                host=host,
                destination=destination,
                quiet_period_s=quiet_period,
                allowed_calling_aets=tuple(allow_aet),
                reprocess_changed=reprocess_changed,
                options=options,
            )
        except (KeyboardInterrupt, _Terminated):  # the listener's normal way to stop
            typer.echo("stopped")


if __name__ == "__main__":  # pragma: no cover
    app()
