"""The one place that opens ONNX Runtime sessions, so every consumer runs a file the same way: on the
CPU provider, with a stated number of threads, and with a one-line error for a file that will not load."""

from __future__ import annotations

from pathlib import Path

from .errors import FerError


def open_session(path: str | Path, threads: int | None = None):
    """An `onnxruntime.InferenceSession` for `path` on the CPU; `threads` sets the intra-op threads (inter-op 1)."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise FerError(f"{path}: no such ONNX file")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own untyped errors for bad files
        raise FerError(f"{path}: not a loadable ONNX model ({str(error).splitlines()[0]})") from None
