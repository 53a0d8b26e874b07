"""Training over several processes (issue #35): torchrun starts 2 CPU processes (gloo) that train one model
into one run folder, with the validation metrics of the whole split; a failing setup stops both in one line."""

import csv
import json
import os
import re
import subprocess
import sys

import pytest
import torch
from fastai.losses import LabelSmoothingCrossEntropyFlat

from fer_fastai.data import load_splits, validation_faces
from fer_fastai.distributed import ONE_PROCESS, Processes, weights_digest
from fer_fastai.errors import FerError
from fer_fastai.model_io import load_model
from fer_fastai.predict import TorchPredictor
from fer_fastai.preprocess import pixels_to_input
from fer_fastai.train import TrainConfig, start_or_resume

from conftest import write_folder_dataset

LAUNCH_TIMEOUT = 240  # seconds; a hung process group fails the test instead of the suite


def torchrun(*arguments: str, processes: int = 2) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node N -m fer_fastai.train ARGUMENTS` on this machine, as a user types it."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               "-m", "fer_fastai.train", *arguments]
    return subprocess.run(command, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """One epoch over 2 processes. 9 faces per class hold out 7 for validation: an odd number, so fastai's
    DistributedDL pads the second process's shard, and the metrics show whether the padding was cut off."""
    root = tmp_path_factory.mktemp("distributed")
    data = write_folder_dataset(root / "data", {"train": 9, "test": 2})
    out = root / "run"
    result = torchrun("--data", str(data), "--out", str(out), "--arch", "vgg", "--width", "8", "--epochs", "1",
                      "--bs", "8", "--lr", "1e-3", "--device", "cpu", "--precision", "fp32", "--keep", "last")
    assert result.returncode == 0, result.stdout + result.stderr
    return data, out, result


def test_two_processes_write_one_complete_run_folder(two_process_run):
    _, out, result = two_process_run
    assert {"model.safetensors", "model.json", "history.csv", "metrics.json", "checkpoint.pth", "plots"} <= {
        path.name for path in out.iterdir()}
    assert not any(path.name.endswith(".tmp") for path in out.rglob("*"))
    assert result.stdout.count("train_loss") == 1  # process 1 prints nothing: one progress table, one summary
    assert result.stdout.count("run folder:") == 1
    assert json.loads((out / "metrics.json").read_text())["processes"] == 2
    checkpoint = torch.load(out / "checkpoint.pth", weights_only=True)
    assert not any(name.startswith("module.") for name in checkpoint["model"])  # the format a 1-process run writes
    assert checkpoint["processes"] == 2 and len(checkpoint["rank_rng"]) == 1


def test_both_processes_end_with_the_saved_weights(two_process_run):
    _, out, result = two_process_run
    logged = re.search(r"all 2 processes ended with the same weights \(sha256 (\w+)\)", result.stdout + result.stderr)
    assert logged, result.stdout + result.stderr
    model, _ = load_model(out / "model.safetensors")
    assert logged.group(1) == weights_digest(model)


def test_validation_metrics_cover_the_whole_split_as_one_process_scores_it(two_process_run):
    data, out, _ = two_process_run
    history = list(csv.DictReader((out / "history.csv").open()))
    assert len(history) == 1
    scores = out.parent / "evaluate.json"
    evaluated = subprocess.run([sys.executable, "-m", "fer_fastai.evaluate", str(out / "model.safetensors"),
                                "--data", str(data), "--split", "valid", "--json", str(scores)],
                               capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads(scores.read_text())["report"]
    assert report["n"] == 7
    assert float(history[0]["accuracy"]) == pytest.approx(report["accuracy"], abs=1e-6)
    assert float(history[0]["f1_score"]) == pytest.approx(report["macro_f1"], abs=1e-6)
    # evaluate's loss is calibrated; the history's is the training loss (label smoothing 0.1) at temperature 1
    model, card = load_model(out / "model.safetensors")
    faces = validation_faces(load_splits(data), card.recipe)
    logits = torch.from_numpy(TorchPredictor(model, card).predict_logits(pixels_to_input(faces.pixels)))
    loss = LabelSmoothingCrossEntropyFlat(eps=0.1)(logits, torch.from_numpy(faces.labels))
    assert float(history[0]["valid_loss"]) == pytest.approx(loss.item(), abs=1e-5)


def test_a_failing_setup_stops_every_process_with_one_message(tmp_path):
    result = torchrun("--data", str(tmp_path / "missing"), "--out", str(tmp_path / "run"), "--epochs", "1",
                      "--lr", "1e-3", "--device", "cpu")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert output.count("error: data path") == 1, output
    assert "[rank" not in output  # no process's traceback, only the launcher's own report
    assert not (tmp_path / "run").exists()


def test_the_batch_must_split_evenly_over_the_processes():
    assert Processes(rank=0, size=4).batch_share(64) == 16 and ONE_PROCESS.batch_share(7) == 7
    with pytest.raises(FerError, match="--bs 30 does not split evenly over 4 processes"):
        Processes(rank=0, size=4).batch_share(30)


def test_lr_find_is_refused_over_several_processes(tmp_path):
    config = TrainConfig(data="", out=str(tmp_path), lr=None)
    assert start_or_resume(config, tmp_path, False, None, ONE_PROCESS)[0].lr is None
    with pytest.raises(FerError, match="--lr auto runs lr_find, which takes one process"):
        start_or_resume(config, tmp_path, False, None, Processes(rank=0, size=2))


def test_one_process_steps_are_plain_calls():
    assert ONE_PROCESS.from_main(lambda: 3) == 3 and ONE_PROCESS.in_waves(lambda: 4) == 4
    assert ONE_PROCESS.gather("x") == ["x"] and ONE_PROCESS.main and ONE_PROCESS.seed(42) == 42
    assert Processes(rank=1, size=2).seed(42) == 43 and not Processes(rank=1, size=2).main
    assert ONE_PROCESS.place(torch.device("cpu")) == torch.device("cpu")
    assert ONE_PROCESS.random_state({"rng": "state"}) == "state"
    assert Processes(rank=1, size=2).random_state({"rng": "0", "processes": 2, "rank_rng": ["1"]}) == "1"
    assert Processes(rank=1, size=2).random_state({"rng": "0"}) is None  # a 1-process checkpoint has none for it


def test_weights_digest_sees_buffers():
    model = torch.nn.BatchNorm1d(3)
    before = weights_digest(model)
    model.running_mean += 1
    assert weights_digest(model) != before


def test_each_process_takes_its_own_gpu_and_there_must_be_one():
    gpus = torch.cuda.device_count()
    assert Processes(rank=1, size=2, local_rank=1).place(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(FerError, match=f"which has {gpus} GPU"):
        Processes(rank=gpus, size=gpus + 2, local_rank=gpus).place(torch.device("cuda"))
