import pytest
import torch

from fer_fastai import device as device_module
from fer_fastai.device import pick_device
from fer_fastai.errors import FerError


@pytest.mark.parametrize("mps, cuda, expected", [
    (True, True, "mps"), (False, True, "cuda"), (False, False, "cpu"), (True, False, "mps"),
])
def test_auto_prefers_mps_then_cuda_then_cpu(monkeypatch, mps, cuda, expected):
    monkeypatch.setattr(device_module, "mps_available", lambda: mps)
    monkeypatch.setattr(device_module, "cuda_available", lambda: cuda)
    assert pick_device("auto") == torch.device(expected)


def test_explicit_cpu_wins_even_when_a_gpu_is_there(monkeypatch):
    monkeypatch.setattr(device_module, "cuda_available", lambda: True)
    assert pick_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("name", ["mps", "cuda"])
def test_asking_for_an_absent_device_is_a_clear_error(monkeypatch, name):
    monkeypatch.setattr(device_module, "mps_available", lambda: False)
    monkeypatch.setattr(device_module, "cuda_available", lambda: False)
    with pytest.raises(FerError, match=f"--device {name} asked for, but"):
        pick_device(name)


def test_unknown_device_name():
    with pytest.raises(FerError, match="unknown device 'tpu'"):
        pick_device("tpu")
