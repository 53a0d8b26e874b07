"""fer-fastai: facial-expression recognition on FER2013 with a hand-built CNN.

Importing the package pulls in neither torch nor fastai, so that the ONNX predictor can be
embedded with only numpy, Pillow and onnxruntime. Its one side effect: it hides torch's notice that
`torch.jit.script` is deprecated, which fastai triggers at import: without it every command's
output, one-line errors included, starts with two lines of a library's warning.
"""

import warnings

__version__ = "0.2.0"  # 0.2.0: flip/rotate/zoom really reach training (0.1.0 cards ran without them)

warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

__all__ = ["detect_emotions", "load_predictor"]


def __getattr__(name: str):
    """`fer_fastai.detect_emotions` and `fer_fastai.load_predictor`, imported on first use so that importing
    the package stays free of numpy, Pillow and onnxruntime until they are needed."""
    if name == "detect_emotions":
        from .faces import detect_emotions

        return detect_emotions
    if name == "load_predictor":
        from .predict import load_predictor

        return load_predictor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
