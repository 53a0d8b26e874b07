import json
import subprocess
import sys

import pytest
import torch
from fastai.callback.core import Callback

from fer_fastai import callbacks as callbacks_module
from fer_fastai.data import load_splits, make_dataloaders
from fer_fastai.errors import FerError
from fer_fastai.model_io import load_model
from fer_fastai.models import create_model
from fer_fastai.train import TrainConfig, main, make_learner, train, width_kwargs


def test_a_run_leaves_a_complete_run_folder(trained_run):
    names = {path.name for path in trained_run.iterdir()}
    assert {"model.safetensors", "model.json", "history.csv", "metrics.json", "checkpoint.pth"} <= names
    history = (trained_run / "history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,train_loss,valid_loss,accuracy") and len(history) == 1 + 2
    metrics = json.loads((trained_run / "metrics.json").read_text())
    for split in ("valid", "test"):
        assert {"accuracy", "loss", "macro_f1"} <= set(metrics[split])
    assert metrics["test"]["n"] == 21
    model, card = load_model(trained_run / "model.safetensors")
    assert card.arch == "seed" and card.metrics["test_n"] == 21 and card.recipe.epochs == 2
    assert not any(path.name.endswith(".tmp") for path in trained_run.rglob("*"))


def test_csv_layout_trains_too(face_csv, tmp_path):
    run = train(TrainConfig(data=str(face_csv), out=str(tmp_path / "run"), epochs=1, bs=8, device="cpu"))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["n"] == 21  # PublicTest rows; PrivateTest is never scored here


def test_learner_trains_on_the_chosen_device_with_bf16_autocast(face_folder, tmp_path):
    dls = make_dataloaders(load_splits(face_folder), bs=8, device=torch.device("cpu"))
    learn = make_learner(dls, TrainConfig(data="", out=str(tmp_path), precision="bf16"), tmp_path)
    seen = []

    class RecordDtype(Callback):
        order = 5  # before MixedPrecision converts predictions back to float

        def after_pred(self):
            seen.append((self.pred.dtype, self.xb[0].device.type, self.xb[0].is_contiguous(memory_format=torch.channels_last)))

    learn.fit(1, 1e-3, cbs=[RecordDtype()])
    assert learn.dls.device.type == "cpu"
    assert seen and all(item == (torch.bfloat16, "cpu", True) for item in seen)


def test_fp32_precision_really_is_fp32(face_folder, tmp_path):
    dls = make_dataloaders(load_splits(face_folder), bs=8)
    learn = make_learner(dls, TrainConfig(data="", out=str(tmp_path), precision="fp32"), tmp_path)
    assert not any(type(cb).__name__ == "DeviceMixedPrecision" for cb in learn.cbs)


def interrupt_after_first_epoch(monkeypatch) -> None:
    """Ctrl-C right after epoch 0's checkpoint, as a user would press it; monkeypatch.undo() ends it."""
    original = callbacks_module.EpochCheckpoint.after_epoch

    def after_epoch(self):
        original(self)
        if self.epoch == 0:
            raise KeyboardInterrupt

    monkeypatch.setattr(callbacks_module.EpochCheckpoint, "after_epoch", after_epoch)


def test_interrupt_saves_a_checkpoint_and_resume_continues(face_folder, tmp_path, monkeypatch):
    config = TrainConfig(data=str(face_folder), out=str(tmp_path / "run"), epochs=3, bs=8, lr=1e-3, device="cpu")
    interrupt_after_first_epoch(monkeypatch)
    with pytest.raises(FerError, match="interrupted in epoch 0; checkpoint saved, continue with: .*--resume"):
        train(config)
    checkpoint_file = tmp_path / "run" / "checkpoint.pth"
    checkpoint = torch.load(checkpoint_file, weights_only=True)
    assert checkpoint["next_epoch"] == 1 and checkpoint["train_seconds"] > 0
    checkpoint["train_seconds"] = 1000.0  # as if the first epoch had taken that long
    torch.save(checkpoint, checkpoint_file)
    monkeypatch.undo()

    run = train(config, resume=True)
    rows = (run / "history.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows] == ["epoch", "0", "1", "2"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["n"] == 21
    assert 1000 < metrics["train_seconds"] < 1100 and metrics["timed_epochs"] == 3
    assert metrics["seconds_per_epoch"] == pytest.approx(metrics["train_seconds"] / 3, abs=0.1)


def test_cli_resume_needs_only_the_run_folder(face_folder, tmp_path, monkeypatch, capsys):
    """What the interrupt message and README say: `--out RUN --resume`, even for a vgg run."""
    interrupt_after_first_epoch(monkeypatch)
    run = tmp_path / "run"
    with pytest.raises(SystemExit):
        main(data=str(face_folder), arch="vgg", out=str(run), epochs=2, bs=8, lr="1e-3", device="cpu")
    hint = capsys.readouterr().err.strip().split("continue with: ")[1]
    assert hint == f"python -m fer_fastai.train --out {run} --resume"
    monkeypatch.undo()

    main(out=str(run), resume=True)
    assert load_model(run / "model.safetensors")[1].arch == "vgg"
    assert len((run / "history.csv").read_text().splitlines()) == 1 + 2


def test_resuming_an_older_checkpoint_keeps_its_split_and_times_the_resumed_epochs(face_folder, tmp_path, monkeypatch):
    """Checkpoints from before split_seed carved their validation split with --seed; resuming must
    validate on the same faces. They did not record training time either: only the resumed epochs are timed."""
    config = TrainConfig(data=str(face_folder), out=str(tmp_path / "run"), epochs=2, bs=8, device="cpu", seed=7, split_seed=7)
    interrupt_after_first_epoch(monkeypatch)
    with pytest.raises(FerError, match="interrupted in epoch 0"):
        train(config)
    monkeypatch.undo()
    checkpoint_file = tmp_path / "run" / "checkpoint.pth"
    checkpoint = torch.load(checkpoint_file, weights_only=True)
    del checkpoint["config"]["split_seed"], checkpoint["train_seconds"]
    torch.save(checkpoint, checkpoint_file)

    run = train(TrainConfig(data=str(face_folder), out=str(tmp_path / "run"), device="cpu"), resume=True)
    recipe = json.loads((run / "model.json").read_text())["recipe"]
    assert recipe["seed"] == 7 and recipe["split_seed"] == 7
    assert json.loads((run / "metrics.json").read_text())["timed_epochs"] == 1


def test_resume_refuses_a_checkpoint_of_another_architecture(trained_run):
    config = TrainConfig(data="unused", out=str(trained_run), arch="vgg", device="cpu")
    with pytest.raises(FerError, match="checkpoint of architecture 'seed', but --arch is 'vgg'"):
        train(config, resume=True)


def test_an_existing_model_is_never_overwritten_without_resume(trained_run):
    with pytest.raises(FerError, match="already holds a trained model; pass --resume"):
        train(TrainConfig(data="unused", out=str(trained_run), device="cpu"))


def test_seed_recipe_is_the_original_one():
    config = TrainConfig.for_recipe("seed", data="d", out="o")
    assert (config.epochs, config.bs, config.lr, config.weight_decay, config.label_smoothing, config.augment) == (
        20, 32, 1e-3, 0.0, 0.0, None)
    assert TrainConfig.for_recipe("fastai", data="d", out="o", epochs=5).epochs == 5


@pytest.mark.parametrize("arguments, message", [
    ({"data": "/nonexistent/fer"}, "data path /nonexistent/fer does not exist"),
    ({"arch": "resnet999"}, "unknown architecture 'resnet999'"),
    ({"lr": "fast"}, "--lr must be a number or 'auto'"),
    ({"recipe": "magic"}, "unknown recipe 'magic'"),
    ({"resume": True, "out": None}, "--resume needs --out"),
    ({"device": "tpu"}, "unknown device 'tpu'"),
    ({"start_size": 8}, "--start-size must be from 16"),
    ({"start_size": 48}, "to 47 pixels, got 48"),
    ({"start_size": 32, "full_size_at": 0.0}, "--full-size-at is a fraction of the epochs"),
    ({"epochs": 0}, "--epochs must be at least 1"),
    ({"bs": 0}, "--bs must be at least 1"),
    ({"mixup": -1.0}, "--mixup is a Beta alpha"),
    ({"label_smoothing": 1.5}, "--label-smoothing must be from 0 to below 1"),
    ({"valid_pct": 1.5}, "--valid-pct must be between 0 and 1"),
    ({"precision": "fp8"}, "unknown precision 'fp8'"),
    ({"keep": "first"}, "unknown --keep 'first'; choose one of best, last"),
    ({"max_zoom": 0.5}, "--max-zoom must be 1 (off) or more"),
    ({"erase_p": 2.0}, "--erase-p is a probability"),
])
def test_cli_bad_input_is_one_line_and_exit_2(capsys, face_folder, tmp_path, arguments, message):
    # fastcore parses argv only when run as a script (covered below); called directly, main takes kwargs
    defaults = {"data": str(face_folder), "out": str(tmp_path / "run"), "epochs": 1, "bs": 8}
    with pytest.raises(SystemExit) as exit_info:
        main(**{**defaults, **arguments})
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and message in error and "\n" not in error
    assert not (tmp_path / "run").exists()  # refused before any work: no empty run folder left behind


def test_batch_larger_than_the_train_split_is_refused(face_folder, tmp_path):
    with pytest.raises(FerError, match="fewer than one batch of 512; lower --bs"):
        train(TrainConfig(data=str(face_folder), out=str(tmp_path / "run"), bs=512, device="cpu"))


def test_real_command_line_prints_one_line_and_no_library_warnings(tmp_path):
    result = subprocess.run([sys.executable, "-m", "fer_fastai.train", "--data", str(tmp_path / "missing")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr == (f"error: data path {tmp_path / 'missing'} does not exist; point --data at a "
                             "folder with train/<class>/ images or a fer2013.csv\n")


def test_cli_augmentation_flags_reach_the_model_card(face_folder, tmp_path, capsys):
    out = tmp_path / "run"
    main(data=str(face_folder), out=str(out), epochs=1, bs=8, device="cpu", max_rotate=15.0, erase_p=0.5, no_flip=True)
    augment = json.loads((out / "model.json").read_text())["recipe"]["augment"]
    assert augment["max_rotate"] == 15.0 and augment["erase_p"] == 0.5 and augment["max_zoom"] == 1.1
    assert augment["flip"] is False
    assert "test:" in capsys.readouterr().out


def test_the_same_seed_trains_the_same_weights(face_folder, tmp_path):
    """--seed (with the default --split-seed) fixes the whole run: initial weights, augmentation, batch order."""
    from safetensors.torch import load_file

    weights = []
    for name in ("first", "second"):
        main(data=str(face_folder), out=str(tmp_path / name), epochs=2, bs=8, device="cpu", seed=7)
        weights.append(load_file(tmp_path / name / "model.safetensors"))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])


def test_mixup_width_and_shift_flags_train_and_are_recorded(face_folder, tmp_path, monkeypatch):
    from fastai.callback.mixup import MixUp

    mixed_batches = []
    original = MixUp.before_batch
    monkeypatch.setattr(MixUp, "before_batch", lambda self: (mixed_batches.append(self.training), original(self)))
    out = tmp_path / "run"
    main(data=str(face_folder), out=str(out), arch="vgg", width=8, mixup=0.4, max_shift=3, epochs=1, bs=8, device="cpu")
    card = json.loads((out / "model.json").read_text())
    assert card["recipe"]["mixup"] == 0.4 and card["recipe"]["augment"]["max_shift"] == 3
    assert card["arch_kwargs"] == {"widths": [8, 16, 32, 64]}
    assert mixed_batches and all(mixed_batches)  # training batches only
    model, _ = load_model(out / "model.safetensors")
    assert model[1][0][0].out_channels == 8


def test_width_is_refused_for_the_seed_architecture(face_folder, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(data=str(face_folder), out=str(tmp_path / "run"), arch="seed", width=8, epochs=1, device="cpu")
    assert "--width applies to --arch vgg or resnet only, not 'seed'" in capsys.readouterr().err


def test_width_widens_every_resnet_stage():
    assert width_kwargs("resnet", 16) == {"widths": [16, 32, 64, 128]}
    assert width_kwargs("resnet", None) is None
    model = create_model("resnet", **width_kwargs("resnet", 16))
    assert model[-1].in_features == 128


def test_lr_auto_runs_lr_find_saves_its_plot_and_uses_it(face_folder, tmp_path):
    run = train(TrainConfig(data=str(face_folder), out=str(tmp_path / "run"), epochs=1, bs=8, lr=None, device="cpu"))
    card = json.loads((run / "model.json").read_text())
    assert card["lr_found"] is not None and card["lr_found"] > 0 and card["lr"] == card["lr_found"]
    assert (run / "plots" / "lr_find.png").stat().st_size > 10_000


def test_progressive_resizing_shrinks_training_batches_only_and_ends_at_full_size(face_folder, tmp_path):
    sizes = []

    class RecordSize(Callback):
        order = 5  # after ProgressiveResize

        def before_batch(self):
            sizes.append((self.epoch, self.training, self.xb[0].shape[-1]))

    config = TrainConfig(data=str(face_folder), out=str(tmp_path / "run"), arch="vgg", arch_kwargs={"widths": [8, 8, 8, 8]},
                         epochs=4, bs=8, device="cpu", start_size=24, full_size_at=0.75)
    dls = make_dataloaders(load_splits(face_folder), bs=8, device=torch.device("cpu"))
    learn = make_learner(dls, config, tmp_path)
    learn.fit(config.epochs, 1e-3, cbs=[callbacks_module.ProgressiveResize(config.start_size, config.full_size_at), RecordSize()])
    train_sizes = {epoch: size for epoch, training, size in sizes if training}
    assert train_sizes == {0: 24, 1: 32, 2: 40, 3: 48}
    assert {size for _, training, size in sizes if not training} == {48}


def test_start_size_flag_is_recorded_in_the_card(face_folder, tmp_path):
    out = tmp_path / "run"
    main(data=str(face_folder), out=str(out), start_size=32, epochs=2, bs=8, device="cpu")
    recipe = json.loads((out / "model.json").read_text())["recipe"]
    assert recipe["start_size"] == 32 and recipe["full_size_at"] == 0.5


def test_out_that_is_a_file_is_refused_before_any_work(face_folder, tmp_path, capsys):
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(SystemExit) as exit_info:
        main(data=str(face_folder), out=str(tmp_path / "taken"), epochs=1, bs=8)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: cannot write into {tmp_path / 'taken'}: {tmp_path / 'taken'} is a file; choose another path"


def test_save_best_model_hands_over_improvements_or_with_keep_last_every_epoch():
    from types import SimpleNamespace

    from fer_fastai.callbacks import SaveChosenEpoch

    accuracies = [0.5, 0.7, 0.6, 0.4]
    saved = {False: [], True: []}
    for keep_last in (False, True):
        callback = SaveChosenEpoch(lambda epoch, accuracy, kept=saved[keep_last]: kept.append((epoch, accuracy)),
                                 keep_last=keep_last)
        recorder = SimpleNamespace(metric_names=["epoch", "train_loss", "valid_loss", "accuracy"], values=[])
        callback.learn = SimpleNamespace(recorder=recorder, epoch=0)
        callback.before_fit()
        for epoch, accuracy in enumerate(accuracies):
            callback.learn.epoch = epoch
            recorder.values.append([1.0, 1.0, accuracy])
            callback.after_epoch()
    assert saved[False] == [(0, 0.5), (1, 0.7)]
    assert saved[True] == list(enumerate(accuracies))


def test_keep_last_saves_the_last_epoch_and_says_so(face_folder, tmp_path):
    from safetensors.torch import load_file

    run = train(TrainConfig(data=str(face_folder), out=str(tmp_path / "run"), epochs=3, bs=8, lr=1e-3,
                            device="cpu", keep="last"))
    card = json.loads((run / "model.json").read_text())
    assert card["last_epoch"] == 2 and "best_epoch" not in card and card["recipe"]["keep"] == "last"
    assert json.loads((run / "metrics.json").read_text())["saved_epoch"] == 2
    final_weights = torch.load(run / "checkpoint.pth", weights_only=True)["model"]  # written after the last epoch
    saved = load_file(run / "model.safetensors")
    assert all(torch.equal(saved[name], final_weights[name]) for name in saved)
