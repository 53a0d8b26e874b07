"""Distillation (issue #31): the loss, the soft targets the batches carry, the teacher's cached labels, a
run with --teacher (its card and compute), and that such a run resumes exactly like any other."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fer_fastai import distill
from fer_fastai.compute import card_compute
from fer_fastai.data import load_splits, make_dataloaders, soft_targets
from fer_fastai.distill import DistillationLoss, teacher_probabilities
from fer_fastai.errors import FerError
from fer_fastai.labels import NUM_CLASSES
from fer_fastai.model_io import file_sha256
from fer_fastai.train import main, train

from test_train_faults import interrupt_after_epoch, same_weights, tiny_config


def targets(labels, teacher=None) -> torch.Tensor:
    return torch.from_numpy(soft_targets(np.asarray(labels), None if teacher is None else np.asarray(teacher, np.float32)))


def test_without_a_teacher_the_loss_is_label_smoothed_cross_entropy():
    logits = torch.randn(5, NUM_CLASSES)
    labels = [0, 3, 6, 2, 2]
    loss = DistillationLoss(weight=0.7, temperature=3.0, label_smoothing=0.1)(logits, targets(labels))
    assert loss.item() == pytest.approx(F.cross_entropy(logits, torch.tensor(labels), label_smoothing=0.1).item(), rel=1e-6)


def test_the_teacher_term_is_hintons_tempered_kl_divergence():
    logits = torch.randn(4, NUM_CLASSES)
    teacher = torch.softmax(torch.randn(4, NUM_CLASSES), dim=1)
    labels = [1, 1, 4, 5]
    temperature = 2.5
    soft_only = DistillationLoss(weight=1.0, temperature=temperature)(logits, targets(labels, teacher))
    teacher_t = torch.softmax(torch.log(teacher) / temperature, dim=1)
    expected = F.kl_div(F.log_softmax(logits / temperature, dim=1), teacher_t, reduction="batchmean") * temperature ** 2
    assert soft_only.item() == pytest.approx(expected.item(), rel=1e-5)
    blended = DistillationLoss(weight=0.25, temperature=temperature)(logits, targets(labels, teacher))
    hard = F.cross_entropy(logits, torch.tensor(labels))
    assert blended.item() == pytest.approx(0.25 * expected.item() + 0.75 * hard.item(), rel=1e-5)


def test_the_loss_pulls_the_student_towards_the_teacher():
    teacher = torch.tensor([[0.05, 0.05, 0.05, 0.6, 0.15, 0.05, 0.05]])
    logits = torch.zeros(1, NUM_CLASSES, requires_grad=True)
    DistillationLoss(weight=1.0, temperature=1.0)(logits, targets([0], teacher)).backward()
    assert logits.grad.argmin().item() == 3  # gradient descent raises the teacher's favourite, not the label


def test_training_batches_carry_the_teacher_and_validation_batches_only_labels(face_folder):
    splits = load_splits(face_folder)
    teacher = np.random.default_rng(0).dirichlet(np.ones(NUM_CLASSES), len(splits["train"])).astype(np.float32)
    dls = make_dataloaders(splits, bs=8, valid_pct=0.25, seed=3, device="cpu", teacher=teacher, augment=None)
    train_rows, valid_rows = dls.split_items["train"], dls.split_items["valid"]
    dls.train.shuffle = False
    _, y = dls.train.one_batch()
    np.testing.assert_allclose(y[:, NUM_CLASSES:].numpy(), teacher[train_rows[:8]], rtol=1e-6)
    assert (y[:, :NUM_CLASSES].argmax(1).numpy() == splits["train"].labels[train_rows[:8]]).all()
    _, y = dls.valid.one_batch()
    assert (y[:, NUM_CLASSES:] == 0).all()
    assert (y[:, :NUM_CLASSES].argmax(1).numpy() == splits["train"].labels[valid_rows[:8]]).all()


def test_the_teacher_labels_the_faces_once_then_reads_its_cache(trained_run, face_folder, tmp_path, monkeypatch):
    faces = load_splits(face_folder)["train"]
    first = teacher_probabilities(trained_run / "model.safetensors", faces, cache_dir=tmp_path)
    assert first.shape == (len(faces), NUM_CLASSES) and np.allclose(first.sum(1), 1, atol=1e-5)
    monkeypatch.setattr(distill, "load_predictor", lambda path: pytest.fail("the cached labels were not used"))
    np.testing.assert_array_equal(teacher_probabilities(trained_run / "model.safetensors", faces, cache_dir=tmp_path), first)
    with pytest.raises(FerError, match="--teacher .*missing.onnx: no such model file"):
        teacher_probabilities(tmp_path / "missing.onnx", faces, cache_dir=tmp_path)


@pytest.fixture(scope="module")
def distilled_run(tmp_path_factory, face_folder, trained_run):
    out = tmp_path_factory.mktemp("distilled") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FER_FASTAI_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        main.__wrapped__(data=str(face_folder), out=str(out), arch="vgg", width=8, bs=8, lr="1e-3", device="cpu",
                         epochs=2, teacher=str(trained_run / "model.safetensors"), distill_weight=0.6)
    return out


def test_a_distilled_run_records_its_teacher_and_its_compute(distilled_run, trained_run, face_folder):
    card = json.loads((distilled_run / "model.json").read_text())
    teacher_card = json.loads((trained_run / "model.json").read_text())
    assert card["recipe"]["teacher"] == str(trained_run / "model.safetensors") and card["recipe"]["distill_weight"] == 0.6
    assert card["teacher"]["sha256"] == file_sha256(trained_run / "model.safetensors")
    labelled = len(load_splits(face_folder)["train"])
    assert card["teacher"]["labelling_macs"] == teacher_card["model"]["macs"] * labelled
    compute = card["training_compute"]
    assert compute["teacher_macs"] == card["teacher"]["labelling_macs"]
    assert compute["training_macs"] == 3 * card["model"]["macs"] * card["data"]["counts"]["train"] * 2
    assert card_compute(distilled_run / "model.safetensors").total == compute["total_macs"]
    metrics = json.loads((distilled_run / "metrics.json").read_text())
    assert metrics["test"]["n"] == 21 and "accuracy,f1_score" in (distilled_run / "history.csv").read_text()


def test_a_distilled_run_resumes_exactly(face_folder, trained_run, tmp_path, monkeypatch):
    teacher = str(trained_run / "model.safetensors")
    config = tiny_config(face_folder, tmp_path / "whole", epochs=2, keep="last", teacher=teacher)
    whole = train(config)
    cut = tiny_config(face_folder, tmp_path / "cut", epochs=2, keep="last", teacher=teacher)
    interrupt_after_epoch(monkeypatch, 0)
    with pytest.raises(FerError, match="interrupted in epoch 0"):
        train(cut)
    monkeypatch.undo()
    resumed = train(cut, resume=True)
    assert same_weights(resumed / "model.safetensors", whole / "model.safetensors")
