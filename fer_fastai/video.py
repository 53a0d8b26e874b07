"""Faces in videos: every frame's faces, followed across frames, their answers smoothed over time.

    python -m fer_fastai.video IN --out annotated.mp4 --csv timeline.csv [--plot timeline.png] [--every N]
                               [--model M] [--backend onnx|torch] [--seconds S] [--small-faces]

IN is any video OpenCV reads (mp4, avi, webm, mov, …) or a camera index (0). Frames are read, analysed and
written one at a time, so memory does not grow with the video's length. Each frame goes through the photo
path of `fer_fastai.faces` (Haar cascade, crop, the shared preprocessing, the predictor); `tracking` numbers
the faces across frames and smooths each one's probabilities. `iter_video` is the Python API: a generator of
per-frame results, beside `faces.detect_emotions` for photos. docs/video.md has the details.
"""

from __future__ import annotations

import csv
import importlib.util
import logging
import os
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
from fastcore.script import call_parse
from PIL import Image

from .atomic import atomic_files, check_output_file
from .errors import FerError, cli_errors, require
from .faces import FACE_COLOURS, PHOTO, STREAM, DetectSettings, Face, answer_text, crop_faces, detect_faces
from .paths import DEFAULT_MODEL
from .predict import Predictor, load_predictor
from .preprocess import pixels_to_input, to_grayscale
from .selective import is_uncertain
from .tracking import MAX_GAP_S, MIN_IOU, TIME_CONSTANT_S, Box, Tracker, iou

log = logging.getLogger(__name__)

# Video uses the webcam's face search: people in interviews, lectures and webcam sessions fill a good part of
# the frame (12% of its shorter side is 58 px in a 480p frame), and this search is 4x cheaper than the photo one
# (docs/video.md); `--small-faces` uses the photo search for groups and distant faces.
VIDEO = STREAM
# Between full searches, faces are looked for only near where they were: in a window around each followed face,
# widened by WINDOW_MARGIN of its size per side, for faces at least 0.8x its last size (WINDOW's min_face of the
# window's side). A full search runs at least every FULL_SEARCH_S seconds, so a new face is boxed within that
# time. The windows around one face take about an eighth of the CPU time of a full 640x480 search (docs/video.md).
FULL_SEARCH_S = 0.5
WINDOW_MARGIN = 0.5
WINDOW = DetectSettings(max_side=320, min_face=0.4, scale_factor=1.15, min_neighbors=VIDEO.min_neighbors)
SAME_FACE_IOU = 0.5  # two windows that found overlapping boxes found one face
# Container → OpenCV fourcc, for the encoders that opencv-python-headless ships. Browsers play only .webm (VP8).
CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".webm": "VP80"}
CAMERA_FPS = 30.0      # written into the video when a camera does not say its rate
MISSING_FPS = 25.0     # for files whose header has no usable frame rate
TIMELINE_POINTS = 2048  # points kept per track for the plot: pairs are averaged when full, so memory stays flat
PLOT_TRACKS = 6        # the plot shows this many people at most (those seen longest)
# Colours per class (Okabe-Ito, without the yellow that vanishes on white), and a dash pattern too, so no
# line is told apart by colour alone.
CLASS_STYLES = {"angry": ("#D55E00", "-"), "disgust": ("#009E73", "--"), "fear": ("#CC79A7", "-."),
                "happy": ("#E69F00", "-"), "sad": ("#0072B2", "--"), "surprise": ("#56B4E9", "-."),
                "neutral": ("#000000", ":")}
CSV_BOX = ("x", "y", "w", "h")


@dataclass(frozen=True)
class TrackedFace:
    """One person in one frame: their track number, box, this answer and the smoothed one that is shown."""

    track: int
    box: Box
    probs: np.ndarray      # the model's answer for the frame it was last analysed in
    smoothed: np.ndarray   # the track's moving average (tracking.py); its top class is the label shown
    uncertain: bool        # the smoothed top probability is below the model's threshold


@dataclass(frozen=True)
class VideoFrame:
    """What `iter_video` yields for each frame."""

    index: int             # 0-based frame number
    time: float            # seconds into the video (a camera: since the first frame)
    image: np.ndarray      # the decoded frame, BGR uint8 [H, W, 3] as OpenCV gives it
    faces: list[TrackedFace]
    analysed: bool         # False: a frame skipped by `every`, which repeats the last analysed frame's faces
    labels: tuple[str, ...]

    def as_dicts(self) -> list[dict[str, Any]]:
        """detect_emotions' shape plus the track: `{"track", "box", "emotions" (smoothed), "raw", "uncertain"}`."""
        return [{"track": face.track, "box": [int(v) for v in face.box],
                 "emotions": probabilities(face.smoothed, self.labels), "raw": probabilities(face.probs, self.labels),
                 "uncertain": face.uncertain} for face in self.faces]


def probabilities(probs: np.ndarray, labels: Sequence[str]) -> dict[str, float]:
    return {label: round(float(p), 4) for label, p in zip(labels, probs)}


@dataclass(frozen=True)
class VideoInfo:
    name: str              # the path or "camera N", for messages
    fps: float
    width: int
    height: int
    frame_count: int       # as the file's header says (0: unknown, a camera); may be approximate
    is_camera: bool

    @property
    def seconds(self) -> float | None:
        return self.frame_count / self.fps if self.frame_count else None


# ---- reading ------------------------------------------------------------------------------------

def camera_index(source: str | Path | int) -> int | None:
    """A camera number given as 0 or "0" (a file of that name wins)."""
    if isinstance(source, int):
        return source
    text = str(source)
    return int(text) if text.isdigit() and not Path(text).exists() else None


@contextmanager
def open_video(source: str | Path | int) -> Iterator[tuple[Any, VideoInfo]]:
    """An open `cv2.VideoCapture` and what its header says; a one-line FerError for anything unreadable."""
    import cv2

    camera = camera_index(source)
    if camera is not None:
        name = f"camera {camera}"
        capture = cv2.VideoCapture(camera)
        if not capture.isOpened():
            raise FerError(f"{name}: cannot open it (no such camera, or it is busy)")
    else:
        path = Path(source)
        name = str(path)
        if not path.is_file():
            raise FerError(f"{name}: no such file" if not path.exists() else f"{name}: is a folder, not a video")
        if path.stat().st_size == 0:
            raise FerError(f"{name}: the file is empty (0 bytes)")
        # FFmpeg only: other back ends would read "img%03d.png" as a pattern or a single image as a camera
        capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
        if not capture.isOpened():
            raise FerError(f"{name}: not a readable video (OpenCV cannot open it: not a video, or truncated)")
    try:
        fps = capture.get(cv2.CAP_PROP_FPS)
        if not (np.isfinite(fps) and 0 < fps <= 1000):
            fps = CAMERA_FPS if camera is not None else MISSING_FPS
            log.warning("%s does not say its frame rate; assuming %g frames/s", name, fps)
        count = capture.get(cv2.CAP_PROP_FRAME_COUNT)
        info = VideoInfo(name, float(fps), int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
                         int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                         int(count) if camera is None and np.isfinite(count) and count > 0 else 0, camera is not None)
        yield capture, info
    finally:
        capture.release()


def read_frames(capture: Any) -> Iterator[np.ndarray]:
    """Frames until the video ends (or a camera stops)."""
    while True:
        ok, frame = capture.read()
        if not ok or frame is None:
            return
        yield frame


def gray_frame(frame: np.ndarray) -> Image.Image:
    """A BGR frame as the model's grayscale (ITU-R 601 luma through the shared `preprocess.to_grayscale`)."""
    import cv2

    return to_grayscale(Image.fromarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)))


class FaceFinder:
    """Face boxes for each analysed frame: a full search with `settings` when `full_search_s` seconds have passed
    since the last one or no face is being followed, else a search in a window around each followed face."""

    def __init__(self, settings: DetectSettings = VIDEO, full_search_s: float = FULL_SEARCH_S):
        self.settings, self.full_search_s = settings, full_search_s
        self.last_full: float | None = None

    def find(self, gray: Image.Image, time: float, followed: list[Box]) -> list[Box]:
        if not followed or self.last_full is None or time - self.last_full >= self.full_search_s:
            self.last_full = time
            return detect_faces(gray, self.settings)
        found: list[Box] = []
        for box in followed:
            for new in search_window(gray, box):
                if all(iou(new, old) < SAME_FACE_IOU for old in found):
                    found.append(new)
        return sorted(found, key=lambda box: (box[0], box[1]))


def search_window(gray: Image.Image, box: Box) -> list[Box]:
    """Faces in a window around `box` (widened by WINDOW_MARGIN per side, clipped to the image), in image pixels."""
    x, y, w, h = box
    left, top = max(0, x - round(w * WINDOW_MARGIN)), max(0, y - round(h * WINDOW_MARGIN))
    right, bottom = min(gray.width, x + w + round(w * WINDOW_MARGIN)), min(gray.height, y + h + round(h * WINDOW_MARGIN))
    if right - left < 24 or bottom - top < 24:  # the cascade's smallest window
        return []
    return [(bx + left, by + top, bw, bh) for bx, by, bw, bh in detect_faces(gray.crop((left, top, right, bottom)), WINDOW)]


def classify(gray: Image.Image, boxes: list[Box], predictor: Predictor) -> np.ndarray:
    """Each box's class probabilities, from crops made exactly as `faces.analyze` makes them."""
    return predictor.predict_proba(pixels_to_input(crop_faces(gray, boxes)))


# ---- the API ------------------------------------------------------------------------------------

def iter_video(source: str | Path | int, predictor: Predictor, every: int = 1, time_constant: float = TIME_CONSTANT_S,
               max_gap_s: float = MAX_GAP_S, min_iou: float = MIN_IOU, settings: DetectSettings = VIDEO,
               max_seconds: float | None = None, full_search_s: float = FULL_SEARCH_S) -> Iterator[VideoFrame]:
    """Each frame of a video file or camera, with its faces numbered across frames and their answers smoothed.

    Faces are found and classified on every `every`-th frame; the frames in between repeat those answers
    (`analysed` is False). `time_constant` (seconds) is the smoothing's memory, `max_gap_s` how long a lost
    face keeps its number (tracking.py). Faces are searched in the whole frame every `full_search_s` seconds
    and in between only near the faces being followed (0: always the whole frame). Stops after `max_seconds`
    of video, if given. One frame is held at a time.
    """
    tracker = make_tracker(every, time_constant, max_gap_s, min_iou)
    with open_video(source) as (capture, info):
        yield from analyse_frames(read_frames(capture), info, predictor, every, tracker,
                                  FaceFinder(settings, full_search_s), max_seconds)


def make_tracker(every: int, time_constant: float, max_gap_s: float, min_iou: float = MIN_IOU) -> Tracker:
    check_tracking(every, time_constant, max_gap_s)
    return Tracker(max_gap_s, min_iou, time_constant)


def check_tracking(every: int, time_constant: float, max_gap_s: float) -> None:
    """Settings that make no sense are refused early, with a one-line message."""
    require([(every >= 1, f"every (analyse every N-th frame) must be 1 or more, got {every}"),
             (time_constant >= 0, f"the time constant must be 0 s or more, got {time_constant}"),
             (max_gap_s >= 0, f"the gap allowance (max gap) must be 0 s or more, got {max_gap_s}")])


def analyse_frames(frames: Iterable[np.ndarray], info: VideoInfo, predictor: Predictor, every: int, tracker: Tracker,
                   finder: FaceFinder, max_seconds: float | None) -> Iterator[VideoFrame]:
    labels = tuple(predictor.labels)
    threshold = getattr(predictor, "threshold", None)
    # A face missed once must not end its track: the gap allowance spans at least two analysed frames.
    tracker.max_gap_s = max(tracker.max_gap_s, 2 * every / info.fps)
    faces: list[TrackedFace] = []
    start = time.perf_counter()
    count = 0
    for index, frame in enumerate(frames):
        seconds = time.perf_counter() - start if info.is_camera else index / info.fps
        if max_seconds is not None and seconds >= max_seconds:
            return
        analysed = index % every == 0
        if analysed:
            gray = gray_frame(frame)
            boxes = finder.find(gray, seconds, tracker.followed(seconds))
            tracks = tracker.update(boxes, classify(gray, boxes, predictor), seconds)
            smoothed = np.array([track.smoothed for track in tracks]).reshape(len(tracks), len(labels))
            uncertain = is_uncertain(smoothed, threshold)
            faces = [TrackedFace(track.id, track.box, track.probs, track.smoothed, bool(unsure))
                     for track, unsure in zip(tracks, uncertain)]
        count += 1
        yield VideoFrame(index, seconds, frame, faces, analysed, labels)
    if info.frame_count and count == 0:
        raise FerError(f"{info.name}: no frame could be decoded (a corrupt or truncated video)")
    if count == 0:
        raise FerError(f"{info.name}: no frames (an empty video, or not a video)")
    if info.frame_count - count > max(2, info.frame_count // 100):
        log.warning("%s: read %d of the %d frames its header announces; the file may be truncated",
                    info.name, count, info.frame_count)


# ---- drawing ------------------------------------------------------------------------------------

def hex_to_bgr(colour: str) -> tuple[int, int, int]:
    red, green, blue = (int(colour[i:i + 2], 16) for i in (1, 3, 5))
    return blue, green, red


def track_colour(track: int) -> str:
    """The same colour for a track in every frame and in the plot (the photo page's palette, in turn)."""
    return FACE_COLOURS[(track - 1) % len(FACE_COLOURS)]


def draw_tracks(frame: VideoFrame, scale: float = 1.0) -> np.ndarray:
    """A copy of the frame (resized by `scale`) with each face's box, track number and smoothed answer."""
    import cv2

    image = frame.image.copy() if scale == 1.0 else cv2.resize(frame.image, None, fx=scale, fy=scale,
                                                                  interpolation=cv2.INTER_AREA)
    line = max(2, round(max(image.shape[:2]) / 320))
    font_scale = max(0.5, max(image.shape[:2]) / 1200)
    thickness = max(1, round(font_scale * 1.5))
    pad = max(3, line)
    for face in frame.faces:
        colour = hex_to_bgr(track_colour(face.track))
        x, y, w, h = (round(v * scale) for v in face.box)
        cv2.rectangle(image, (x, y), (x + w - 1, y + h - 1), colour, line)
        text = f"{face.track} {answer_text(Face(face.box, face.smoothed, face.uncertain), frame.labels)}"
        (text_w, text_h), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
        box_w, box_h = text_w + 2 * pad, text_h + baseline + 2 * pad
        tx = min(max(0, x), max(0, image.shape[1] - box_w))
        ty = y - box_h if y >= box_h else y  # above the box, or inside its top edge if no room
        cv2.rectangle(image, (tx, ty), (tx + box_w, ty + box_h), colour, cv2.FILLED)
        cv2.putText(image, text, (tx + pad, ty + pad + text_h), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (0, 0, 0),
                    thickness, cv2.LINE_AA)
    return image


# ---- outputs ------------------------------------------------------------------------------------

def check_video_path(path: str | Path) -> Path:
    path = check_output_file(path)
    if path.suffix.lower() not in CODECS:
        raise FerError(f"{path}: cannot write a {path.suffix or 'suffix-less'} video; use one of "
                       f"{', '.join(CODECS)} (.webm plays in browsers)")
    return path


@contextmanager
def video_writer(temp: Path, suffix: str, fps: float, size: tuple[int, int]) -> Iterator[Any]:
    """An OpenCV writer into `temp` (an atomic stage). OpenCV picks the container from the file name, so it
    writes `temp` + `suffix` and renames that to `temp` once released; on failure nothing is left."""
    import cv2

    encoded = temp.with_name(temp.name + suffix.lower())
    writer = cv2.VideoWriter(str(encoded), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*CODECS[suffix.lower()]), fps, size)
    try:
        if not writer.isOpened():
            raise FerError(f"cannot write a {suffix} video of {size[0]}x{size[1]} with this OpenCV; try .mp4 or .avi")
        yield writer
        writer.release()
        os.replace(encoded, temp)
    finally:
        writer.release()
        encoded.unlink(missing_ok=True)


def check_outputs(out: str | Path | None, csv_path: str | Path | None, plot: str | Path | None) -> None:
    """Before any work: at least one output, all different, each writable, the video's format one we can write."""
    outputs = [Path(path) for path in (out, csv_path, plot) if path is not None]
    require([(bool(outputs), "nothing to write: give an annotated video (--out), a CSV (--csv) or a plot (--plot)"),
             (len(set(outputs)) == len(outputs), "the outputs must be different files")])
    for path in outputs:
        check_output_file(path)
    if out is not None:
        check_video_path(out)
    if plot is not None and importlib.util.find_spec("matplotlib") is None:
        raise FerError("the timeline plot needs matplotlib: pip install matplotlib (or fer-fastai[train])")


def csv_header(labels: Sequence[str]) -> list[str]:
    return ["frame", "time_s", "track", *CSV_BOX, *(f"raw_{label}" for label in labels),
            *(f"smoothed_{label}" for label in labels), "label", "uncertain", "analysed"]


def csv_rows(frame: VideoFrame) -> Iterator[list[Any]]:
    """One row per face in the frame (none for a frame without faces)."""
    for face in frame.faces:
        yield [frame.index, round(frame.time, 3), face.track, *face.box, *(round(float(p), 4) for p in face.probs),
               *(round(float(p), 4) for p in face.smoothed), frame.labels[int(np.argmax(face.smoothed))],
               int(face.uncertain), int(frame.analysed)]


class Timeline:
    """Each track's smoothed probabilities over time, for the plot, in bounded memory: when a track has
    `capacity` points, neighbouring pairs are averaged (halving the time resolution), and later points are
    averaged in groups of the same size."""

    def __init__(self, capacity: int = TIMELINE_POINTS):
        self.capacity = capacity
        self.series: dict[int, dict[str, Any]] = {}

    def add(self, frame: VideoFrame) -> None:
        if not frame.analysed:
            return  # frames skipped by `every` repeat the last answer: no new point
        for face in frame.faces:
            series = self.series.setdefault(face.track, {"points": [], "pending": [], "group": 1, "first": frame.time})
            series["pending"].append(np.r_[frame.time, face.smoothed].astype(np.float32))
            series["last"] = frame.time
            if len(series["pending"]) == series["group"]:
                series["points"].append(np.mean(series["pending"], axis=0))
                series["pending"] = []
                if len(series["points"]) >= self.capacity:
                    points = np.array(series["points"])
                    series["points"] = list((points[0::2] + points[1::2]) / 2)
                    series["group"] *= 2

    def track_points(self, track: int) -> np.ndarray:
        """[n, 1 + n_classes]: time, then the smoothed probabilities."""
        series = self.series[track]
        rows = series["points"] + ([np.mean(series["pending"], axis=0)] if series["pending"] else [])
        return np.array(rows)

    def longest(self, n: int) -> list[int]:
        """The `n` tracks seen over the longest time, by track number."""
        spans = {track: series["last"] - series["first"] for track, series in self.series.items()}
        return sorted(sorted(spans, key=lambda track: (-spans[track], track))[:n])


def plot_timeline(timeline: Timeline, labels: Sequence[str], path: str | Path, time_constant: float,
                  threshold: float | None, source: str) -> None:
    """One panel per person: the smoothed probability of every class over time (PNG, written atomically)."""
    import matplotlib
    from matplotlib.figure import Figure

    tracks = timeline.longest(PLOT_TRACKS)
    shown = f"; the {len(tracks)} seen longest of {len(timeline.series)} people" if len(timeline.series) > len(tracks) else ""
    with matplotlib.rc_context({"font.size": 11, "axes.titlesize": 12, "legend.fontsize": 10}):
        figure = Figure(figsize=(10, 1.2 + 2.3 * max(1, len(tracks))), layout="constrained")
        figure.suptitle(f"Expressions over time, per person: {Path(source).name}\n"
                        f"(smoothed, time constant {time_constant:g} s{shown})", fontsize=13)
        if tracks:
            panels = np.atleast_1d(figure.subplots(len(tracks), 1, sharex=True))
            for track, axes in zip(tracks, panels):
                plot_track(axes, track, timeline.track_points(track), labels, threshold)
            panels[0].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
            panels[-1].set_xlabel("time in the video (s)")
        else:
            axes = figure.subplots()
            axes.set_axis_off()
            axes.text(0.5, 0.5, "No face found in the video", ha="center", va="center", fontsize=14)
        with atomic_files() as stage, stage(path) as temp:
            figure.savefig(temp, format="png", dpi=100)


def plot_track(axes: Any, track: int, points: np.ndarray, labels: Sequence[str], threshold: float | None) -> None:
    """One person's panel: a line per class, the uncertainty threshold, and the track's colour on the left edge."""
    from matplotlib.ticker import PercentFormatter

    for start, end in unseen_spans(points[:, 0]):
        axes.axvspan(start, end, color="#bbbbbb", alpha=0.35, linewidth=0)
        axes.text((start + end) / 2, 0.5, "not seen", ha="center", va="center", rotation=90, color="#555555")
    points = with_breaks(points)
    for i, label in enumerate(labels):
        colour, dash = CLASS_STYLES.get(label, ("#777777", "-"))
        axes.plot(points[:, 0], points[:, 1 + i], color=colour, linestyle=dash, linewidth=1.8, label=label)
    if threshold is not None:
        axes.axhline(threshold, color="#888888", linewidth=1.0, linestyle=(0, (1, 3)),
                     label=f"uncertain below {threshold:.0%}")
    mostly = labels[int(np.argmax(np.nanmean(points[:, 1:], axis=0)))]
    axes.set_title(f"Person {track}: seen {points[0, 0]:.1f}-{points[-1, 0]:.1f} s, mostly {mostly}", loc="left")
    axes.spines["left"].set_color(track_colour(track))
    axes.spines["left"].set_linewidth(4)
    axes.set_ylim(0, 1)
    axes.yaxis.set_major_formatter(PercentFormatter(1.0))
    axes.set_ylabel("probability")
    axes.grid(alpha=0.3)


def unseen_spans(times: np.ndarray) -> list[tuple[float, float]]:
    """The stretches between points that are much further apart than usual: the person was not seen there."""
    steps = np.diff(times)
    if not len(steps):
        return []
    gaps = np.flatnonzero(steps > max(3 * float(np.median(steps)), 0.2))
    return [(float(times[i]), float(times[i + 1])) for i in gaps]


def with_breaks(points: np.ndarray) -> np.ndarray:
    """`points` with a row of NaN inside each unseen span, so the lines stop there instead of bridging it."""
    starts = [start for start, _ in unseen_spans(points[:, 0])]
    index = np.searchsorted(points[:, 0], starts, side="right")
    return np.insert(points, index, np.nan, axis=0)


@dataclass(frozen=True)
class VideoSummary:
    frames: int
    analysed: int
    seconds: float         # of video
    people: int            # tracks started
    face_rows: int         # CSV rows: one per face per frame
    wall_s: float          # processing time

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.wall_s if self.wall_s > 0 else 0.0


Progress = Callable[[Iterator[VideoFrame], int | None], Iterable[VideoFrame]]


def annotate_video(source: str | Path | int, predictor: Predictor, out: str | Path | None = None,
                   csv_path: str | Path | None = None, plot: str | Path | None = None, every: int = 1,
                   time_constant: float = TIME_CONSTANT_S, max_gap_s: float = MAX_GAP_S,
                   settings: DetectSettings = VIDEO, max_seconds: float | None = None, max_side: int | None = None,
                   full_search_s: float = FULL_SEARCH_S, progress: Progress | None = None) -> VideoSummary:
    """Write the annotated video, the per-face CSV and the timeline plot (each optional) as one atomic set:
    all of them land, or none does. `max_side` shrinks the annotated video to at most that many pixels.
    `progress(frames, total)` may wrap the frame iterator (a tqdm or gr.Progress().tqdm)."""
    check_outputs(out, csv_path, plot)
    tracker = make_tracker(every, time_constant, max_gap_s)
    timeline = Timeline()
    labels = tuple(predictor.labels)
    frames = analysed = rows = 0
    last_time = 0.0
    start = time.perf_counter()
    with open_video(source) as (capture, info), atomic_files() as stage, ExitStack() as stack:
        total = info.frame_count or None
        if total and max_seconds is not None:
            total = min(total, int(np.ceil(max_seconds * info.fps)))
        scale = min(1.0, max_side / max(info.width, info.height)) if max_side and info.width else 1.0
        size = (round(info.width * scale), round(info.height * scale))
        writer = None
        if out is not None:
            writer = stack.enter_context(video_writer(stack.enter_context(stage(out)), Path(out).suffix, info.fps, size))
        table = None
        if csv_path is not None:
            table = csv.writer(stack.enter_context(open(stack.enter_context(stage(csv_path)), "w", newline="")))
            table.writerow(csv_header(labels))
        results = analyse_frames(read_frames(capture), info, predictor, every, tracker,
                                 FaceFinder(settings, full_search_s), max_seconds)
        try:
            for frame in progress(results, total) if progress else results:
                if writer is not None:
                    writer.write(fit(draw_tracks(frame, scale), size))
                if table is not None:
                    for row in csv_rows(frame):
                        table.writerow(row)
                        rows += 1
                timeline.add(frame)
                frames += 1
                analysed += frame.analysed
                last_time = frame.time
        except KeyboardInterrupt:
            if not info.is_camera:
                raise
            log.warning("stopped by Ctrl-C; writing what the camera gave")  # how a camera session ends
        if frames == 0:
            raise FerError(f"{info.name}: no frames were read")
        if plot is not None:
            plot_timeline(timeline, labels, stack.enter_context(stage(plot)), time_constant,
                          getattr(predictor, "threshold", None), info.name)
    return VideoSummary(frames, analysed, last_time + 1 / info.fps, tracker.next_id - 1, rows,
                        time.perf_counter() - start)


def fit(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`image` at `size` (width, height): a camera that changes resolution mid-way keeps the writer's size."""
    import cv2

    return image if image.shape[1::-1] == size else cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def summary_line(summary: VideoSummary, written: Sequence[str | Path]) -> str:
    people = (f"{summary.people} {'person' if summary.people == 1 else 'people'} followed" if summary.people
              else "no face found in any frame")
    every = f" ({summary.analysed} analysed)" if summary.analysed != summary.frames else ""
    return (f"{summary.frames} frames{every}, {summary.seconds:.1f} s of video, at {summary.frames_per_s:.1f} frames/s: "
            f"{people}; wrote {', '.join(map(str, written))}")


@call_parse
def main(source: str,  # a video file (mp4, avi, webm, mov, …) or a camera index such as 0
         out: str = None,  # the annotated video (.mp4, .avi, .mov; .webm plays in browsers)
         csv: str = None,  # one row per face per frame: box, raw and smoothed probabilities, label, uncertain
         plot: str = None,  # the timeline plot (PNG): each person's probabilities over time
         every: int = 1,  # analyse every N-th frame; the frames in between repeat the last answers
         model: str = str(DEFAULT_MODEL),  # a .onnx or .safetensors model
         backend: str = None,  # onnx or torch (default: from the model file's suffix)
         time_constant: float = TIME_CONSTANT_S,  # smoothing memory in seconds (0: no smoothing)
         max_gap: float = MAX_GAP_S,  # seconds a lost face keeps its track number
         seconds: float = None,  # stop after this many seconds of video (a camera: Ctrl-C also stops)
         small_faces: bool = False,  # search for small faces too (groups, lectures): the photo search, ~4x slower
         ):
    "Find, follow and classify every face of a video; write the annotated video, a CSV and a timeline plot."
    from tqdm import tqdm

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    with cli_errors():
        require([(seconds is None or seconds > 0, f"--seconds must be more than 0, got {seconds}")])
        check_outputs(out, csv, plot)
        check_tracking(every, time_constant, max_gap)
        predictor = load_predictor(model, backend)
        with ExitStack() as bars:  # the bar is cleared before the summary or an error line is printed

            def progress(frames: Iterator[VideoFrame], total: int | None) -> Iterable[VideoFrame]:
                return bars.enter_context(tqdm(frames, total=total, unit="frame", dynamic_ncols=True, leave=False))

            summary = annotate_video(source, predictor, out, csv, plot, every, time_constant, max_gap,
                                     PHOTO if small_faces else VIDEO, seconds, progress=progress)
        print(summary_line(summary, [path for path in (out, csv, plot) if path]))
