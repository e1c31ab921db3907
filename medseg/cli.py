"""The ``medseg`` command line. Each command checks its paths, calls one library function and
prints a summary. Heavy imports (torch, MONAI, MLflow) happen inside the commands.

Exit codes: 0 success, 1 some cases failed, 2 usage, config or input error.
"""

from __future__ import annotations

import enum
import logging
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer

import medseg
from medseg.errors import MedsegError

__all__ = ["app"]

app = typer.Typer(
    name="medseg",
    help="3D medical image segmentation: DICOM/NIfTI in, MONAI U-Net, RT-STRUCT out.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _builtin_config(name: str) -> Path:
    """Path of a YAML shipped in ``configs/``.

    Installed wheels carry ``configs/`` as the ``medseg.configs`` package; in a source
    checkout (editable install, or run from the repository root, where the ``medseg`` folder
    shadows the installed mapping) it is the repository's ``configs/`` folder.
    """
    from importlib.resources import files

    try:
        return Path(str(files("medseg.configs") / name))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[1] / "configs" / name



class MissingUidsChoice(str, enum.Enum):
    """What to do when the referenced CT has empty Study/Series Instance UIDs."""

    ERROR = "error"
    GENERATE = "generate"


class EmptyRoiChoice(str, enum.Enum):
    """What to do with a ROI that has no voxels."""

    KEEP = "keep"
    OMIT = "omit"


def _fail(error: MedsegError) -> NoReturn:
    typer.echo(f"error: {error}", err=True)
    raise typer.Exit(code=2)


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
) -> None:
    """medseg command line."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


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
    from medseg.config import load_config
    from medseg.pipeline import run_demo

    try:
        result = run_demo(load_config(config or _builtin_config("demo.yaml")), out, n_cases=cases)
    except MedsegError as error:
        _fail(error)
    typer.echo(f"tumour volume: predicted {result.predicted_volume_ml:.2f} mL, "
               f"truth {result.true_volume_ml:.2f} mL, Dice {result.dice:.3f}")
    typer.echo(f"MLflow run id: {result.run_id}  (model: {result.model_uri})")
    typer.echo(f"outputs: {result.case.out_dir} (rtstruct.dcm, seg.dcm, labels.nii.gz, "
               "volumes.json, lesions.csv, report/report.html)")
    typer.echo(f"summary: {result.summary_path}")
    typer.echo(f"MLflow UI: .venv/bin/mlflow ui --backend-store-uri {result.tracking_uri}")


@app.command()
def train(
    config: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Experiment YAML.")],
    out: Annotated[Path, typer.Option("--out", help="Checkpoint folder.")] = Path("medseg-train"),
) -> None:
    """Train a model from an experiment config; tracked in MLflow."""
    from medseg.config import load_config
    from medseg.pipeline import train_from_config

    try:
        result = train_from_config(load_config(config), out)
    except MedsegError as error:
        _fail(error)
    typer.echo(f"best checkpoint: {result.checkpoint_path} (epoch {result.best_epoch}, "
               f"val Dice {result.best_val_dice})")
    typer.echo(f"MLflow run id: {result.run_id}  model: {result.model_uri}")


@app.command()
def predict(
    input_path: Annotated[Path, typer.Argument(exists=True, help="DICOM series folder or NIfTI.")],
    out_dir: Annotated[Path, typer.Argument(help="Output folder (must not exist).")],
    model: Annotated[
        str, typer.Option("--model", help="Checkpoint path, runs:/<id>/model or models:/<name>/<v>.")
    ],
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
) -> None:
    """Segment one scan: writes rtstruct.dcm, labels.nii.gz and volumes.json."""
    from medseg.pipeline import load_model, predict_case

    try:
        result = predict_case(load_model(model), input_path, out_dir, overwrite=overwrite)
    except MedsegError as error:
        _fail(error)
    for name, volume_ml in result.volumes_ml.items():
        typer.echo(f"{name}: {volume_ml:.2f} mL")
    typer.echo(f"outputs: {result.out_dir}")


@app.command()
def evaluate(
    pred: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="Predicted label maps.")],
    ref: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="Reference label maps.")],
    out: Annotated[Path, typer.Option(help="Folder for the metrics CSV/JSON.")] = Path("medseg-evaluation"),
    tolerance_mm: Annotated[float, typer.Option(min=0.0, help="Surface Dice tolerance (mm).")] = 2.0,
) -> None:
    """Dice, IoU, HD, HD95, ASSD, surface Dice and volume errors, per case and summarised."""
    from medseg.metrics import evaluate_folder

    try:
        summary = evaluate_folder(pred, ref, out, labels=None, tolerance_mm=tolerance_mm)
    except MedsegError as error:
        _fail(error)
    typer.echo(f"{len(summary.cases)} cases evaluated, {len(summary.failures)} failed")
    for failure in summary.failures:
        typer.echo(f"failed: {failure.case}: {failure.reason}", err=True)
    typer.echo(f"per case: {summary.per_case_csv}\nsummary: {summary.summary_csv}")
    if not summary.ok:
        raise typer.Exit(code=1)


@app.command()
def inspect(
    path: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="Folder to scan.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the inventory as JSON.")] = False,
) -> None:
    """List the studies and series under a folder, with the problems found in each."""
    import json

    from medseg.io.discovery import scan_folder

    try:
        inventory = scan_folder(path)
    except MedsegError as error:
        _fail(error)
    if as_json:
        typer.echo(json.dumps(inventory.to_dict(), indent=2))
        return
    typer.echo(f"{inventory.n_dicom_files} DICOM files of {inventory.n_files} under {path}")
    for study in inventory.studies:
        typer.echo(f"study {study.study_instance_uid} {study.study_description or ''}".rstrip())
        for s in study.series:
            spacing = "" if s.pixel_spacing_mm is None else (
                f" {s.pixel_spacing_mm[0]:g}x{s.pixel_spacing_mm[1]:g}"
                + (f"x{s.slice_spacing_mm:g}" if s.slice_spacing_mm else "") + " mm"
            )
            orientation = f" {s.orientation.value}" if s.orientation is not None else ""
            typer.echo(f"  {s.describe()}{orientation}{spacing}")
            for problem in s.problems:
                typer.echo(f"    problem: {problem.message}")
    for problem in inventory.problems:
        typer.echo(f"problem: {problem.message}")


@app.command("export-rtstruct")
def export_rtstruct(
    ct: Annotated[Path, typer.Option(exists=True, file_okay=False, help="CT series folder.")],
    labels: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="Label map (NIfTI/NRRD).")],
    out: Annotated[Path, typer.Option(help="RT-STRUCT file to write.")],
    rois: Annotated[
        Path | None, typer.Option(exists=True, dir_okay=False, help="rois.yaml: names, colours, types.")
    ] = None,
    missing_uids: Annotated[
        MissingUidsChoice, typer.Option(help="Empty Study/Series UIDs in the CT: error, or generate new ones.")
    ] = MissingUidsChoice.ERROR,
    empty: Annotated[EmptyRoiChoice, typer.Option(help="ROIs with no voxels: keep or omit.")] = EmptyRoiChoice.KEEP,
) -> None:
    """Export a label map from any tool (TotalSegmentator, nnU-Net, ...) as an RT-STRUCT on its CT."""
    from medseg.io.rois import export_rtstruct as export

    try:
        path = export(ct, labels, rois, out, missing_uids=missing_uids.value, empty=empty.value)
    except MedsegError as error:
        _fail(error)
    typer.echo(f"RT-STRUCT written: {path}")


if __name__ == "__main__":  # pragma: no cover
    app()
