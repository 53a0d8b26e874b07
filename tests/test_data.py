import numpy as np
import pytest
import torch
from PIL import Image

from fer_fastai import data as data_module
from fer_fastai.data import load_splits, make_dataloaders, split_dataloader, stratified_split
from fer_fastai.errors import FerError
from fer_fastai.labels import LABELS


def test_folder_layout_loads_every_split_with_fixed_ids(face_folder):
    splits = load_splits(face_folder)
    assert set(splits) == {"train", "test"}
    assert len(splits["train"]) == 8 * 7 and len(splits["test"]) == 3 * 7
    assert splits["train"].class_counts() == {label: 8 for label in LABELS}
    assert splits["train"].pixels.dtype == np.uint8 and splits["train"].pixels.shape[1:] == (48, 48)


def test_csv_layout_splits_by_usage_and_keeps_pixels(face_csv):
    splits = load_splits(face_csv)
    assert {name: len(faces) for name, faces in splits.items()} == {"train": 56, "test": 21, "private": 21}
    first_row = face_csv.read_text().splitlines()[1].split(",")
    assert int(first_row[0]) == splits["train"].labels[0]
    assert np.array_equal(splits["train"].pixels[0].ravel(), np.array(first_row[1].split(), dtype=np.uint8))


def test_folder_aliases_and_case(make_folder_dataset):
    root = make_folder_dataset({"train": 2})
    (root / "train" / "happy").rename(root / "train" / "Happiness")
    (root / "train" / "angry").rename(root / "train" / "ANGER")
    counts = load_splits(root)["train"].class_counts()
    assert counts["happy"] == 2 and counts["angry"] == 2


def test_hidden_folders_are_not_classes(make_folder_dataset):
    root = make_folder_dataset({"train": 2})
    (root / "train" / ".ipynb_checkpoints").mkdir()  # Jupyter and Colab leave these behind
    assert len(load_splits(root)["train"]) == 2 * 7


def test_jpg_and_valid_folder_are_used(make_folder_dataset):
    root = make_folder_dataset({"train": 3, "valid": 2}, suffix=".jpg")
    splits = load_splits(root)
    dls = make_dataloaders(splits, bs=4)
    assert len(dls.valid_ds) == 2 * 7 and len(dls.train_ds) == 3 * 7


@pytest.mark.parametrize("make_bad, message", [
    (lambda root: root / "missing", "does not exist"),
    (lambda root: root, "is empty"),
    (lambda root: (root / "photos").mkdir() or root, "has no train/ folder"),
    (lambda root: (root / "train" / "happy").mkdir(parents=True) or root, "no images found"),
    (lambda root: (root / "notes.txt").write_text("x") and root / "notes.txt", "not a .csv"),
])
def test_bad_data_paths_are_one_line_errors(tmp_path, make_bad, message):
    root = tmp_path / "data"
    root.mkdir()
    with pytest.raises(FerError, match=message):
        load_splits(make_bad(root))


def test_unknown_class_folder_lists_accepted_names_unless_skipped(make_folder_dataset):
    root = make_folder_dataset({"train": 2})
    (root / "train" / "happy").rename(root / "train" / "confused")
    with pytest.raises(FerError, match=r"unknown class folder\(s\) confused; accepted names: .*--skip-unknown"):
        load_splits(root)
    counts = load_splits(root, skip_unknown=True)["train"].class_counts()
    assert counts["happy"] == 0 and counts["sad"] == 2


def test_corrupt_image_is_reported_by_path_unless_skipped(make_folder_dataset):
    root = make_folder_dataset({"train": 2})
    bad = root / "train" / "sad" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(FerError, match=r"1 unreadable image\(s\), e\.g\. .*broken\.png.*--skip-bad"):
        load_splits(root)
    assert len(load_splits(root, skip_bad=True)["train"]) == 2 * 7


@pytest.mark.parametrize("content, message", [
    ("label,image\n0,1 2 3\n", "missing column"),
    ("emotion,pixels,Usage\n0,1 2 3,Training\n", "has 3 values"),
    ("emotion,pixels,Usage\n9," + " ".join(["0"] * 2304) + ",Training\n", "emotion must be an id 0-6"),
    ("emotion,pixels,Usage\n0," + " ".join(["300"] * 2304) + ",Training\n", "not whole numbers 0-255"),
    ("emotion,pixels,Usage\n0," + " ".join(["1.7"] * 2304) + ",Training\n", "not whole numbers 0-255"),
    ("emotion,pixels,Usage\n0," + " ".join(["nan"] * 2304) + ",Training\n", "not whole numbers 0-255"),
    ("emotion,pixels,Usage\n0," + " ".join(["5x"] * 2304) + ",Training\n", "row 1 has a value that is not a number"),
    ("emotion,pixels,Usage\n0," + " ".join(["0"] * 2304) + ",Holdout\n", "unknown Usage"),
    ("emotion,pixels,Usage\n", "no rows"),
    ("emotion,pixels,Usage\n0," + " ".join(["0"] * 2304) + ",Training,extra\n", "some row has more fields than the header"),
    ("emotion,pixels,Usage\n0," + " ".join(["0"] * 2304) + ",Training\n0,1,2,3,4\n", "Expected 3 fields in line 3"),
])
def test_bad_csv_is_a_clear_error(tmp_path, content, message):
    path = tmp_path / "fer2013.csv"
    path.write_text(content)
    with pytest.raises(FerError, match=message):
        load_splits(path)


def test_stratified_split_is_seeded_disjoint_and_per_class():
    labels = np.repeat(np.arange(7), [40, 10, 40, 70, 50, 30, 50])
    train_a, valid_a = stratified_split(labels, 0.1, seed=1)
    train_b, valid_b = stratified_split(labels, 0.1, seed=1)
    assert np.array_equal(valid_a, valid_b) and not set(train_a) & set(valid_a)
    assert len(train_a) + len(valid_a) == len(labels)
    assert np.bincount(labels[valid_a]).tolist() == [4, 1, 4, 7, 5, 3, 5]
    assert not np.array_equal(valid_a, stratified_split(labels, 0.1, seed=2)[1])


def test_a_smaller_split_with_the_same_seed_lies_inside_the_larger_one():
    """So networks trained beside a 10% split never saw the faces of a 2% one: both can be scored there."""
    labels = np.repeat(np.arange(7), [400, 44, 410, 720, 480, 320, 500])
    small, large = (set(stratified_split(labels, pct, seed=42)[1]) for pct in (0.02, 0.1))
    assert small < large and len(small) == 57


def test_decoded_images_are_cached_and_the_cache_follows_file_changes(make_folder_dataset, monkeypatch):
    root = make_folder_dataset({"train": 2})
    first = load_splits(root)["train"]
    monkeypatch.setattr(data_module, "image_to_pixels", lambda _: pytest.fail("decoded again despite cache"))
    assert np.array_equal(load_splits(root)["train"].pixels, first.pixels)
    monkeypatch.undo()
    changed = root / "train" / "angry" / "train_0.png"
    Image.fromarray(np.full((48, 48), 7, dtype=np.uint8)).save(changed)
    assert (load_splits(root)["train"].pixels == 7).all(axis=(1, 2)).sum() == 1


def test_dataloaders_keep_the_fixed_vocabulary_and_never_train_on_test(face_folder):
    splits = load_splits(face_folder)
    dls = make_dataloaders(splits, bs=8, valid_pct=0.25)
    assert list(dls.vocab) == list(LABELS)
    test_items = set(dls.split_items["test"])
    assert not test_items & set(dls.train_ds.items) and not test_items & set(dls.valid_ds.items)
    x, y = split_dataloader(dls, "test").one_batch()
    assert x.shape == (8, 1, 48, 48) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert y.tolist() == splits["test"].labels[:8].tolist()


def test_fast_batches_equal_fastai_item_pipeline_batches(face_folder):
    splits = load_splits(face_folder)
    fast, slow = make_dataloaders(splits, bs=8, fast=True), make_dataloaders(splits, bs=8, fast=False)
    assert type(fast.train).__name__ == "ArrayDataLoader" and type(slow.train).__name__ == "TfmdDL"
    for split in ("valid", "test"):
        (x_fast, y_fast), (x_slow, y_slow) = [
            (dls.valid if split == "valid" else split_dataloader(dls, split)).one_batch() for dls in (fast, slow)]
        assert type(x_fast) is type(x_slow) and torch.equal(x_fast, x_slow) and torch.equal(y_fast, y_slow)


@pytest.mark.parametrize("augment", [
    {"erase_p": 0.0, "max_lighting": 0.0},  # geometry only (flip, rotate, zoom)
    {"erase_p": 0.0, "flip": False, "max_rotate": 0.0, "max_zoom": 1.0},  # lighting only
    {"flip": False, "max_rotate": 0.0, "max_zoom": 1.0, "max_lighting": 0.0, "erase_p": 1.0},  # erasing only
    {"flip": False, "max_rotate": 0.0, "max_zoom": 1.0, "max_lighting": 0.0, "erase_p": 0.0, "max_shift": 4},  # shift only
])
def test_each_augmentation_changes_training_batches_and_never_validation(face_folder, augment):
    from fer_fastai.augment import AugmentConfig

    splits = load_splits(face_folder)
    dls = make_dataloaders(splits, bs=8, augment=AugmentConfig(**augment))
    in_order = dls.train.new(shuffle=False, drop_last=False)  # iterating sets the train split's transforms
    x, _ = in_order.one_batch()
    raw = torch.from_numpy(splits["train"].pixels[np.asarray(in_order.dataset.items[:8])]).float().unsqueeze(1) / 255
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert (x.cpu() - raw).abs().amax(dim=(1, 2, 3)).gt(1e-3).sum() >= 4  # most images changed
    valid_x, _ = dls.valid.one_batch()
    valid_raw = torch.from_numpy(splits["train"].pixels[np.asarray(dls.valid.dataset.items[:len(valid_x)])]).float() / 255
    assert torch.equal(valid_x.cpu().squeeze(1), valid_raw)


@pytest.mark.parametrize("flip", [True, False])
def test_all_augmentations_together_still_mirror_half_the_faces(flip):
    """Every augmentation on at once, as training runs: fastai's DataBlock keeps one batch transform per
    class, which once dropped flip/rotate/zoom whenever lighting was on (each alone was fine)."""
    from fer_fastai.augment import AugmentConfig, batch_transforms
    from fer_fastai.data import FaceSet

    faces = np.full((280, 48, 48), 40, np.uint8)
    faces[:, :, :12] = 220  # a bright band on the left: mirrored faces have it on the right
    labels = np.arange(280) % len(LABELS)
    splits = {"train": FaceSet(faces, labels, tuple(f"face{i}.png" for i in range(280)))}
    augment = AugmentConfig(flip=flip, max_shift=2)
    dls = make_dataloaders(splits, bs=252, augment=augment)
    assert len(dls.train.after_batch.fs) == 1 + len(batch_transforms(augment))  # + IntToFloatTensor
    x, _ = dls.train.one_batch()
    mirrored = (x[:, 0, :, -12:].mean(dim=(1, 2)) > x[:, 0, :, :12].mean(dim=(1, 2))).float().mean().item()
    assert 0.35 < mirrored < 0.65 if flip else mirrored == 0.0


def test_flip_alone_mirrors_about_half_the_faces_exactly_without_resampling():
    """A flip-only recipe (no rotation, zoom, lighting or erasing): every training face comes out either
    untouched or pixel-for-pixel mirrored, with no affine resample in between."""
    from fastai.vision.core import TensorImage

    from fer_fastai.augment import AugmentConfig, batch_transforms

    torch.manual_seed(0)
    faces = TensorImage(torch.rand(200, 1, 12, 12))
    transforms = batch_transforms(AugmentConfig(max_rotate=0.0, max_zoom=1.0, max_lighting=0.0, erase_p=0.0))
    out = faces
    for transform in transforms:
        out = transform(out, split_idx=0)
    assert isinstance(out, TensorImage) and out.shape == faces.shape
    mirrored = [torch.equal(after, before.flip(-1)) for before, after in zip(faces, out)]
    untouched = [torch.equal(after, before) for before, after in zip(faces, out)]
    assert all(m or u for m, u in zip(mirrored, untouched))
    assert 0.35 < sum(mirrored) / len(faces) < 0.65
    assert all(torch.equal(transform(faces, split_idx=1), faces) for transform in transforms)  # never on validation


def test_shift_moves_each_face_by_its_own_whole_pixel_offset():
    from fastai.vision.core import TensorImage

    from fer_fastai.augment import PerImageShift

    torch.manual_seed(0)
    faces = torch.rand(16, 1, 12, 12)
    shifted = PerImageShift(max_shift=3)(TensorImage(faces), split_idx=0)
    assert isinstance(shifted, TensorImage) and shifted.shape == faces.shape
    offsets = set()
    for face, moved in zip(faces, shifted):
        padded = torch.nn.functional.pad(face.unsqueeze(0), (3,) * 4, mode="reflect")[0]
        matches = [(top, left) for top in range(7) for left in range(7)
                   if torch.equal(padded[:, top:top + 12, left:left + 12], moved)]
        assert matches, "every output is one reflect-padded crop of its own input"
        offsets.add(matches[0])
    assert len(offsets) > 1  # not one offset for the whole batch
