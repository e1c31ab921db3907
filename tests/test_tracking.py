"""MLflow tracking against a local store and a real `mlflow server`, and model resolution."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from medseg.config import ExperimentConfig, load_config
from medseg.errors import ConfigError, ModelError
from medseg.model import build_network, load_checkpoint, save_checkpoint
from medseg.tracking import Tracker, flatten_params, resolve_model, resolve_tracking_uri

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
SERVER_START_TIMEOUT_S = 90.0


def _config(tracking_uri: str | None, registered: str | None = "tiny-model") -> ExperimentConfig:
    config = load_config(TINY)
    tracking = config.tracking.model_copy(
        update={"tracking_uri": tracking_uri, "registered_model_name": registered}
    )
    return config.model_copy(update={"tracking": tracking})


def _checkpoint(tmp_path: Path, config: ExperimentConfig) -> Path:
    network = build_network(config.model)
    return save_checkpoint(tmp_path / "ckpt" / "best.pt", network, config, {"epoch": 7})


def _log_and_resolve(config: ExperimentConfig, checkpoint: Path, tmp_path: Path) -> None:
    """Log a run with a model, then resolve the checkpoint through every kind of URI."""
    import mlflow

    with Tracker(config, run_name="test") as tracker:
        tracker.log_metrics({"train_loss": 1.0, "val_dice": 0.25}, step=1)
        tracker.log_metrics({"train_loss": 0.5, "val_dice": 0.75}, step=2)
        model_uri = tracker.log_model(checkpoint)
        run_id = tracker.run_id
    uri = tracker.tracking_uri
    assert model_uri == f"runs:/{run_id}/model"

    client = mlflow.MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.patch_size"] == "16,32,32"
    assert [m.value for m in client.get_metric_history(run_id, "val_dice")] == [0.25, 0.75]
    config_yaml = mlflow.artifacts.download_artifacts(
        run_id=run_id,
        artifact_path="config/config.yaml",
        tracking_uri=uri,
        dst_path=str(tmp_path / "config-download"),
    )
    assert "patch_size: [16, 32, 32]" in Path(config_yaml).read_text()

    expected = checkpoint.read_bytes()
    uris = [
        model_uri,
        f"runs:/{run_id}/checkpoints/best.pt",
        f"models:/{config.tracking.registered_model_name}/1",
    ]
    for index, resolvable in enumerate(uris):
        local = resolve_model(resolvable, tracking_uri=uri, dst_dir=tmp_path / f"dl{index}")
        assert local.is_file(), resolvable
        assert local.read_bytes() == expected, resolvable
        assert load_checkpoint(local).extra["epoch"] == 7
    _check_pytorch_flavour(model_uri, uri, checkpoint, tmp_path)


def _check_pytorch_flavour(model_uri: str, uri: str, checkpoint: Path, tmp_path: Path) -> None:
    """The logged model is an ``mlflow.pytorch`` model with signature, input example and pins
    that computes what the checkpoint's network computes."""
    import mlflow
    import mlflow.pytorch
    import torch

    from medseg.tracking import _using_tracking_uri

    with _using_tracking_uri(uri):
        info = mlflow.models.get_model_info(model_uri)
        module = mlflow.pytorch.load_model(model_uri, dst_path=str(tmp_path / "flavour"))
    assert "pytorch" in info.flavors
    assert info.signature is not None
    assert tuple(info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == (-1, 1, -1, -1, -1)
    assert info.saved_input_example_info is not None
    (requirements_file,) = (tmp_path / "flavour").rglob("requirements.txt")
    requirements = requirements_file.read_text()
    assert f"torch=={torch.__version__}" in requirements
    assert "medseg==" in requirements
    reference = load_checkpoint(checkpoint).network.eval()
    x = torch.rand(2, 1, 16, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        torch.testing.assert_close(module.eval()(x), reference(x))


@pytest.fixture
def no_tracking_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_tracking_uri_precedence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_tracking_env: None
) -> None:
    assert resolve_tracking_uri(None, tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert resolve_tracking_uri(None) == "http://127.0.0.1:1"
    assert resolve_tracking_uri("sqlite:///x.db") == "sqlite:///x.db"


def test_params_are_flat_and_hide_credentials() -> None:
    params = flatten_params(_config("http://user:secret@mlflow.example:5000"))
    assert params["model.channels"] == "4,8,16"
    assert params["model.labels.1"] == "tumour"
    assert params["tracking.tracking_uri"] == "http://user:***@mlflow.example:5000"
    assert not any("secret" in value for value in params.values())


def test_local_store_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_tracking_env: None
) -> None:
    import mlflow

    monkeypatch.chdir(tmp_path)
    before = mlflow.get_tracking_uri()
    config = _config(None)
    _log_and_resolve(config, _checkpoint(tmp_path, config), tmp_path)
    assert (tmp_path / "mlflow.db").is_file()
    assert (tmp_path / "mlruns").is_dir()
    assert mlflow.get_tracking_uri() == before  # the global URI is restored
    assert "MLFLOW_TRACKING_URI" not in os.environ


def test_failed_training_marks_the_run_failed(tmp_path: Path) -> None:
    import mlflow

    config = _config(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(ZeroDivisionError), Tracker(config) as tracker:
        run_id = tracker.run_id
        1 / 0  # noqa: B018
    assert mlflow.MlflowClient(tracker.tracking_uri).get_run(run_id).info.status == "FAILED"
    assert mlflow.active_run() is None


def test_resolve_local_paths_and_errors(tmp_path: Path) -> None:
    config = _config(None)
    checkpoint = _checkpoint(tmp_path, config)
    assert resolve_model(checkpoint) == checkpoint
    assert resolve_model(str(checkpoint.parent)) == checkpoint  # a folder with one .pt
    (checkpoint.parent / "last.pt").write_bytes(checkpoint.read_bytes())
    with pytest.raises(ModelError, match="exactly one"):
        resolve_model(checkpoint.parent)
    with pytest.raises(ModelError, match="no such checkpoint"):
        resolve_model(tmp_path / "absent.pt")
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(ModelError, match="no MLflow store at"):  # and none is created
        resolve_model("runs:/0123456789abcdef0123456789abcdef/model", tracking_uri=store)
    assert not (tmp_path / "mlflow.db").exists()
    import mlflow

    mlflow.MlflowClient(store).search_experiments()  # an empty store, made on purpose
    assert (tmp_path / "mlflow.db").is_file()
    with pytest.raises(ModelError, match="cannot download"):
        resolve_model("runs:/0123456789abcdef0123456789abcdef/model", tracking_uri=store)
    with pytest.raises(ModelError, match="cannot download"):
        resolve_model("models:/never-registered/1", tracking_uri=store)


def test_unusable_store_is_a_config_error() -> None:
    import mlflow

    before = mlflow.get_tracking_uri()
    config = _config("sqlite:////proc/medseg-no-such-dir/mlflow.db")
    with pytest.raises(ConfigError, match="cannot start an MLflow run"), Tracker(config):
        pass
    assert mlflow.get_tracking_uri() == before


# ---------------------------------------------------------------------------------------------
# a real tracking server


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlflow server` on a free loopback port with a sqlite store; stopped afterwards."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    executable = Path(sys.executable).with_name("mlflow")
    log = (root / "server.log").open("wb")
    command = [
        str(executable), "server",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--default-artifact-root", str(root / "artifacts"),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--workers", "1",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                tail = (root / "server.log").read_text()[-2000:]
                pytest.fail(f"mlflow server exited with {process.returncode}: {tail}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server: no /health answer in {SERVER_START_TIMEOUT_S} s")
            time.sleep(0.5)
        yield url
    finally:
        # The server runs workers as children; stop its whole session (started above).
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        log.close()


@pytest.mark.slow
def test_tracking_server_round_trip(mlflow_server: str, tmp_path: Path) -> None:
    config = _config(mlflow_server, registered="tiny-on-server")
    _log_and_resolve(config, _checkpoint(tmp_path, config), tmp_path)


def test_a_tracking_uri_scope_leaves_no_global_uri_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A URI set only by ``$MLFLOW_TRACKING_URI`` is not pinned into MLflow's process-wide URI
    when a scope exits: once the variable is gone, MLflow resolves as it did before the scope
    (an earlier pin made later ``runs:/`` loads of another store fail with "Run not found")."""
    import mlflow
    from mlflow.tracking._tracking_service import utils as tracking_utils

    from medseg.tracking import _using_tracking_uri

    stale = (tmp_path / "stale").as_uri()
    monkeypatch.setattr(tracking_utils, "_tracking_uri", None)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", stale)
    with _using_tracking_uri((tmp_path / "scoped").as_uri()):
        assert mlflow.get_tracking_uri() == (tmp_path / "scoped").as_uri()
    assert os.environ["MLFLOW_TRACKING_URI"] == stale
    assert tracking_utils._tracking_uri is None
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert mlflow.get_tracking_uri() != stale
    # a URI the caller set explicitly is restored as it was
    mlflow.set_tracking_uri((tmp_path / "explicit").as_uri())
    with _using_tracking_uri((tmp_path / "scoped").as_uri()):
        pass
    assert tracking_utils._tracking_uri == (tmp_path / "explicit").as_uri()
    assert os.environ.get("MLFLOW_TRACKING_URI") == (tmp_path / "explicit").as_uri()
