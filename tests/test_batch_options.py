"""`medseg.batch.RunOptions`: the one set of run-wide options of a batch, a PACS run and the
listener; its checks, its defaults from the model's config, the CLI's options, and the loose
keywords of 0.1.0 development, which still work (with a warning) until 0.2."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from medseg.batch import BatchSummary, Executor, ModelRef, RunOptions, run_batch, run_cases
from medseg.batch.listener import listen
from medseg.batch.orthanc import run_pacs
from medseg.cli import app
from medseg.config import BatchConfig, PrivacyConfig, SeriesSelection, load_config
from medseg.errors import ConfigError, InputError, ModelError
from tests.conftest import _free_port

REPO = Path(__file__).resolve().parents[1]
UNUSED_MODEL = ModelRef(Path("unused.pt"), "sha256:0000000000000000")


def _never(spec: Any, folder: Path) -> Path:
    raise AssertionError("no case should be prepared")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"workers": 0}, "workers must be an integer >= 1, got 0"),
        ({"workers": True}, "workers must be an integer >= 1, got True"),
        ({"workers": 2.0}, "workers must be an integer >= 1, got 2.0"),
        ({"executor": "gpu"}, "executor must be one of local, pool, ray, got 'gpu'"),
        ({"retry_failed": "yes"}, "retry_failed must be True or False, got 'yes'"),
        ({"settings": {"fingerprint": "stat"}}, "settings must be a BatchConfig or None, got dict"),
        ({"selection": "CT"}, "selection must be a SeriesSelection or None, got 'CT'"),
        ({"privacy": None}, "privacy must be a PrivacyConfig, got NoneType"),
        ({"progress": 3}, "progress must be a callable or None, got 3"),
        (
            {"executor": "ray", "ray_address": " "},
            "ray_address must be a Ray address or None, got ' '",
        ),
        (
            {"ray_address": "ray://head:10001"},
            (
                "ray_address is set but executor is 'local': a Ray cluster is joined only "
                "with executor 'ray'"
            ),
        ),
    ],
    ids=[
        "workers-zero",
        "workers-bool",
        "workers-float",
        "executor-unknown",
        "retry-not-bool",
        "settings-dict",
        "selection-str",
        "privacy-none",
        "progress-not-callable",
        "ray-address-blank",
        "ray-address-without-ray",
    ],
)
def test_run_options_refuse_a_bad_field_in_one_line_naming_it(
    kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        RunOptions(**kwargs)
    assert str(caught.value) == message


def test_run_options_defaults_and_the_executor_used() -> None:
    options = RunOptions()
    assert (options.selection, options.settings) == (None, None)
    assert options.privacy == PrivacyConfig() and not options.privacy.log_identifiers
    assert (options.executor, options.workers, options.retry_failed) == (Executor.LOCAL, 1, False)
    assert options.ray_address is None and options.progress is None
    assert options.executor_used is Executor.LOCAL and options.in_this_process
    pool = RunOptions(workers=2)
    assert pool.executor_used is Executor.POOL and not pool.in_this_process
    assert RunOptions(executor="ray", ray_address="auto").executor is Executor.RAY
    with pytest.raises(AttributeError):
        options.workers = 3  # type: ignore[misc]


def test_run_options_take_selection_and_settings_from_the_model_never_privacy() -> None:
    config = load_config(REPO / "configs" / "tiny.yaml")
    config = config.model_copy(
        update={
            "batch": BatchConfig(fingerprint="content"),
            "series_selection": SeriesSelection(min_slices=7),
            "privacy": PrivacyConfig(log_identifiers=True),
        }
    )
    filled = RunOptions(workers=2).with_defaults_from(config)
    assert filled.settings == config.batch and filled.selection == config.series_selection
    assert not filled.privacy.log_identifiers  # a model may come from anywhere
    assert filled.workers == 2
    mine = RunOptions(settings=BatchConfig(), selection=SeriesSelection())
    assert mine.with_defaults_from(config) == mine


def test_the_old_keywords_still_work_with_a_deprecation_warning(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with pytest.warns(DeprecationWarning, match=r"run_cases\(settings=, workers=\).*RunOptions"):
        summary = run_cases(
            (), out, UNUSED_MODEL, _never, settings=BatchConfig(ledger_timeout_s=5.0), workers=2
        )
    assert isinstance(summary, BatchSummary) and summary.rows == ()
    db = sqlite3.connect(out / "ledger.sqlite")
    assert db.execute("SELECT executor, workers FROM runs").fetchall() == [("pool", 2)]
    db.close()
    with (
        pytest.warns(DeprecationWarning, match=r"run_batch\(privacy=, workers=\)"),
        pytest.raises(ModelError),
    ):
        run_batch(out, tmp_path / "b", tmp_path / "no.pt", workers=2, privacy=None)
    with (
        pytest.warns(DeprecationWarning, match=r"run_pacs\(retry_failed=\)"),
        pytest.raises(InputError),  # nothing listens there
    ):
        run_pacs(f"http://127.0.0.1:{_free_port()}", out, "no.pt", retry_failed=True)
    with (
        pytest.warns(DeprecationWarning, match=r"listen\(selection=\)"),
        pytest.raises(ConfigError, match="allowed_calling_aets"),
    ):
        listen(out, "no.pt", selection=SeriesSelection())


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda out: run_cases((), out, UNUSED_MODEL, _never, wokers=2),
            "run_cases() got an unexpected keyword argument 'wokers'",
        ),
        (
            lambda out: run_cases((), out, UNUSED_MODEL, _never, options=RunOptions(), workers=2),
            "run_cases() takes options= or the old workers=, not both",
        ),
        (
            # listen never took an executor
            lambda out: listen(out, "no.pt", executor=Executor.POOL),
            "listen() got an unexpected keyword argument 'executor'",
        ),
    ],
    ids=["misspelt", "both", "never-taken"],
)
def test_a_keyword_never_taken_or_given_twice_is_a_type_error(
    tmp_path: Path, call: Any, message: str
) -> None:
    with pytest.raises(TypeError) as caught:
        call(tmp_path)
    assert str(caught.value) == message


def test_cli_ray_address_without_the_ray_executor_is_exit_2_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    result = CliRunner().invoke(
        app,
        [
            "batch",
            str(tmp_path / "in"),
            str(tmp_path / "out"),
            "--model",
            str(tmp_path / "no.pt"),
            "--ray-address",
            "ray://head:10001",
        ],
    )
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert lines == [
        (
            "error: ray_address is set but executor is 'local': a Ray cluster is joined "
            "only with executor 'ray'"
        )
    ]
    assert not (tmp_path / "out").exists()
