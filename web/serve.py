"""Serve the in-browser page on 127.0.0.1: static files only, with the headers wasm threads need.

The page runs the model in the browser (ONNX Runtime Web) and finds faces there (OpenCV.js), so the
server only hands out files. Before serving, this script assembles them in one site folder (by
default web/site/, ignored by git): the page's own files, the runtime files from web/node_modules
(`npm ci` puts them there; `make web` runs it), the Haar cascade from the pip opencv package, the
model's `.onnx` and card from artifacts/, all as links, and config.json, written from fer_fastai so
the page runs the default model with the detector settings Python uses. The site folder is the whole
page: copied with links followed (`cp -rL`), any static host that sends the same two headers serves it.

    python web/serve.py --port 8000 [--model fer_student]
"""

from __future__ import annotations

import dataclasses
import functools
import shutil
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from fastcore.script import call_parse

from fer_fastai.atomic import write_json
from fer_fastai.errors import FerError, cli_errors
from fer_fastai.faces import (CASCADE_FILE, CASCADE_WINDOW, FACE_COLOURS, NO_FACE_HINT, PHOTO, RETRY_PAD, STREAM,
                              cascade_path)
from fer_fastai.paths import DEFAULT_MODEL_NAME, REPO_ROOT, sibling
from fer_fastai.preprocess import IMAGE_SIZE

WEB = Path(__file__).resolve().parent
PAGE_FILES = ("index.html", "app.css", "js")
ORT_DIST = WEB / "node_modules" / "onnxruntime-web" / "dist"
# The wasm-only ESM build and the one runtime it loads (SIMD, threads); the other builds are for WebGPU/WebGL.
ORT_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
OPENCV_JS = WEB / "node_modules" / "@techstark" / "opencv-js" / "dist" / "opencv.js"
# Cross-origin isolation: without both, browsers withhold SharedArrayBuffer and wasm runs on one thread.
ISOLATION_HEADERS = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp"}


def site_links(model_name: str) -> dict[str, Path]:
    """Each file the page loads, by its path in the site, and where it lives on this machine."""
    model = REPO_ROOT / "artifacts" / f"{model_name}.onnx"
    links = {name: WEB / name for name in PAGE_FILES}
    links |= {f"vendor/ort/{name}": ORT_DIST / name for name in ORT_FILES}
    links |= {"vendor/opencv.js": OPENCV_JS, f"vendor/{CASCADE_FILE}": Path(cascade_path()),
              f"models/{model.name}": model, f"models/{sibling(model, 'card').name}": sibling(model, "card")}
    missing = [path for path in links.values() if not path.exists()]
    if any(WEB / "node_modules" in path.parents for path in missing):
        raise FerError("web/node_modules lacks onnxruntime-web or OpenCV.js: run `npm ci` in web/ (`make web` does)")
    if missing:
        raise FerError(f"{missing[0]} is missing; the page needs artifacts/{model_name}.onnx and its card "
                       f"artifacts/{model_name}.json")
    return links


def site_config(model_name: str) -> dict:
    """config.json: which model the page runs, and faces.py's detector settings and wording, so JavaScript
    copies no number."""
    return {
        "model": {"name": model_name, "onnx": f"models/{model_name}.onnx", "card": f"models/{model_name}.json"},
        "input_size": IMAGE_SIZE,
        "detector": {"cascade_file": CASCADE_FILE, "cascade": f"vendor/{CASCADE_FILE}", "cascade_window": CASCADE_WINDOW,
                     "retry_pad": RETRY_PAD, "photo": dataclasses.asdict(PHOTO), "stream": dataclasses.asdict(STREAM)},
        "no_face_hint": NO_FACE_HINT, "face_colours": FACE_COLOURS,
        "runtime": {"ort": f"vendor/ort/{ORT_FILES[0]}", "wasm_paths": "vendor/ort/", "opencv": "vendor/opencv.js"},
    }


def build_site(site: Path, model_name: str = DEFAULT_MODEL_NAME) -> Path:
    """The site folder, made afresh: links to every file the page loads, and its config.json."""
    links = site_links(model_name)
    if site.exists():
        shutil.rmtree(site)  # only links and config.json: the files they point to stay
    for name, target in links.items():
        path = site / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(target.resolve(), target_is_directory=target.is_dir())
    write_json(site / "config.json", site_config(model_name))
    return site


class IsolatedFiles(SimpleHTTPRequestHandler):
    """http.server's static files, with the cross-origin isolation headers and the MIME types wasm needs."""

    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript", ".js": "text/javascript",
                      ".wasm": "application/wasm", ".onnx": "application/octet-stream"}

    def end_headers(self) -> None:
        for name, value in ISOLATION_HEADERS.items():
            self.send_header(name, value)
        self.send_header("Cache-Control", "no-cache")  # revalidated (304) on reload, so edits show at once
        super().end_headers()


@call_parse
def main(port: int = 8000,                     # port on 127.0.0.1
         model: str = DEFAULT_MODEL_NAME,      # a model in artifacts/ (NAME.onnx and its card NAME.json)
         site: Path = WEB / "site"):           # where to assemble the page's files
    with cli_errors():
        folder = build_site(Path(site), model)
        try:
            server = ThreadingHTTPServer(("127.0.0.1", port), functools.partial(IsolatedFiles, directory=str(folder)))
        except OSError as error:
            raise FerError(f"cannot serve on 127.0.0.1:{port} ({error.strerror}); pick another with --port") from None
        print(f"The page runs {model} at http://127.0.0.1:{server.server_port}/ (Ctrl-C stops it)", flush=True)
        with server:
            server.serve_forever()
