"""One Predictor interface over two backends: PyTorch (safetensors + card) and ONNX Runtime.

Both take the model input of docs/design.md (float32 [N, 1, 48, 48] in [0, 1], from `preprocess`) and
return class probabilities in FER2013 id order. Importing this module, and using `OnnxPredictor`,
needs only numpy and onnxruntime: torch is imported inside `TorchPredictor` alone.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np

from .card import ModelCard, card_from_onnx_metadata, maybe_json
from .errors import FerError
from .onnx_session import open_session
from .paths import bundled_model, sibling
from .preprocess import INPUT_SHAPE
from .scoring import softmax

ONNX_INPUT = "image"
ONNX_OUTPUTS = ("logits", "probs")
INPUT_SLACK = 1e-3
# Rows per PyTorch forward pass on the CPU: 64 faces keep even vgg-48's largest activation (28 MB)
# under glibc's 32 MB ceiling for heap blocks, so passes reuse freed memory (allocator.py); at 512
# rows every pass mmapped its activations afresh (6 M page faults and 40% of the CPU time in the
# kernel for 6,000 faces through the width-32 vgg net).
CPU_ROWS_PER_PASS = 64
# Faces per ONNX Runtime call: bounds memory whatever the batch (an ensemble's file runs every view of
# every face at once, so 4,096 faces in one call peaked at 8.7 GB), and no slower than bigger calls (docs/speed.md).
ONNX_FACES_PER_RUN = 64


class Predictor(Protocol):
    backend: str
    labels: tuple[str, ...]
    card: ModelCard
    temperature: float
    threshold: float | None  # answers less confident than this are uncertain (selective.py); None: unknown

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        """float32 [N, 1, 48, 48] in [0, 1] → probabilities [N, n_classes] (calibrated if the card says so)."""
        ...


def check_batch(batch: np.ndarray) -> np.ndarray:
    """The model input contract, enforced with a clear error instead of a backend's stack trace."""
    if not isinstance(batch, np.ndarray):
        raise FerError(f"expected a numpy array, got {type(batch).__name__}")
    if batch.dtype != np.float32:
        hint = "pixels / 255" if batch.dtype == np.uint8 else "array.astype(np.float32)"
        raise FerError(f"expected float32 input in [0, 1], got dtype {batch.dtype}; use {hint} "
                       "or preprocess.images_to_input")
    if batch.ndim != 4 or batch.shape[1:] != INPUT_SHAPE:
        hint = "; for one image use preprocess.pixels_to_input" if batch.shape[-2:] == INPUT_SHAPE[1:] else ""
        raise FerError(f"expected input of shape [N, 1, 48, 48], got {list(batch.shape)}{hint}")
    # A little slack around [0, 1] for arithmetic rounding; 0-255 floats are the usual mistake this catches.
    if batch.size and not (batch.min() >= -INPUT_SLACK and batch.max() <= 1 + INPUT_SLACK):  # NaN fails too
        finite = batch[np.isfinite(batch)]
        found = f"min {finite.min():g} max {finite.max():g}" if finite.size else "no finite values"
        hint = "; divide 0-255 pixels by 255" if finite.size and finite.max() > 1 + INPUT_SLACK else ""
        raise FerError(f"expected values in [0, 1], got {found}{'' if finite.size == batch.size else ' and NaN/inf'}{hint}")
    return np.ascontiguousarray(batch)


def check_outputs(outputs: np.ndarray, card: ModelCard) -> np.ndarray:
    """A model's answers, which must be finite: NaN would be scored as the first class and shown as a
    probability of nothing, so a broken model (e.g. diverged weights in an ONNX file) stops here."""
    if not np.isfinite(outputs).all():
        raise FerError(f"the {card.arch} model answered NaN or inf for {int((~np.isfinite(outputs)).any(axis=1).sum())} "
                       "face(s): its weights are broken (did training diverge?); retrain or re-export it")
    return outputs


class TorchPredictor:
    """The PyTorch model in eval mode; probabilities use the card's calibrated temperature."""

    backend = "torch"

    def __init__(self, model, card: ModelCard, device: str = "cpu", batch_size: int | None = None):
        """`batch_size`: faces per forward pass; by default as many as make `CPU_ROWS_PER_PASS` rows
        on the CPU (an ensemble's views are rows too), 512 elsewhere."""
        import torch

        from .allocator import keep_freed_memory

        self.device = torch.device(device)
        if self.device.type == "cpu":
            keep_freed_memory()  # with small passes, every pass reuses the heap instead of page-faulting it in
        self.model, self.card = model.to(device).eval(), card
        self.batch_size = batch_size or (max(1, CPU_ROWS_PER_PASS // card.rows_per_face) if self.device.type == "cpu" else 512)
        self.labels = card.labels
        self.temperature, self.threshold = card.temperature, card.threshold

    @classmethod
    def from_file(cls, weights_path: str | Path, device: str = "cpu") -> "TorchPredictor":
        from .device import pick_device
        from .model_io import load_model

        device = pick_device(device)  # an unknown or missing device is a one-line error here, not in torch
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
        return check_outputs(np.concatenate(outputs) if outputs else np.zeros((0, len(self.labels)), np.float32), self.card)

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        return softmax(self.predict_logits(batch), self.temperature)


class OnnxPredictor:
    """An exported .onnx run by ONNX Runtime; labels and card come from the file's own metadata.

    `probs` is computed inside the graph with the temperature the export recorded, so this class
    needs no card file, torch or fastai.
    """

    backend = "onnx"

    def __init__(self, onnx_path: str | Path, threads: int | None = None, batch_size: int = ONNX_FACES_PER_RUN):
        path = Path(onnx_path)
        self.session = open_session(path, threads)
        metadata = self.session.get_modelmeta().custom_metadata_map
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if ([i.name for i in inputs] != [ONNX_INPUT] or list(inputs[0].shape[1:]) != list(INPUT_SHAPE)
                or inputs[0].type != "tensor(float)"):
            raise FerError(f"{path}: expected one float input 'image' [batch, 1, 48, 48], found "
                           f"{[(i.name, i.type, i.shape) for i in inputs]}; is it a fer-fastai export?")
        if not set(ONNX_OUTPUTS) <= {o.name for o in outputs}:
            raise FerError(f"{path}: expected outputs {list(ONNX_OUTPUTS)}, found {[o.name for o in outputs]}; "
                           "is it a fer-fastai export?")
        if "labels" not in metadata:
            raise FerError(f"{path}: no 'labels' in the ONNX metadata; is it a fer-fastai export?")
        labels = maybe_json(metadata["labels"])
        if not (isinstance(labels, list) and labels and all(isinstance(label, str) for label in labels)):
            raise FerError(f"{path}: metadata 'labels' must be a JSON list of class names, got {metadata['labels'][:80]!r}")
        self.labels = tuple(labels)
        n_outputs = outputs[0].shape[-1]
        if isinstance(n_outputs, int) and n_outputs != len(self.labels):
            raise FerError(f"{path}: the metadata names {len(self.labels)} labels but the model has {n_outputs} outputs")
        self.card = card_from_onnx_metadata(metadata, str(path))
        self.temperature, self.threshold = self.card.temperature, self.card.threshold
        self.path, self.batch_size = path, batch_size

    def _run(self, output: str, batch: np.ndarray) -> np.ndarray:
        batch = check_batch(batch)
        if not len(batch):
            return np.zeros((0, len(self.labels)), np.float32)
        chunks = [self.session.run([output], {ONNX_INPUT: batch[start:start + self.batch_size]})[0]
                  for start in range(0, len(batch), self.batch_size)]
        return check_outputs(np.concatenate(chunks), self.card)

    def predict_logits(self, batch: np.ndarray) -> np.ndarray:
        return self._run("logits", batch)

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        return self._run("probs", batch)


def load_predictor(model_path: str | Path | None = None, backend: str | None = None, device: str = "cpu") -> Predictor:
    """A predictor for a .onnx or .safetensors file; `backend` may insist on one and must match the file.
    Without a file: the model inside the package (`paths.bundled_model`), which needs no torch."""
    path = Path(model_path) if model_path is not None else bundled_model()
    suffix = path.suffix.lower()
    if suffix not in (".onnx", ".safetensors"):
        raise FerError(f"{path} does not exist" if not path.exists() else f"{path}: expected a .onnx or .safetensors model file")
    wanted = backend or ("onnx" if suffix == ".onnx" else "torch")
    if wanted == "onnx":
        return OnnxPredictor(path if suffix == ".onnx" else sibling(path, "onnx"))
    if wanted == "torch":  # x.onnx and x.int8.onnx both come from x.safetensors
        return TorchPredictor.from_file(sibling(path, "safetensors"), device)
    raise FerError(f"unknown backend {backend!r}; choose onnx or torch")


@lru_cache(maxsize=1)
def default_predictor() -> Predictor:
    """The package's own model, opened once per process (for callers that name no predictor)."""
    return load_predictor()
