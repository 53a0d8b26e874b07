"""`python demo/app.py [--model PATH] [--backend onnx|torch] [--host 127.0.0.1] [--port 7860] [--share]`

A Gradio page over either backend. UI wiring only: reading images, finding and classifying faces and
drawing them is `fer_fastai.faces`; models are `fer_fastai.predict`. `build_app(model)` builds the
page without launching it (tests use it); the server starts only under `__main__`.
"""

from __future__ import annotations

import csv
import html
import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import pandas as pd
from fastcore.script import call_parse
from PIL import Image

from fer_fastai.card import ModelCard, card_path, read_card
from fer_fastai.errors import FerError, cli_errors
from fer_fastai.explain import draw_explained_faces, explain_analysis, explained_dicts
from fer_fastai.faces import FACE_COLOURS, PHOTO, STREAM, Analysis, Face, analyze, answer_text, draw_faces, top_k
from fer_fastai.paths import DEFAULT_MODEL, is_int8, sibling
from fer_fastai.predict import OnnxPredictor, Predictor, TorchPredictor
from fer_fastai.preprocess import INPUT_SHAPE
from fer_fastai.spreadsheet import spreadsheet_safe
from fer_fastai.views import view_count

from demo.uploads import OutputFiles, failure_message, upload_path
from demo.video_tab import build_video_tab

log = logging.getLogger("fer_fastai.demo")

EXAMPLES = sorted((Path(__file__).parent / "examples").glob("*.[jp][pn]g"))
BACKENDS = ("onnx", "torch")
MAX_FILE_SIZE = "10mb"     # Gradio refuses bigger uploads; preprocess.MAX_PIXELS bounds the decoded size
MAX_BATCH_FILES = 50
CONCURRENCY = 2            # requests processed at once; the rest wait in Gradio's queue
QUEUE_SIZE = 64            # beyond this, new requests are told the queue is full
FACES_LIST_MAX_PX = 420    # the numbered answers scroll beyond this height (a crowd)
STREAM_EVERY_S = 0.1       # the browser sends a webcam frame this often: up to 10 answers per second
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],  # no web fonts: works offline
                          font_mono=["ui-monospace", "monospace"])


class Models:
    """One model in both formats (`x.onnx`, `x.safetensors` + `x.json`); each backend loads on first use."""

    def __init__(self, model_path: Path, threads: int | None = None):
        # x.int8.onnx is served as it is; its float weights are x.safetensors, not x.int8.*
        self.paths = {"onnx": model_path if is_int8(model_path) else sibling(model_path, "onnx"),
                      "torch": sibling(model_path, "safetensors")}
        self.available = [backend for backend in BACKENDS if self.paths[backend].is_file()]
        self.threads = threads
        self._loaded: dict[str, Predictor] = {}
        self._lock = threading.Lock()

    def get(self, backend: str) -> Predictor:
        if backend not in BACKENDS:
            raise FerError(f"unknown backend {backend!r}; choose {' or '.join(BACKENDS)}")
        with self._lock:
            if backend not in self._loaded:
                path = self.paths[backend]
                if not path.is_file():
                    raise FerError(f"the {backend} backend needs {path.name} beside the model, and it is missing")
                if backend == "onnx":
                    predictor: Predictor = OnnxPredictor(path, threads=self.threads)
                else:
                    if self.threads:
                        import torch

                        torch.set_num_threads(self.threads)  # process-wide, hence only when the CLI asks
                    predictor = TorchPredictor.from_file(path)
                predictor.predict_proba(np.zeros((1, *INPUT_SHAPE), np.float32))  # one-time runtime set-up, now
                self._loaded[backend] = predictor
            return self._loaded[backend]

    def preload(self) -> None:
        """Load every available backend (in a background thread), so switching on the page is instant."""
        for backend in self.available:
            try:
                self.get(backend)
            except FerError as error:  # shown on the page if someone picks it
                log.warning("%s backend unavailable: %s", backend, error)

    def card(self) -> ModelCard:
        """The fullest model card there is: the JSON beside the weights, else the ONNX metadata."""
        if card_path(self.paths["torch"]).is_file():
            try:
                return read_card(self.paths["torch"])
            except FerError:
                pass  # the torch backend reports the broken card when it loads; show the ONNX metadata
        return self.get(self.available[0]).card


def resolve_model(model: str | Path | None, default: Path = DEFAULT_MODEL) -> Path:
    """The model to serve: the one asked for, else the shipped default; a clear error if neither exists."""
    if model is None:
        if not default.is_file() and not sibling(default, "safetensors").is_file():
            raise FerError(f"no model shipped yet in {default.parent.name}/ (expected {default.name}); pass --model PATH "
                           "(a .onnx or .safetensors, e.g. runs/<name>/model.safetensors)")
        return default
    path = Path(model)
    if path.suffix.lower() not in (".onnx", ".safetensors"):
        raise FerError(f"{path}: expected a .onnx or .safetensors model file")
    if not path.is_file():
        raise FerError(f"{path}: no such model file")
    return path


# ---- what the page shows -------------------------------------------------------------------------

def architecture_name(card: ModelCard) -> str:
    """'vgg', or for an ensemble the networks it averages, e.g. 'ensemble of vgg + seed, 9 shifted views per face'
    (views named per member when they differ: 'vgg (18 shifted and mirrored views per face) + seed (9 shifted …)')."""
    members = card.arch_kwargs.get("members") if card.is_ensemble else None
    if not members:
        return card.arch
    shifts = int(card.arch_kwargs.get("shifts", 0))
    views = [views_text(shifts, mirrored) for mirrored in card.member_mirrors]
    prefix = "ensemble of " if len(members) > 1 else ""
    if len(set(views)) == 1:
        return prefix + " + ".join(member["arch"] for member in members) + (f", {views[0]}" if views[0] else "")
    return prefix + " + ".join(member["arch"] + (f" ({text})" if text else "") for member, text in zip(members, views))


def views_text(shifts: int, mirrored: bool) -> str:
    """'9 shifted views per face', '18 shifted and mirrored views per face', or '' for the face alone."""
    kinds = " and ".join(kind for kind, used in (("shifted", shifts), ("mirrored", mirrored)) if used)
    return f"{view_count(shifts, mirrored)} {kinds} views per face" if kinds else ""


def training_text(card: ModelCard) -> str:
    """How the model was trained; an ensemble names each member's architecture and epochs."""
    if card.is_ensemble:
        return "mean of the calibrated probabilities of " + ", ".join(
            f"{member.recipe.arch} ({member.recipe.recipe} recipe, {member.recipe.epochs} epochs)" if member.recipe
            else f"{member.weights} (recipe unknown)" for member in card.members)
    counts = card.data.counts if card.data else {}
    return (f"{card.recipe.recipe} recipe, {card.recipe.epochs} epochs"
            + (f", {counts['train']:,} training faces" if "train" in counts else ""))


def model_summary(card: ModelCard) -> str:
    metrics = card.metrics
    parts = [f"architecture **{architecture_name(card)}**"]
    if "test_accuracy" in metrics:
        parts.append(f"test accuracy **{metrics['test_accuracy']:.1%}**")
    if card.test_ece is not None:
        parts.append(f"calibration error (ECE) {card.test_ece:.3f}")
    return "Model: " + " · ".join(parts) + " — details in the *Model* tab."


def calibration_text(card: ModelCard) -> str | None:
    temperature = card.temperature
    test = (card.calibration or {}).get("test") or {}
    if "ece_before" in test:
        return (f"softmax temperature {temperature:.2f} fitted on the validation split; expected calibration "
                f"error on test {test['ece_before']:.3f} before, {test['ece_after']:.3f} after")
    if card.test_ece is not None:
        return f"expected calibration error on test {card.test_ece:.3f} (softmax temperature {temperature:.2f})"
    return None


def model_details(card: ModelCard, models: Models) -> str:
    metrics, size = card.metrics, card.model
    rows = [("Files", ", ".join(f"{models.paths[b].name} ({b})" for b in models.available)),
            ("Architecture", architecture_name(card) + (f", {size.params / 1e6:.2f} M parameters, "
                                                        f"{size.macs / 1e6:.0f} M multiply-adds per face" if size else "")),
            ("Labels", ", ".join(card.labels)),
            ("Input", card.input or "?")]
    if "test_accuracy" in metrics:
        rows.append(("Test accuracy", f"{metrics['test_accuracy']:.1%}" + (f" on {metrics['test_n']:,} FER2013 test faces" if "test_n" in metrics else "")
                     + (f", macro F1 {metrics['test_macro_f1']:.3f}" if "test_macro_f1" in metrics else "")))
    if calibration_text(card):
        rows.append(("Calibration", calibration_text(card)))
    if card.recipe:
        rows.append(("Training", training_text(card)))
    items = "\n".join(f"- **{name}**: {html.escape(str(value), quote=False)}" for name, value in rows)
    return (items + "\n\n"
            "FER2013 faces are 48x48 grayscale web crops with noisy labels; expect mistakes on real photos, "
            "and read the bars as the model's uncertainty, not as a measurement of anyone's feelings.")


def faces_html(analysis: Analysis, k: int = 3) -> str:
    """Top-k probability bars per face, numbered and coloured like the boxes on the image."""
    if not analysis.faces:
        return f'<div class="fer-no-face">{html.escape(analysis.note or "")}</div>'
    blocks = []
    for number, face in enumerate(analysis.faces, start=1):
        colour = FACE_COLOURS[(number - 1) % len(FACE_COLOURS)]
        title = f"Face {number}" if analysis.mode == "faces" else "Face"
        if face.uncertain:
            title += f' <span style="font-weight:normal">({html.escape(answer_text(face, analysis.labels))})</span>'
        bars = "".join(
            f'<div style="display:flex;align-items:center;gap:8px;margin:3px 0">'
            f'<span style="width:68px">{html.escape(label)}</span>'
            f'<span style="flex:1;height:14px;background:rgba(128,128,128,.2);border-radius:3px;overflow:hidden">'
            f'<span style="display:block;height:100%;width:{prob:.1%};background:{colour}"></span></span>'
            f'<span style="width:44px;text-align:right;font-variant-numeric:tabular-nums">{prob:.0%}</span></div>'
            for label, prob in top_k(face.probs, analysis.labels, k))
        blocks.append(f'<div class="fer-face"><b>'
                      f'<span style="display:inline-block;width:12px;height:12px;background:{colour};'
                      f'margin-right:6px;border-radius:2px"></span>{title}</b>{bars}</div>')
    # Several faces side by side, and a crowd scrolls inside a bounded box instead of stretching the page.
    return ('<div class="fer-faces" style="display:grid;grid-template-columns:repeat(auto-fill,minmax(230px,1fr));'
            f'gap:10px 18px;max-height:{FACES_LIST_MAX_PX}px;overflow-y:auto">' + "".join(blocks) + "</div>")


def status_line(analysis: Analysis, total_ms: float) -> str:
    count = len(analysis.faces)
    found = {"faces": f"**{count} face{'s' if count != 1 else ''}**", "no face": "**No face found**, nothing classified",
             "crop": "**48x48 input**, treated as an already-cropped face"}[analysis.mode]
    if analysis.mode == "no face":
        return f"{found} · searched in {total_ms:.0f} ms"
    timing = (f"answered by **{analysis.backend}** in **{analysis.timings_ms['model']:.1f} ms** (model), "
              f"{total_ms:.0f} ms in all")
    if analysis.mode == "faces":
        timing += f" (face detection {analysis.timings_ms['detect']:.0f} ms)"
    return f"{found} · {timing}"


def backend_info(models: Models) -> str:
    missing = [backend for backend in BACKENDS if backend not in models.available]
    if not missing:
        return "Same model, two runtimes: ONNX Runtime or PyTorch."
    return f"Only {models.available[0]}: {models.paths[missing[0]].name} is not beside the model."


HEAT_MAP_NOTE = (" · heat map: the brighter (yellow) a spot, the more hiding it lowers the answer's probability "
                 "(docs/evaluation.md)")


def error_line(message: str) -> str:
    return f"**Could not use this image:** {message}"


# ---- handlers: small functions over fer_fastai ---------------------------------------------------

def face_thumbnail(analysis: Analysis, face: Face, side: int = 96) -> Image.Image:
    """The face as the user sees it (colour, upright), square, for the batch gallery."""
    x, y, w, h = face.box
    return analysis.image.crop((x, y, x + w, y + h)).resize((side, side), Image.Resampling.LANCZOS)


def make_handlers(models: Models, outputs: OutputFiles | None = None) -> dict[str, Any]:
    outputs = outputs or OutputFiles()

    def classify_photo(image: dict[str, Any] | None, backend: str, heat_map: bool = False):
        """One image (upload, webcam snapshot, example) → annotated image, status, bars, detect_emotions JSON;
        with `heat_map`, each face's occlusion heat map is laid over it and added to the JSON (`heatmap`)."""
        if not image:
            return None, "", "", None
        start = time.perf_counter()
        path, name = upload_path(image)
        try:
            predictor = models.get(backend)
            analysis = analyze(path, predictor, PHOTO)
            if heat_map and analysis.faces:
                heat_maps = explain_analysis(analysis, predictor)
                picture = draw_explained_faces(analysis, heat_maps)
                answers = explained_dicts(analysis, heat_maps)
            else:
                picture, answers = draw_faces(analysis), analysis.as_dicts()
            annotated = outputs.image(picture)
        except Exception as error:
            return None, error_line(html.escape(failure_message(error, path, name), quote=False)), "", None
        total_ms = (time.perf_counter() - start) * 1000
        log.info("%s: %s, %d face(s), model %.1f ms, total %.0f ms", name, analysis.backend, len(analysis.faces),
                 analysis.timings_ms["model"], total_ms)
        status = status_line(analysis, total_ms) + (HEAT_MAP_NOTE if heat_map and analysis.faces else "")
        return annotated, status, faces_html(analysis), answers

    def classify_frame(frame, backend: str):
        """A webcam frame → the annotated frame, status and bars; the lighter face search keeps up in real time."""
        if frame is None:
            return None, "", ""
        start = time.perf_counter()
        try:
            analysis = analyze(frame, models.get(backend), STREAM)
            annotated = draw_faces(analysis, max_side=640)
        except Exception as error:
            return None, error_line(html.escape(failure_message(error, "", "the webcam frame"), quote=False)), ""
        return annotated, status_line(analysis, (time.perf_counter() - start) * 1000), faces_html(analysis)

    def classify_batch(files: list[str] | None, backend: str):
        """Several files → a table (file, face, box, label, confidence), the same as a CSV download, and a
        thumbnail per face; a file that is not a readable image gets a row saying why."""
        if not files:
            return None, None, [], ""
        note = ""
        if len(files) > MAX_BATCH_FILES:
            note = f" Only the first {MAX_BATCH_FILES} of {len(files)} files were read (the batch limit)."
            files = files[:MAX_BATCH_FILES]
        start = time.perf_counter()
        header = ["file", "face", "x", "y", "w", "h", "label", "confidence", "note"]
        rows, thumbnails, failed, no_face = [], [], 0, 0
        for path in files:
            path, name = upload_path(path)
            try:
                analysis = analyze(path, models.get(backend), PHOTO)
            except Exception as error:
                failed += 1
                rows.append([name, "", "", "", "", "", "", "", failure_message(error, path, name)])
                continue
            if not analysis.faces:
                no_face += 1
                rows.append([name, "", "", "", "", "", "", "", "no face found"])
            for number, face in enumerate(analysis.faces, start=1):
                label, prob = top_k(face.probs, analysis.labels, 1)[0]
                rows.append([name, number, *face.box, label, round(prob, 4),
                             answer_text(face, analysis.labels) if face.uncertain else analysis.note or ""])
                thumbnails.append((outputs.image(face_thumbnail(analysis, face), "fer-face-"),
                                   f"{name} · face {number}: {answer_text(face, analysis.labels)}"))
        csv_path = outputs.new("fer-batch-", ".csv")
        with open(csv_path, "w", newline="") as handle:
            csv.writer(handle).writerows([header, *([spreadsheet_safe(cell) if isinstance(cell, str) else cell
                                                     for cell in row] for row in rows)])
        total_ms = (time.perf_counter() - start) * 1000
        status = (f"**{len(files)} file{'s' if len(files) != 1 else ''}**, {len(rows) - failed - no_face} face row(s)"
                  + (f", **{failed} unreadable** (see the note column)" if failed else "")
                  + f" · answered by **{backend}** in {total_ms:.0f} ms." + note)
        return pd.DataFrame(rows, columns=header), str(csv_path), thumbnails, status

    return {"photo": classify_photo, "frame": classify_frame, "batch": classify_batch}


# ---- the page ------------------------------------------------------------------------------------

def build_app(model: str | Path | None = None, backend: str | None = None, threads: int | None = None) -> gr.Blocks:
    """The Gradio page for one model (either file of the pair), not launched; errors are FerErrors."""
    model_path = resolve_model(model)
    models = Models(model_path, threads)
    if not models.available:
        raise FerError(f"{model_path}: neither {models.paths['onnx'].name} nor {models.paths['torch'].name} exists")
    backend = backend or ("onnx" if model_path.suffix.lower() == ".onnx" else "torch")
    if backend not in BACKENDS:
        raise FerError(f"unknown backend {backend!r}; choose {' or '.join(BACKENDS)}")
    models.get(backend)  # load now: a bad model file is a one-line error at startup, not on the page
    threading.Thread(target=models.preload, name="preload-backends", daemon=True).start()
    outputs = OutputFiles()  # one folder for every tab's result files
    handlers = make_handlers(models, outputs)
    card = models.card()

    with gr.Blocks(title="fer-fastai: facial expressions", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown("## Facial expression recognition\nShow it a face or a photo: every face found is boxed, "
                    "numbered, and labelled with one of seven FER2013 expressions.")
        with gr.Row(equal_height=True):
            backend_radio = gr.Radio(list(models.available), value=backend, label="Backend", scale=1,
                                     interactive=len(models.available) > 1,
                                     info=backend_info(models))
            gr.Markdown(model_summary(card))
        with gr.Tabs():
            with gr.Tab("Photo"):
                with gr.Row():
                    with gr.Column():
                        photo = gr.Image(label="Photo or face crop (upload, webcam snapshot, or paste)", type="filepath",
                                         sources=["upload", "webcam", "clipboard"], height=360)
                        heat_map = gr.Checkbox(label="Show what drove each answer (heat map)", value=False,
                                               info="Hides each part of the face in turn and shows where that changes "
                                                    "the answer most; about 50 model calls per face, so slower.")
                        if EXAMPLES:
                            gr.Examples([[str(path)] for path in EXAMPLES], inputs=[photo], label="Examples")
                    with gr.Column():
                        annotated = gr.Image(label="Faces found", type="filepath", interactive=False, height=360,
                                             elem_id="annotated")
                        status = gr.Markdown(elem_id="status")
                        bars = gr.HTML(elem_id="faces")
                        with gr.Accordion("As data: fer_fastai.faces.detect_emotions(image, predictor)", open=False):
                            faces_json = gr.JSON(label="faces")
            with gr.Tab("Live webcam"):
                gr.Markdown("Streams your webcam through the model several times a second; a lighter face search "
                            "than the Photo tab's keeps it real-time on a CPU. Frames go to this server only.")
                with gr.Row():
                    webcam = gr.Image(label="Webcam", sources=["webcam"], streaming=True, type="numpy")
                    webcam_out = gr.Image(label="Faces found", type="numpy", format="jpeg", interactive=False)
                webcam_status = gr.Markdown(elem_id="webcam-status")
                webcam_bars = gr.HTML()
            with gr.Tab("Batch"):
                # No file_types filter: Gradio would reject the whole batch for one .pdf; each file that is
                # not a readable image gets a row saying so instead.
                files = gr.File(label=f"Several images (up to {MAX_BATCH_FILES})", file_count="multiple",
                                type="filepath", elem_id="batch-files")
                batch_status = gr.Markdown()
                table = gr.Dataframe(label="One row per face", interactive=False, wrap=True,
                                     column_widths=["18%", "6%", "6%", "6%", "6%", "6%", "9%", "11%", "32%"])
                csv_file = gr.File(label="Download as CSV", interactive=False)
                thumbnails = gr.Gallery(label="Faces found", columns=10, fit_columns=False, height=260,
                                        object_fit="contain", allow_preview=True)
            build_video_tab(models, backend_radio, outputs)
            with gr.Tab("Model"):
                gr.Markdown(model_details(card, models))

        photo_outputs = [annotated, status, bars, faces_json]
        # preprocess=False: the handler reads the upload itself, so a non-image or corrupt file gets
        # our one-line message instead of Gradio's generic error (Gradio still checks the path).
        photo_inputs = [photo, backend_radio, heat_map]
        photo.change(handlers["photo"], photo_inputs, photo_outputs, preprocess=False,
                     api_name="classify_photo", show_progress="minimal")
        for control in (backend_radio, heat_map):  # the same photo answered again, not a separate API
            control.change(handlers["photo"], photo_inputs, photo_outputs, preprocess=False,
                           api_visibility="private", show_progress="minimal")
        webcam.stream(handlers["frame"], [webcam, backend_radio], [webcam_out, webcam_status, webcam_bars],
                      stream_every=STREAM_EVERY_S, time_limit=600, concurrency_limit=CONCURRENCY,
                      api_visibility="private", show_progress="hidden")  # clients send photos to classify_photo
        files.change(handlers["batch"], [files, backend_radio], [table, csv_file, thumbnails, batch_status],
                     api_name="classify_batch")
    demo.queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE_SIZE)
    return demo


def check_port_free(host: str, port: int) -> None:
    """A FerError naming the fix when `port` is taken (Gradio's own failure is a long traceback)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            raise FerError(f"port {port} on {host} is already in use (another demo still running?); "
                           f"stop it, or pass --port with a free one, e.g. --port {port + 1}") from None


def serve(demo: gr.Blocks, host: str = "127.0.0.1", port: int | None = 7860, share: bool = False, **launch_kwargs):
    """Launch with the demo's limits; `host` is 127.0.0.1 unless the user asks otherwise."""
    return demo.launch(server_name=host, server_port=port, share=share, max_file_size=MAX_FILE_SIZE,
                       theme=THEME, show_error=False, **launch_kwargs)


@call_parse
def main(model: str = None,  # a .onnx or .safetensors model (default: the shipped one in artifacts/)
         backend: str = None,  # onnx or torch: which runtime answers first (the page can switch)
         host: str = "127.0.0.1",  # interface to bind; 0.0.0.0 shows the demo to your whole network
         port: int = 7860,  # port to serve on
         share: bool = False,  # also serve through a public gradio.live link
         threads: int = 2,  # CPU threads per model call (the shipped 9-view ensemble: 39 ms per face on 2, 77 ms on 1)
         ):
    "Serve the facial-expression demo in a browser."
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own startup requests
    with cli_errors():
        check_port_free(host, port)  # before loading the model: a taken port is the commonest start-up failure
        serve(build_app(model, backend, threads), host, port, share)
