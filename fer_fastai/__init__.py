"""fer-fastai: facial-expression recognition on FER2013 with a hand-built CNN.

Importing the package has no side effects and pulls in neither torch nor fastai, so that the
ONNX predictor can be embedded with only numpy, Pillow and onnxruntime.
"""

__version__ = "0.2.0"  # 0.2.0: flip/rotate/zoom really reach training (0.1.0 cards ran without them)
