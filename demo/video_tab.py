"""The demo's Video tab: upload a clip → the annotated video, the timeline plot and the CSV, with progress.

UI wiring only: finding, following and classifying faces is `fer_fastai.video.annotate_video`, the same code as
`python -m fer_fastai.video`. `demo/app.py` calls `build_video_tab(models, backend_radio, OutputFiles())` inside its
`gr.Tabs()` with an `OutputFiles` for the files it hands to Gradio; `make_video_handler` is the handler alone.
"""

from __future__ import annotations

import html
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import gradio as gr

from fer_fastai.errors import FerError
from fer_fastai.video import VideoSummary, annotate_video, open_video, summary_line

from demo.uploads import OutputFiles, failure_message, upload_path

if TYPE_CHECKING:  # demo.app imports this module: the type only, never at run time
    from demo.app import Models

log = logging.getLogger("fer_fastai.demo")

MAX_VIDEO_SECONDS = 60   # longer clips are refused: at the target 25 frames/s a minute of video takes a minute
MAX_VIDEO_MB = 10        # the page's upload limit (demo/app.py MAX_FILE_SIZE), checked again here
VIDEO_MAX_SIDE = 960     # the annotated video is shrunk to this for the browser (faces are found at full size)
LIMITS_TEXT = (f"Clips up to {MAX_VIDEO_SECONDS} s and {MAX_VIDEO_MB} MB (mp4, webm, mov, avi). Every face is "
               "boxed and followed with a number; its label is the answer smoothed over about half a second. "
               "For longer videos or a camera, use `python -m fer_fastai.video` (docs/video.md).")


def check_clip(path: str, name: str) -> None:
    """A FerError if the clip is over the page's limits or unreadable, before any work."""
    size_mb = Path(path).stat().st_size / 1e6
    if size_mb > MAX_VIDEO_MB:
        raise FerError(f"{name} is {size_mb:.0f} MB; this page takes clips up to {MAX_VIDEO_MB} MB")
    with open_video(path) as (_, info):
        if info.seconds is not None and info.seconds > MAX_VIDEO_SECONDS:
            raise FerError(f"{name} is {info.seconds:.0f} s long; this page takes clips up to {MAX_VIDEO_SECONDS} s: "
                           "cut it, or run python -m fer_fastai.video on it")


def status_text(summary: VideoSummary, backend: str) -> str:
    every_text = f", {summary.analysed} of them analysed" if summary.analysed != summary.frames else ""
    found = (f"**{summary.people} {'person' if summary.people == 1 else 'people'}** followed" if summary.people
             else "**No face found** in any frame: face the camera, add light, or come closer")
    return (f"{found} · {summary.frames} frames ({summary.seconds:.1f} s){every_text} · answered by **{backend}** "
            f"at {summary.frames_per_s:.1f} frames/s")


def make_video_handler(models: "Models", files: OutputFiles) -> Callable[..., tuple[Any, Any, Any, str]]:
    """The handler: (upload, backend, every) → (annotated .webm, timeline PNG, CSV, status line). The .webm
    (VP8) plays in browsers without ffmpeg on the server."""

    def classify_video(video: dict[str, Any] | str | None, backend: str, every: int = 1,
                       progress: gr.Progress = gr.Progress()):
        if not video:
            return None, None, None, ""
        path, name = upload_path(video)
        prefix = f"{Path(name).stem[:40] or 'video'}-"
        outputs = tuple(files.new(prefix, suffix) for suffix in (".webm", ".csv", ".png"))
        try:
            check_clip(path, name)
            summary = annotate_video(path, models.get(backend), *outputs, every=int(every),
                                     max_seconds=MAX_VIDEO_SECONDS, max_side=VIDEO_MAX_SIDE,
                                     progress=lambda frames, total: progress.tqdm(frames, total=total, unit="frames",
                                                                                 desc="Reading the video"))
        except Exception as error:
            message = failure_message(error, path, name)
            return None, None, None, f"**Could not use this video:** {html.escape(message, quote=False)}"
        log.info("%s: %s", name, summary_line(summary, [output.name for output in outputs]))
        return str(outputs[0]), str(outputs[2]), str(outputs[1]), status_text(summary, backend)

    return classify_video


def build_video_tab(models: "Models", backend_radio: gr.Radio, files: OutputFiles) -> None:
    """The Video tab, built inside the page's `gr.Tabs()`; the backend control is the page's own."""
    handler = make_video_handler(models, files)
    with gr.Tab("Video"):
        gr.Markdown(LIMITS_TEXT, elem_id="video-limits")
        with gr.Row():
            with gr.Column():
                clip = gr.Video(label="Video clip", sources=["upload"], include_audio=True, height=320)
                every = gr.Slider(1, 5, value=1, step=1, label="Analyse every N-th frame",
                                  info="2 or more is faster; frames in between repeat the last answers")
                run = gr.Button("Analyse the video", variant="primary")
            with gr.Column():
                annotated = gr.Video(label="Faces followed", interactive=False, height=320)
                status = gr.Markdown(elem_id="video-status")
        timeline = gr.Image(label="Expressions over time, per person", type="filepath", interactive=False)
        table = gr.File(label="Download as CSV (one row per face per frame)", interactive=False)
    # preprocess=False: the handler reads the upload itself, so a non-video gets our one-line message,
    # and Gradio does not try to convert it with an ffmpeg that may not be installed.
    inputs, outputs = [clip, backend_radio, every], [annotated, timeline, table, status]
    clip.upload(handler, inputs, outputs, preprocess=False, api_name="classify_video", concurrency_limit=1)
    run.click(handler, inputs, outputs, preprocess=False, api_name=False, concurrency_limit=1)
