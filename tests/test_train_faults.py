"""Training fails loudly and loses nothing (issue #30): a diverged run, --resume with other flags, an
interrupt at or inside an epoch, a failed or damaged checkpoint, a one-face data set and two runs into
one folder each end in one line, and a resumed run trains exactly what an uninterrupted one does."""

import errno
import fcntl
import logging
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from fer_fastai import callbacks as callbacks_module
from fer_fastai.callbacks import ResumableLearner, StopOnDivergence, save_checkpoint
from fer_fastai.data import load_splits, make_dataloaders
from fer_fastai.errors import FerError
from fer_fastai.train import TrainConfig, main, make_learner, train

TINY = {"arch": "vgg", "arch_kwargs": {"widths": [8, 16, 32, 64]}, "bs": 8, "lr": 1e-3, "device": "cpu"}
TINY_FLAGS = {"arch": "vgg", "width": 8, "bs": 8, "lr": "1e-3", "device": "cpu"}  # the same run as TINY


def tiny_config(data, out, **overrides) -> TrainConfig:
    return TrainConfig(data=str(data), out=str(out), **{**TINY, **overrides})


def one_line_error(capsys, exit_info) -> str:
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "\n" not in error
    return error


def same_weights(first, second) -> bool:
    first, second = load_file(first), load_file(second)
    return first.keys() == second.keys() and all(torch.equal(first[name], second[name]) for name in first)


# 1. divergence

def test_a_diverging_run_stops_in_one_line_and_saves_nothing(face_folder, tmp_path, capsys):
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(data=str(face_folder), out=str(run), epochs=1, **{**TINY_FLAGS, "lr": "1e6"})
    error = one_line_error(capsys, exit_info)
    assert error.startswith("error: training diverged in epoch 0, batch ") and " at learning rate " in error
    assert "lower --lr, or with --lr auto" in error
    assert not any((run / name).exists() for name in ("model.safetensors", "checkpoint.pth", "metrics.json"))


def test_a_non_finite_loss_stops_before_its_step(face_folder, tmp_path):
    dls = make_dataloaders(load_splits(face_folder), bs=8, device=torch.device("cpu"))
    learn = make_learner(dls, tiny_config(face_folder, tmp_path, precision="fp32"), tmp_path)
    loss_func, calls = learn.loss_func, []

    def nan_at_third_training_batch(pred, *targets):
        calls.append(learn.training)
        loss = loss_func(pred, *targets)
        return loss * float("nan") if learn.training and sum(calls) == 3 else loss

    learn.loss_func = nan_at_third_training_batch
    with pytest.raises(FerError, match=r"^training diverged in epoch 0, batch 3 of 6, at learning rate \S+: the "
                                       r"training loss is nan; train again with a lower --lr"):
        learn.fit(1, 1e-3, cbs=[StopOnDivergence()])
    assert calls == [True, True, True]  # stopped there: no more batches, no validation
    assert all(torch.isfinite(tensor).all() for tensor in learn.model.state_dict().values() if tensor.is_floating_point())


def test_non_finite_weights_are_never_saved_even_without_the_stop(face_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(StopOnDivergence, "after_loss", lambda self: None)
    monkeypatch.setattr(StopOnDivergence, "after_train", lambda self: None)
    run = tmp_path / "run"
    with pytest.raises(FerError, match="in epoch 0 at learning rate .*: the model holds NaN or inf, so it was not "
                                       f"saved to {re.escape(str(run / 'model.safetensors'))}"):
        train(tiny_config(face_folder, run, epochs=1, lr=1e6, keep="last"))
    assert not (run / "model.safetensors").exists() and not (run / "checkpoint.pth").exists()


def test_a_checkpoint_with_non_finite_weights_is_refused(face_folder, tmp_path):
    dls = make_dataloaders(load_splits(face_folder), bs=8, device=torch.device("cpu"))
    learn = make_learner(dls, tiny_config(face_folder, tmp_path), tmp_path)
    learn.create_opt()
    learn.epoch = 4
    with torch.no_grad():
        next(learn.model.parameters())[0] = float("inf")
    with pytest.raises(FerError, match="diverged in epoch 4 .*so it was not saved to .*checkpoint.pth"):
        save_checkpoint(learn, tmp_path / "checkpoint.pth", next_epoch=5)
    assert not (tmp_path / "checkpoint.pth").exists()


# 2a. --resume takes no flag that would change the recipe

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, face_folder):
    """A finished 1-epoch run (the module's tests only read it, or are refused before writing)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FER_FASTAI_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        return train(tiny_config(face_folder, tmp_path_factory.mktemp("finished") / "run", epochs=1))


@pytest.mark.parametrize("flags, message", [
    ({"epochs": 3}, "and --epochs would change it: the one-cycle schedule was laid out for 1 epoch; start a new --out"),
    ({"bs": 4, "lr": "0.1", "data": "elsewhere"},
     "and --data, --bs, --lr would change it: the one-cycle schedule and the data order were laid out for the "
     "original recipe; start a new --out to change them"),
    ({"epochs": 5, "mixup": 0.4}, "--epochs, --mixup would change it: the one-cycle schedule was laid out for 1 epoch "
                                  "and the data order for the original recipe"),
    ({"no_augment": True}, "and --no-augment would change it"),
])
def test_resume_refuses_flags_that_would_change_the_recipe(finished_run, capsys, flags, message):
    history = (finished_run / "history.csv").read_text()
    with pytest.raises(SystemExit) as exit_info:
        main(out=str(finished_run), resume=True, **flags)
    error = one_line_error(capsys, exit_info)
    assert f"--resume continues the recipe in {finished_run / 'checkpoint.pth'}, " in error and message in error
    assert (finished_run / "history.csv").read_text() == history


def test_resuming_a_finished_run_says_so_and_accepts_the_original_flags(finished_run, face_folder, tmp_path, caplog):
    run = tmp_path / "again"
    shutil.copytree(finished_run, run)
    with caplog.at_level(logging.INFO, logger="fer_fastai.train"):
        main(data=str(face_folder), out=str(run), resume=True, epochs=1, **TINY_FLAGS)
    assert f"all epochs of {run} are done (1 of 1); finishing the run again (calibration, scores, plots)" in caplog.text
    assert f"resuming {run}" not in caplog.text
    assert len((run / "history.csv").read_text().splitlines()) == 1 + 1  # nothing trained again


# 2b, 2c. interrupts and exact resumes

def interrupt_after_epoch(monkeypatch, epoch: int) -> None:
    """Ctrl-C right after the end-of-epoch checkpoint of `epoch` is written; monkeypatch.undo() ends it."""
    original = callbacks_module.EpochCheckpoint.after_epoch

    def after_epoch(self):
        original(self)
        if self.epoch == epoch:
            raise KeyboardInterrupt

    monkeypatch.setattr(callbacks_module.EpochCheckpoint, "after_epoch", after_epoch)


def interrupt_in_batch(monkeypatch, epoch: int, batch: int) -> None:
    """Ctrl-C as training batch `batch` (from 0) of `epoch` starts."""
    original = ResumableLearner.one_batch

    def one_batch(self, i, b):
        if self.training and (self.epoch, i) == (epoch, batch):
            raise KeyboardInterrupt
        original(self, i, b)

    monkeypatch.setattr(ResumableLearner, "one_batch", one_batch)


def exact_config(data, out) -> TrainConfig:
    """Three epochs that draw on every random source: batch order, augmentation, MixUp, dropout."""
    return tiny_config(data, out, epochs=3, keep="last", mixup=0.4)


@pytest.fixture(scope="module")
def uninterrupted_run(tmp_path_factory, face_folder):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FER_FASTAI_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        return train(exact_config(face_folder, tmp_path_factory.mktemp("uninterrupted") / "run"))


def test_a_run_resumed_at_an_epoch_boundary_trains_the_same_weights(uninterrupted_run, face_folder, tmp_path, monkeypatch):
    config = exact_config(face_folder, tmp_path / "run")
    interrupt_after_epoch(monkeypatch, 1)
    with pytest.raises(FerError, match="^interrupted in epoch 1; checkpoint saved, continue with: "):
        train(config)
    monkeypatch.undo()
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=True)
    assert checkpoint["next_epoch"] == 2 and {"torch", "numpy", "python", "loaders"} <= set(checkpoint["rng"])

    train(config, resume=True)
    assert same_weights(tmp_path / "run" / "model.safetensors", uninterrupted_run / "model.safetensors")


def test_a_mid_epoch_interrupt_keeps_the_last_finished_epoch_and_redoes_the_cut_one(uninterrupted_run, face_folder,
                                                                                     tmp_path, monkeypatch):
    run = tmp_path / "run"
    config = exact_config(face_folder, run)
    interrupt_after_epoch(monkeypatch, 0)
    with pytest.raises(FerError, match="interrupted in epoch 0; checkpoint saved"):
        train(config)
    monkeypatch.undo()
    after_epoch_0 = (run / "checkpoint.pth").read_bytes()

    # resumed, then cut off in the middle of epoch 1
    interrupt_in_batch(monkeypatch, epoch=1, batch=3)
    with pytest.raises(FerError) as error_info:
        train(config, resume=True)
    monkeypatch.undo()
    assert str(error_info.value) == (f"interrupted in epoch 1; the checkpoint of epoch 0 is kept and --resume redoes "
                                     f"epoch 1 from its start; continue with: python -m fer_fastai.train --out {run} "
                                     "--resume")
    assert (run / "checkpoint.pth").read_bytes() == after_epoch_0  # not overwritten with half an epoch

    train(config, resume=True)
    assert [row.split(",")[0] for row in (run / "history.csv").read_text().splitlines()] == ["epoch", "0", "1", "2"]
    assert same_weights(run / "model.safetensors", uninterrupted_run / "model.safetensors")  # no batch trained twice


def test_an_interrupt_before_any_epoch_finished_has_nothing_to_resume(face_folder, tmp_path, monkeypatch, capsys):
    interrupt_in_batch(monkeypatch, epoch=0, batch=2)
    with pytest.raises(SystemExit) as exit_info:
        main(data=str(face_folder), out=str(tmp_path / "run"), epochs=2, **TINY_FLAGS)
    assert one_line_error(capsys, exit_info) == (
        "error: interrupted in epoch 0, before any epoch finished: there is nothing to resume; start the run again")
    assert not (tmp_path / "run" / "checkpoint.pth").exists()


def test_a_fresh_start_never_overwrites_an_unfinished_runs_checkpoint(tmp_path):
    (tmp_path / "run").mkdir()
    torch.save({"model": {}, "opt": None, "next_epoch": 1, "config": {}}, tmp_path / "run" / "checkpoint.pth")
    with pytest.raises(FerError, match="run holds the checkpoint of an unfinished run; pass --resume to continue it"):
        train(tiny_config("unused", tmp_path / "run", epochs=1))


def test_a_checkpoint_without_random_state_still_resumes_and_says_so(face_folder, tmp_path, monkeypatch, caplog):
    config = tiny_config(face_folder, tmp_path / "run", epochs=2)
    interrupt_after_epoch(monkeypatch, 0)
    with pytest.raises(FerError, match="interrupted in epoch 0"):
        train(config)
    monkeypatch.undo()
    checkpoint_file = tmp_path / "run" / "checkpoint.pth"
    checkpoint = torch.load(checkpoint_file, weights_only=True)
    del checkpoint["rng"]  # as written before checkpoints carried it
    torch.save(checkpoint, checkpoint_file)

    with caplog.at_level(logging.INFO, logger="fer_fastai.train"):
        train(config, resume=True)
    assert (f"{checkpoint_file} holds no random-number state (an older version wrote it): the resumed epochs see "
            "another data order") in caplog.text
    assert (tmp_path / "run" / "metrics.json").is_file()


# 3. failed and damaged checkpoints, a one-face data set

def fail_checkpoint(monkeypatch, failure: Exception, epoch: int = 1) -> None:
    """torch.save raises `failure` when it writes the checkpoint of `epoch` (a full disk, a read-only folder)."""
    real_save, saves = torch.save, []

    def save(state, path):
        saves.append(path)
        if len(saves) == epoch + 1:
            raise failure
        real_save(state, path)

    monkeypatch.setattr(torch, "save", save)


@pytest.mark.parametrize("failure", [
    RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 4352 vs 4240"),
    OSError(errno.ENOSPC, "No space left on device"),
    PermissionError(errno.EACCES, "Permission denied"),
])
def test_a_failed_checkpoint_write_is_one_line_and_keeps_the_previous_one(face_folder, tmp_path, monkeypatch, capsys,
                                                                           failure):
    fail_checkpoint(monkeypatch, failure)
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(data=str(face_folder), out=str(run), epochs=3, **TINY_FLAGS)
    error = one_line_error(capsys, exit_info)
    reason = failure.strerror if isinstance(failure, OSError) else "the write stopped part-way, as on a full disk"
    assert error == (f"error: cannot write the checkpoint {run / 'checkpoint.pth'}: {reason}; the previous epoch's "
                     "checkpoint is kept. Free some disk space or make the folder writable, then continue with --resume")
    monkeypatch.undo()
    assert torch.load(run / "checkpoint.pth", weights_only=True)["next_epoch"] == 1
    assert not any(path.name.endswith(".tmp") for path in run.iterdir())


def test_a_failed_first_checkpoint_says_there_is_none_to_resume(face_folder, tmp_path, monkeypatch):
    fail_checkpoint(monkeypatch, OSError(errno.ENOSPC, "No space left on device"), epoch=0)
    with pytest.raises(FerError, match="No space left on device; no epoch has a checkpoint yet. Free some disk space "
                                       "or make the folder writable, then start the run again$"):
        train(tiny_config(face_folder, tmp_path / "run", epochs=2))


def test_resuming_after_a_failed_checkpoint_write_lists_each_epoch_once(face_folder, tmp_path, monkeypatch):
    """history.csv got epoch 1's row before its checkpoint failed; --resume redoes epoch 1 and must not list it twice."""
    fail_checkpoint(monkeypatch, OSError(errno.ENOSPC, "No space left on device"))
    config = tiny_config(face_folder, tmp_path / "run", epochs=3)
    with pytest.raises(FerError, match="cannot write the checkpoint"):
        train(config)
    history = tmp_path / "run" / "history.csv"
    assert [row.split(",")[0] for row in history.read_text().splitlines()] == ["epoch", "0", "1"]
    train(config, resume=True)
    assert [row.split(",")[0] for row in history.read_text().splitlines()] == ["epoch", "0", "1", "2"]


@pytest.mark.parametrize("damage", ["truncated", "empty", "random bytes"])
def test_a_damaged_checkpoint_is_one_line_without_torchs_advice(tmp_path, capsys, damage):
    checkpoint_file = tmp_path / "run" / "checkpoint.pth"
    checkpoint_file.parent.mkdir()
    torch.save({"model": {"w": torch.zeros(1000)}, "opt": None, "next_epoch": 1, "config": {}}, checkpoint_file)
    whole = checkpoint_file.read_bytes()
    damaged = {"truncated": whole[:len(whole) // 2], "empty": b"", "random bytes": os.urandom(4096)}[damage]
    checkpoint_file.write_bytes(damaged)
    with pytest.raises(SystemExit) as exit_info:
        main(out=str(tmp_path / "run"), resume=True)
    assert one_line_error(capsys, exit_info) == (
        f"error: {checkpoint_file} is not a readable checkpoint (truncated, empty or not written by fer_fastai); "
        "delete it and start without --resume")


def faces_of_one_class(make_folder_dataset, faces: int):
    """A folder data set with `faces` images of one class (anger) in train/."""
    root = make_folder_dataset({"train": 2})
    kept = sorted((root / "train" / "angry").iterdir())[:faces]
    for path in (root / "train").rglob("*.png"):
        if path not in kept:
            path.unlink()
    return root


def test_a_one_face_data_set_is_refused_up_front(make_folder_dataset, tmp_path, capsys):
    data = faces_of_one_class(make_folder_dataset, 1)
    with pytest.raises(SystemExit) as exit_info:
        main(data=str(data), out=str(tmp_path / "run"), epochs=1, bs=1, device="cpu")
    error = one_line_error(capsys, exit_info)
    assert "no faces are left to validate on: --valid-pct 0.1 of 1 train faces holds out none" in error
    assert not (tmp_path / "run").exists()  # no half run folder


def test_two_faces_of_one_class_train_with_a_batch_of_one(make_folder_dataset, tmp_path):
    data = faces_of_one_class(make_folder_dataset, 2)
    run = train(TrainConfig(data=str(data), out=str(tmp_path / "run"), epochs=1, bs=1, device="cpu"))
    assert {"model.safetensors", "metrics.json", "checkpoint.pth"} <= {path.name for path in run.iterdir()}


# 4. one run per folder

@pytest.fixture
def held_lock(tmp_path):
    """The lock of tmp_path/run, held as a training run in another process would hold it."""
    run = tmp_path / "run"
    run.mkdir()
    with open(run / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield run


@pytest.mark.parametrize("resume", [False, True])
def test_a_second_run_into_a_busy_folder_is_refused(held_lock, face_folder, capsys, resume):
    if resume:
        torch.save({"model": {}, "opt": None, "next_epoch": 1, "config": {"arch": "seed"}}, held_lock / "checkpoint.pth")
        arguments = {"out": str(held_lock), "resume": True}
    else:
        arguments = {"data": str(face_folder), "out": str(held_lock), "epochs": 1, **TINY_FLAGS}
    with pytest.raises(SystemExit) as exit_info:
        main(**arguments)
    assert one_line_error(capsys, exit_info) == (
        f"error: {held_lock} is in use by another training run (it holds {held_lock / '.lock'}); wait for that run "
        "to end, or train into another --out")


def test_a_finished_run_lets_go_of_its_folder(finished_run):
    with open(finished_run / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises BlockingIOError if the run still held it


HOLD_THE_LOCK = """
import sys, time
from pathlib import Path
from fer_fastai.train import locked_run_folder
with locked_run_folder(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_a_run_killed_with_sigkill_leaves_no_stale_lock(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_THE_LOCK, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        with open(tmp_path / "run" / ".lock", "a") as lock, pytest.raises(BlockingIOError):
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        holder.kill()  # SIGKILL: no finally, no atexit in the holder
        holder.wait()
    with open(tmp_path / "run" / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
