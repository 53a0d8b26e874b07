import pytest
import torch

from fer_fastai.errors import FerError
from fer_fastai.card import new_card
from fer_fastai.model_io import load_model, save_model
from fer_fastai.models import ARCHS, GridFlatten, ResidualBlock, count_macs, count_parameters, create_model


def test_seed_net_is_the_original_network():
    model = create_model("seed")
    assert count_parameters(model) == 1_572_551
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (1, 32, (3, 3), (1, 1)), (32, 64, (3, 3), (1, 1)), (64, 128, (3, 3), (1, 1)), (128, 256, (3, 3), (1, 1))]


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("batch", [1, 5])
def test_every_arch_maps_images_to_seven_logits(arch, batch):
    model = create_model(arch).eval()
    with torch.no_grad():
        assert model(torch.rand(batch, 1, 48, 48)).shape == (batch, 7)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_every_arch_also_takes_smaller_faces_for_progressive_resizing(arch):
    model = create_model(arch).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 1, 16, 16)).shape == model(torch.rand(2, 1, 32, 32)).shape == (2, 7)


def test_grid_flatten_stretches_small_maps_like_adaptive_pooling_and_leaves_full_size_alone():
    flatten = GridFlatten(3)
    maps = torch.rand(2, 4, 3, 3)
    assert torch.equal(flatten(maps), maps.flatten(1))
    for side in (1, 2):  # what 16-47 px faces leave after four 2x poolings
        small = torch.rand(2, 4, side, side)
        assert torch.allclose(flatten(small), torch.nn.functional.adaptive_avg_pool2d(small, 3).flatten(1))
    assert not list(flatten.parameters()) and not list(flatten.buffers())


def test_normalisation_is_a_fixed_first_layer():
    model = create_model("seed")
    normalize = model[0]
    assert type(normalize).__name__ == "Normalize"
    assert not any(p.requires_grad for p in normalize.parameters())
    assert {"0.mean", "0.std"} <= set(model.state_dict())


def test_vgg_size_matches_its_docstring():
    model = create_model("vgg")
    assert 1_700_000 < count_parameters(model) < 1_800_000
    assert 110e6 < count_macs(model) < 125e6
    assert count_macs(model, (3, 1, 48, 48)) == count_macs(model)  # per image, whatever the batch


def test_resnet_costs_about_what_the_seed_net_costs_and_pools_globally():
    model = create_model("resnet")
    assert 1_200_000 < count_parameters(model) < 1_260_000
    assert 35e6 < count_macs(model) < 38e6 < 1.15 * count_macs(create_model("seed"))
    assert isinstance(model[-4], torch.nn.AdaptiveAvgPool2d)
    deeper = create_model("resnet", blocks=(1, 1, 2, 2))
    assert sum(isinstance(m, ResidualBlock) for m in deeper.modules()) == 6


def test_residual_blocks_start_as_their_shortcut():
    torch.manual_seed(0)
    same_shape, downsampling = ResidualBlock(8, 8).eval(), ResidualBlock(8, 16, stride=2).eval()
    x = torch.randn(2, 8, 12, 12)
    with torch.no_grad():
        assert torch.equal(same_shape(x), torch.relu(x))
        assert torch.equal(downsampling(x), torch.relu(downsampling.shortcut(x)))
    assert downsampling(x).shape == (2, 16, 6, 6)


def test_unknown_arch_lists_known_ones():
    with pytest.raises(FerError, match="unknown architecture 'resnet999'; choose one of seed, vgg, resnet"):
        create_model("resnet999")


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = create_model("seed").eval()
    path = tmp_path / "model.safetensors"
    card = save_model(model, path, new_card("seed", {}))
    loaded, loaded_card = load_model(path)
    x = torch.rand(3, 1, 48, 48)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert loaded_card.weights_sha256 == card.weights_sha256 and loaded_card.arch == "seed"


def test_weights_of_another_architecture_are_refused(tmp_path):
    path = tmp_path / "model.safetensors"
    save_model(create_model("vgg"), path, new_card("vgg", {}))
    card = path.with_suffix(".json")
    card.write_text(card.read_text().replace('"arch": "vgg"', '"arch": "seed"'))
    with pytest.raises(FerError, match="weights do not fit architecture 'seed'.*another architecture"):
        load_model(path)


def test_missing_card_is_a_clear_error(tmp_path):
    path = tmp_path / "model.safetensors"
    save_model(create_model("seed"), path, new_card("seed", {}))
    path.with_suffix(".json").unlink()
    with pytest.raises(FerError, match="model card model.json is missing"):
        load_model(path)


def test_garbage_weights_file(tmp_path):
    path = tmp_path / "model.safetensors"
    save_model(create_model("seed"), path, new_card("seed", {}))
    path.write_bytes(b"not safetensors at all")
    with pytest.raises(FerError, match="not a readable safetensors file"):
        load_model(path)
