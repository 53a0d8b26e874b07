"""One Predictor interface over two backends: PyTorch (safetensors + card) and ONNX Runtime.

Both take the model input of DESIGN.md (float32 [N, 1, 48, 48] in [0, 1], from `preprocess`) and
return class probabilities in FER2013 id order. Importing this module, and using `OnnxPredictor`,
needs only numpy and onnxruntime: torch is imported inside `TorchPredictor` alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .errors import FerError
from .preprocess import INPUT_SHAPE

ONNX_INPUT = "image"
ONNX_OUTPUTS = ("logits", "probs")


class Predictor(Protocol):
    backend: str
    labels: tuple[str, ...]
    card: dict[str, Any]

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        """float32 [N, 1, 48, 48] in [0, 1] → probabilities [N, n_classes] (calibrated if the card says so)."""
        ...


def check_batch(batch: np.ndarray) -> np.ndarray:
    """The model input contract, enforced with a clear error instead of a backend's stack trace."""
    if not isinstance(batch, np.ndarray):
        raise FerError(f"expected a numpy array, got {type(batch).__name__}")
    if batch.dtype != np.float32:
        raise FerError(f"expected float32 input in [0, 1], got dtype {batch.dtype}; use preprocess.images_to_input")
    if batch.ndim != 4 or batch.shape[1:] != INPUT_SHAPE:
        raise FerError(f"expected input of shape [N, 1, 48, 48], got {list(batch.shape)}")
    return np.ascontiguousarray(batch)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    scaled = logits / temperature
    scaled = scaled - scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=1, keepdims=True)


class TorchPredictor:
    """The PyTorch model in eval mode; probabilities use the card's calibrated temperature."""

    backend = "torch"

    def __init__(self, model, card: dict[str, Any], device: str = "cpu", batch_size: int = 512):
        import torch

        self.model, self.card, self.batch_size = model.to(device).eval(), card, batch_size
        self.device = torch.device(device)
        self.labels = tuple(card["labels"])
        self.temperature = float(card.get("temperature", 1.0))

    @classmethod
    def from_file(cls, weights_path: str | Path, device: str = "cpu") -> "TorchPredictor":
        from .model_io import load_model

        model, card = load_model(weights_path, device)
        return cls(model, card, device)

    def predict_logits(self, batch: np.ndarray) -> np.ndarray:
        import torch

        batch = check_batch(batch)
        outputs = []
        with torch.inference_mode():
            for start in range(0, len(batch), self.batch_size):
                chunk = torch.from_numpy(batch[start:start + self.batch_size]).to(self.device)
                outputs.append(self.model(chunk).float().cpu().numpy())
        return np.concatenate(outputs) if outputs else np.zeros((0, len(self.labels)), np.float32)

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        return softmax(self.predict_logits(batch), self.temperature)


class OnnxPredictor:
    """An exported .onnx run by ONNX Runtime; labels and card come from the file's own metadata."""

    backend = "onnx"

    def __init__(self, onnx_path: str | Path, threads: int | None = None):
        import onnxruntime as ort

        path = Path(onnx_path)
        if not path.is_file():
            raise FerError(f"{path}: no such ONNX file")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own untyped errors for bad files
            raise FerError(f"{path}: not a loadable ONNX model ({str(error).splitlines()[0]})") from None
        metadata = self.session.get_modelmeta().custom_metadata_map
        inputs = self.session.get_inputs()
        if [i.name for i in inputs] != [ONNX_INPUT] or list(inputs[0].shape[1:]) != list(INPUT_SHAPE):
            raise FerError(f"{path}: expected one input 'image' [batch, 1, 48, 48], found "
                           f"{[(i.name, i.shape) for i in inputs]}; is it a fer-fastai export?")
        if "labels" not in metadata:
            raise FerError(f"{path}: no 'labels' in the ONNX metadata; is it a fer-fastai export?")
        self.labels = tuple(json.loads(metadata["labels"]))
        self.card = {key: _maybe_json(value) for key, value in metadata.items()}

    def predict_logits(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(["logits"], {ONNX_INPUT: check_batch(batch)})[0]

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(["probs"], {ONNX_INPUT: check_batch(batch)})[0]


def _maybe_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def load_predictor(model_path: str | Path, backend: str | None = None, device: str = "cpu") -> Predictor:
    """A predictor for a .onnx or .safetensors file; `backend` may insist on one and must match the file."""
    path = Path(model_path)
    suffix = path.suffix.lower()
    if suffix not in (".onnx", ".safetensors"):
        raise FerError(f"{path}: expected a .onnx or .safetensors model file")
    wanted = backend or ("onnx" if suffix == ".onnx" else "torch")
    if wanted == "onnx":
        return OnnxPredictor(path if suffix == ".onnx" else path.with_suffix(".onnx"))
    if wanted == "torch":
        return TorchPredictor.from_file(path if suffix == ".safetensors" else path.with_suffix(".safetensors"), device)
    raise FerError(f"unknown backend {backend!r}; choose onnx or torch")
