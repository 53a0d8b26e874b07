"""Move a data set to a machine that lacks it: pack its decoded faces into one compressed file, unpack them there.

    python tools/pack_faces.py pack ../shared/fer2013 faces.npz [--splits train test]
    python tools/pack_faces.py unpack faces.npz ../shared/fer2013

Each split is packed as one PNG mosaic of its 48x48 faces (tiles in file order), which compresses
FER2013's training split into a file small enough to travel with a working tree to a borrowed GPU
(zlib or xz on the raw pixels do no better). Unpacking writes every face as a lossless PNG under the
same split, class folder and file stem, so the file order, and with it the validation split that
training carves out with `--split-seed`, is the same as on the original: runs trained on the copy can
join an ensemble with runs trained here. (A test JPEG comes back as a PNG of its decoded pixels,
which score the same.)
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
from PIL import Image

from fer_fastai.data import load_splits
from fer_fastai.errors import FerError, cli_errors

# 256 tiles make FER2013's training mosaic 12,288 x 5,424 pixels, under PIL's 89 M-pixel bomb warning.
TILES_PER_ROW = 256


def to_mosaic(pixels: np.ndarray) -> np.ndarray:
    """uint8 [N, 48, 48] faces → one [rows * 48, TILES_PER_ROW * 48] image, face i at tile i (row-major)."""
    count, side = len(pixels), pixels.shape[1]
    rows = -(-count // TILES_PER_ROW)
    padded = np.zeros((rows * TILES_PER_ROW, side, side), np.uint8)
    padded[:count] = pixels
    return padded.reshape(rows, TILES_PER_ROW, side, side).transpose(0, 2, 1, 3).reshape(rows * side, TILES_PER_ROW * side)


def from_mosaic(mosaic: np.ndarray, count: int, side: int = 48) -> np.ndarray:
    """The inverse of `to_mosaic`: the first `count` tiles as uint8 [count, side, side]."""
    rows = mosaic.shape[0] // side
    return mosaic.reshape(rows, side, TILES_PER_ROW, side).transpose(0, 2, 1, 3).reshape(-1, side, side)[:count]


def pack(data: Path, out: Path, splits: list[str]) -> None:
    """Each split in `splits` as a PNG mosaic of its faces plus their `class/stem` names, in one .npz."""
    faces = load_splits(data)
    missing = [split for split in splits if split not in faces]
    if missing:
        raise FerError(f"{data} has no {', '.join(missing)} split (it has {', '.join(faces)})")
    arrays = {}
    for split in splits:
        png = io.BytesIO()
        Image.fromarray(to_mosaic(faces[split].pixels)).save(png, "PNG", optimize=True)
        arrays[f"{split}_png"] = np.frombuffer(png.getvalue(), np.uint8)
        arrays[f"{split}_names"] = np.array([f"{Path(source).parent.name}/{Path(source).stem}".encode()
                                             for source in faces[split].sources])  # bytes: 1/4 of numpy's str
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as file:  # a path string would get .npz appended when it lacks one
        np.savez(file, **arrays)
    print(f"{out}: {', '.join(f'{split} {len(faces[split]):,}' for split in splits)} faces, "
          f"{out.stat().st_size / 2**20:.1f} MiB")


def unpack(packed: Path, data: Path) -> None:
    """Write every packed face as data/<split>/<class>/<stem>.png."""
    if not packed.is_file():
        raise FerError(f"{packed} does not exist; make it with: python tools/pack_faces.py pack DATA {packed}")
    try:
        arrays = np.load(packed)
    except (ValueError, OSError) as error:
        raise FerError(f"{packed} is not a file that `pack` wrote ({error})") from None
    with arrays:
        for split in [key.removesuffix("_png") for key in arrays if key.endswith("_png")]:
            names = arrays[f"{split}_names"]
            mosaic = np.array(Image.open(io.BytesIO(arrays[f"{split}_png"].tobytes())))
            for face, name in zip(from_mosaic(mosaic, len(names)), names):
                path = data / split / f"{name.decode()}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(face).save(path)
            print(f"{data / split}: {len(names):,} faces")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    pack_parser = commands.add_parser("pack", help="data folder (or fer2013.csv) → .npz")
    pack_parser.add_argument("data", type=Path)
    pack_parser.add_argument("out", type=Path)
    pack_parser.add_argument("--splits", nargs="+", default=["train"], help="splits to pack (default: train)")
    unpack_parser = commands.add_parser("unpack", help=".npz → data folder of PNGs")
    unpack_parser.add_argument("packed", type=Path)
    unpack_parser.add_argument("data", type=Path)
    args = parser.parse_args()
    with cli_errors():
        if args.command == "pack":
            pack(args.data, args.out, args.splits)
        else:
            unpack(args.packed, args.data)


if __name__ == "__main__":
    main()
