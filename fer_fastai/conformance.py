"""Conformance vectors: inputs with the exact answers Python gives, so a port (Node, the browser, …) can
prove it follows the photo contract (`contract`, docs/onnx.md#conformance-vectors).

    python -m fer_fastai.conformance --model artifacts/fer_ensemble.onnx --out artifacts/conformance/fer_ensemble
    python -m fer_fastai.conformance --check artifacts/conformance/fer_ensemble

The first writes a folder: the input images (the demo's examples, and a few made from its photo to reach
every rule: a photo larger than the detector's copy, a tight crop found only on the retry, no face) and
`vectors.json`, which gives per input its boxes, each face's uint8 48x48 crop, probabilities, label and
uncertain flag, with the tolerances a port must meet. The second reproduces a folder with this code and
fails loudly if anything differs. Needs numpy, Pillow, OpenCV and onnxruntime only.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from fastcore.script import call_parse
from PIL import Image

from . import __version__
from .atomic import atomic_files, check_output_folder, json_text
from .contract import preprocess_contract
from .errors import FerError, cli_errors
from .faces import analyze, crop_faces, detect_faces
from .hashing import file_sha256
from .paths import REPO_ROOT, model_stem
from .predict import OnnxPredictor
from .preprocess import load_image, to_grayscale

VECTORS_FORMAT = "fer-fastai conformance v1"
VECTORS_FILE = "vectors.json"
EXAMPLES = REPO_ROOT / "demo" / "examples"
PHOTO = EXAMPLES / "collins_and_hopper.jpg"
# What a port must match: the crops and boxes exactly (integer arithmetic), the probabilities to 1e-5
# (float32 kernels differ by ~1e-7 between runtimes; a wrong resize moves them by 1e-2 or more).
TOLERANCES = {"boxes": 0, "crops": 0, "gray": 0, "probs": 1e-5}
# The made inputs, all cut from the example photo: the right face's box shrunk by 10% per side (too tight
# for the cascade until the retry pads it), a corner with no face, and the photo edge-padded to 1000x600
# (over the detector's 800 px, so detection runs on a downscaled copy and boxes are scaled back).
TIGHT_FACE_BOX = (500, 80, 621, 201)
NO_FACE_BOX = (0, 250, 120, 388)
LARGE_PAD = (140, 106)  # columns, rows added on each side


@dataclass(frozen=True)
class Case:
    name: str
    file: str
    make: Callable[[], bytes]  # the input file's bytes
    what: str


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def _photo() -> Image.Image:
    return load_image(PHOTO).convert("RGB")


def _large_gray() -> bytes:
    columns, rows = LARGE_PAD
    return _png(Image.fromarray(np.pad(np.asarray(to_grayscale(_photo())), ((rows, rows), (columns, columns)), mode="edge")))


CASES = (
    Case("collins_48", "collins_48.png", lambda: (EXAMPLES / "collins_48.png").read_bytes(), "a 48x48 face crop: no detection"),
    Case("hopper_48", "hopper_48.png", lambda: (EXAMPLES / "hopper_48.png").read_bytes(), "a 48x48 face crop: no detection"),
    Case("collins_and_hopper", "collins_and_hopper.jpg", PHOTO.read_bytes, "the demo's photo: two faces (JPEG, colour)"),
    Case("large_gray", "large_gray.png", _large_gray,
         "the photo's grayscale, edge-padded to 1000x600: detection on an 800x480 copy, boxes scaled back"),
    Case("tight_face", "tight_face.png", lambda: _png(_photo().crop(TIGHT_FACE_BOX)),
         "a tight colour crop of a face: found only on the padded retry, box clamped to the image"),
    Case("no_face", "no_face.png", lambda: _png(_photo().crop(NO_FACE_BOX)), "a corner of the photo: no face, no answer"),
)


def answer(path: Path, predictor: OnnxPredictor) -> dict[str, Any]:
    """What Python answers for one input file, with every intermediate a port can be compared on."""
    image = load_image(path)
    gray = to_grayscale(image)
    analysis = analyze(path, predictor)
    boxes = [face.box for face in analysis.faces]
    crops = crop_faces(gray, boxes)
    if len(crops) and not np.array_equal(predictor.predict_proba(crops[:, None].astype(np.float32) / 255),
                                         np.stack([face.probs for face in analysis.faces])):
        raise FerError(f"{path}: the crops re-run through the model do not give analyze's probabilities")
    return {"size": list(gray.size), "mode": analysis.mode,
            "found_before_retry": analysis.mode == "faces" and bool(detect_faces(gray)),
            "faces": [{"box": list(face.box), "crop": crop.tolist(), "probs": [float(p) for p in face.probs],
                       "label": analysis.labels[int(np.argmax(face.probs))], "uncertain": face.uncertain}
                      for face, crop in zip(analysis.faces, crops)]}


def write_vectors(model: Path, out: Path) -> dict[str, Any]:
    """Write the inputs and `vectors.json` for `model` into `out` (all files, or none)."""
    model, out = Path(model), check_output_folder(out)
    predictor = OnnxPredictor(model)
    with atomic_files() as stage:
        cases = []
        for case in CASES:
            with stage(out / case.file) as temp:
                temp.write_bytes(case.make())
            entry = {"name": case.name, "input": case.file, "what": case.what, **answer(temp, predictor)}
            if case.file.lower().endswith((".jpg", ".jpeg")):  # decoders differ: give the decoded grayscale too
                entry["gray"] = f"{case.name}.gray.png"
                with stage(out / entry["gray"]) as gray_temp:
                    gray_temp.write_bytes(_png(to_grayscale(load_image(temp))))
            cases.append(entry)
        vectors = {"format": VECTORS_FORMAT,
                   "model": {"file": model.name, "path": _relative(model, out), "sha256": file_sha256(model),
                             "card": model_stem(model).name + ".json"},
                   "generated_by": f"python -m fer_fastai.conformance --model {_shown(model)} --out {_shown(out)}",
                   "versions": _versions(), "tolerances": TOLERANCES,
                   "contract": predictor.card.preprocess or preprocess_contract(predictor.card), "cases": cases}
        with stage(out / VECTORS_FILE) as temp:
            temp.write_text(compact_json(vectors))
    return vectors


def read_vectors(folder: Path) -> dict[str, Any]:
    path = Path(folder) / VECTORS_FILE
    if not path.is_file():
        raise FerError(f"{folder}: no {VECTORS_FILE}; write one with python -m fer_fastai.conformance --model M --out {folder}")
    vectors = json.loads(path.read_text())
    if vectors.get("format") != VECTORS_FORMAT:
        raise FerError(f"{path}: not {VECTORS_FORMAT!r} (format {vectors.get('format')!r})")
    return vectors


def check_vectors(folder: Path, model: Path | None = None) -> dict[str, Any]:
    """Reproduce every case in `folder` with this code and `model` (default: the file the vectors name);
    returns counts and the largest probability difference, and raises FerError naming the first mismatch."""
    folder = Path(folder)
    vectors = read_vectors(folder)
    model = Path(model) if model else (folder / vectors["model"]["path"]).resolve()
    predictor = OnnxPredictor(model)
    tolerance = vectors["tolerances"]["probs"]
    worst, faces = 0.0, 0
    for case in vectors["cases"]:
        where = f"{folder / case['input']}"
        got = answer(folder / case["input"], predictor)
        if "gray" in case and not np.array_equal(np.asarray(to_grayscale(load_image(folder / case["input"]))),
                                                 np.asarray(load_image(folder / case["gray"]))):
            raise FerError(f"{where}: its grayscale differs from {case['gray']}")
        if (got["size"], got["mode"]) != (case["size"], case["mode"]):
            raise FerError(f"{where}: size/mode {got['size']} {got['mode']!r}, expected {case['size']} {case['mode']!r}")
        boxes = [face["box"] for face in got["faces"]]
        if boxes != [face["box"] for face in case["faces"]]:
            raise FerError(f"{where}: boxes {boxes}, expected {[face['box'] for face in case['faces']]}")
        for index, (mine, expected) in enumerate(zip(got["faces"], case["faces"])):
            if mine["crop"] != expected["crop"]:
                raise FerError(f"{where}: face {index}'s 48x48 crop differs")
            diff = float(np.abs(np.subtract(mine["probs"], expected["probs"])).max())
            worst = max(worst, diff)
            if not diff <= tolerance:
                raise FerError(f"{where}: face {index}'s probabilities differ by {diff:.2e} > {tolerance:g}")
            if (mine["label"], mine["uncertain"]) != (expected["label"], expected["uncertain"]):
                raise FerError(f"{where}: face {index} is {mine['label']}/{mine['uncertain']}, expected "
                               f"{expected['label']}/{expected['uncertain']}")
            faces += 1
    return {"model": str(model), "cases": len(vectors["cases"]), "faces": faces, "max_abs_diff_probs": worst,
            "tolerance_probs": tolerance}


def compact_json(data: Any) -> str:
    """The project's indented JSON, with lists of plain numbers on one line (a crop row is 48 numbers, not 48 lines)."""
    return re.sub(r"\[\s+([-+.\deE]+(?:,\s+[-+.\deE]+)*)\s+\]",
                  lambda match: "[" + re.sub(r",\s+", ", ", match.group(1)) + "]", json_text(data))


def _relative(path: Path, folder: Path) -> str:
    """`path` relative to `folder`, with `..` where needed (Path.relative_to(walk_up=True) needs Python 3.12)."""
    return Path(os.path.relpath(Path(path).resolve(), Path(folder).resolve())).as_posix()


def _shown(path: Path) -> str:
    path = Path(path).resolve()
    return path.relative_to(REPO_ROOT).as_posix() if path.is_relative_to(REPO_ROOT) else str(path)


def _versions() -> dict[str, str]:
    import cv2
    import onnxruntime
    import PIL

    return {"fer_fastai": __version__, "pillow": PIL.__version__, "opencv": cv2.__version__,
            "onnxruntime": onnxruntime.__version__, "numpy": np.__version__}


@call_parse
def main(model: Path = None,  # the .onnx to write vectors for (with --out), or to check with (default: the one the vectors name)
         out: Path = None,  # folder to write the inputs and vectors.json into
         check: Path = None,  # a vectors folder to reproduce with this code
         ):
    "Write conformance vectors for a model, or reproduce a folder of them with this code."
    logging.getLogger("fer_fastai.faces").setLevel(logging.ERROR)  # the no-face input warns by design
    with cli_errors():
        if check:
            result = check_vectors(check, model)
            print(f"conformance {check}: {result['cases']} inputs, {result['faces']} faces: boxes and crops exact, "
                  f"max |Δprob| {result['max_abs_diff_probs']:.1e} (tolerance {result['tolerance_probs']:g}): PASSED")
        elif model and out:
            vectors = write_vectors(model, out)
            faces = sum(len(case["faces"]) for case in vectors["cases"])
            print(f"wrote {Path(out) / VECTORS_FILE}: {len(vectors['cases'])} inputs, {faces} faces")
        else:
            raise FerError("give --model M.onnx --out FOLDER to write vectors, or --check FOLDER to reproduce them")
