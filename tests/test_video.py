"""fer_fastai.video and tracking: clips made here with OpenCV from the example photo, the tracker and smoothing,
the outputs, every bad input, memory on a longer clip, and the demo's Video tab handler."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pytest
from PIL import Image

from fer_fastai.errors import FerError
from fer_fastai.labels import LABELS
from fer_fastai.predict import load_predictor
from fer_fastai.tracking import Tracker, iou, match_boxes, smoothing_weight
from fer_fastai.video import (Timeline, VideoFrame, annotate_video, camera_index, csv_header, iter_video,
                              search_window, gray_frame)

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "demo" / "examples" / "collins_and_hopper.jpg"  # public-domain portraits (SOURCES.md)
STUDENT = ROOT / "artifacts" / "fer_student.onnx"  # the fast shipped model: about 1 ms per face
SIZE = (320, 240)
FPS = 10.0


def face_patch() -> np.ndarray:
    """The left portrait's head and shoulders, BGR, 208x192: the cascade finds it at every shift below."""
    photo = np.asarray(Image.open(PHOTO).convert("RGB"))[:, :, ::-1]
    return cv2.resize(np.ascontiguousarray(photo[0:240, 40:300]), None, fx=0.8, fy=0.8, interpolation=cv2.INTER_AREA)


def frame_with_face(patch: np.ndarray | None, shift: int, size: tuple[int, int] = SIZE) -> np.ndarray:
    """A grey frame with the patch pasted `shift` pixels right of x=10 (no patch: an empty frame)."""
    canvas = np.full((size[1], size[0], 3), 90, np.uint8)
    if patch is not None:
        h, w = min(patch.shape[0], size[1] - 5), min(patch.shape[1], size[0] - 10 - shift)
        canvas[5:5 + h, 10 + shift:10 + shift + w] = patch[:h, :w]
    return canvas


def write_clip(path: Path, frames, fps: float = FPS, fourcc: str = "mp4v") -> Path:
    frames = iter(frames)
    first = next(frames)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, first.shape[1::-1])
    assert writer.isOpened()
    writer.write(first)
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def moving_face(n: int, present: Callable[[int], bool] = lambda i: True) -> list[np.ndarray]:
    patch = face_patch()
    return [frame_with_face(patch if present(i) else None, 3 * i) for i in range(n)]


@pytest.fixture(scope="module")
def student():
    return load_predictor(STUDENT)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """2 s of one face moving right, 10 frames/s."""
    return write_clip(tmp_path_factory.mktemp("clips") / "moving.mp4", moving_face(20))


class NoisyPredictor:
    """A happy face seen through noise: happy 52% ± 20 (uniform), neutral the rest but 10%, so the raw label
    is neutral in about a third of the frames, at random."""

    backend = "fake"
    labels = LABELS
    threshold = 0.45

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        probs = np.full((len(batch), len(LABELS)), 0.02, np.float32)
        happy = 0.52 + self.rng.uniform(-0.2, 0.2, len(batch))
        probs[:, LABELS.index("happy")] = happy
        probs[:, LABELS.index("neutral")] = 0.9 - happy
        return probs


# ---- the tracker and the smoothing, alone ---------------------------------------------------------

def test_iou_of_boxes():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (20, 20, 5, 5)) == 0.0
    assert iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)


def test_matching_takes_the_best_overlap_first_and_each_box_once():
    old = [(0, 0, 10, 10), (100, 0, 10, 10)]
    new = [(102, 0, 10, 10), (1, 0, 10, 10), (50, 50, 10, 10)]
    assert match_boxes(old, new) == {0: 1, 1: 0}


def test_tracks_keep_their_numbers_within_the_gap_allowance_and_not_after():
    tracker = Tracker(max_gap_s=0.5, time_constant=0)
    probs = np.eye(7)[[3]]
    assert [t.id for t in tracker.update([(10, 10, 50, 50)], probs, 0.0)] == [1]
    assert tracker.update([], probs[:0], 0.2) == []
    assert [t.id for t in tracker.update([(14, 10, 50, 50)], probs, 0.4)] == [1]  # back within 0.5 s: same person
    assert [t.id for t in tracker.update([(300, 10, 50, 50)], probs, 0.5)] == [2]  # elsewhere: someone else
    assert [t.id for t in tracker.update([(14, 10, 50, 50)], probs, 1.5)] == [3]  # back after 1.1 s: a new track


def test_smoothing_is_in_seconds_not_frames():
    """The same second of a new answer moves the average as far at 15 and at 60 frames/s."""
    reached = []
    for fps in (15, 60):
        tracker = Tracker(time_constant=0.5)
        tracker.update([(0, 0, 50, 50)], np.eye(7)[[6]], 0.0)
        for i in range(1, fps + 1):
            track, = tracker.update([(0, 0, 50, 50)], np.eye(7)[[3]], i / fps)
        reached.append(track.smoothed[3])
    assert reached[0] == pytest.approx(1 - np.exp(-1 / 0.5))
    assert reached[1] == pytest.approx(reached[0])
    assert smoothing_weight(0.1, 0) == 1.0


def test_the_timeline_keeps_a_bounded_number_of_points_and_their_means():
    timeline = Timeline(capacity=8)
    for i in range(100):
        probs = np.eye(7)[3] * (i / 100)
        timeline.add(VideoFrame(i, i / 10, np.zeros((2, 2, 3), np.uint8), [_face(probs)], True, LABELS))
    points = timeline.track_points(1)
    assert len(points) <= 9  # capacity, plus the partly filled group at the end
    assert np.all(np.diff(points[:, 0]) > 0)
    assert points[0, 0] < 1.0 and points[-1, 0] > 9.0  # the whole clip, at a coarser step
    assert points[:, 1 + 3] == pytest.approx(points[:, 0] / 10)  # each point averages time and answer alike


def _face(probs):
    from fer_fastai.video import TrackedFace

    return TrackedFace(1, (0, 0, 1, 1), probs, probs, False)


def test_a_camera_index_is_a_number_unless_a_file_has_that_name(tmp_path, monkeypatch):
    assert camera_index(0) == 0 and camera_index("1") == 1 and camera_index("clip.mp4") is None
    monkeypatch.chdir(tmp_path)
    (tmp_path / "2").write_bytes(b"x")
    assert camera_index("2") is None


# ---- frames of a real clip ----------------------------------------------------------------------

def test_every_frame_is_yielded_and_the_face_keeps_one_number(clip, student):
    frames = list(iter_video(clip, student))
    assert [frame.index for frame in frames] == list(range(20))
    assert [frame.time for frame in frames] == pytest.approx([i / FPS for i in range(20)])
    assert sum(bool(frame.faces) for frame in frames) >= 18
    assert {face.track for frame in frames for face in frame.faces} == {1}
    assert frames[0].image.shape == (SIZE[1], SIZE[0], 3)
    face = next(frame for frame in frames if frame.faces).as_dicts()[0]
    assert set(face) == {"track", "box", "emotions", "raw", "uncertain"} and list(face["emotions"]) == list(LABELS)


def test_a_face_that_leaves_and_comes_back_keeps_its_number_within_the_gap(tmp_path, student):
    away = range(8, 12)  # 0.4 s without the face
    path = write_clip(tmp_path / "away.mp4", moving_face(20, lambda i: i not in away))
    frames = list(iter_video(path, student, max_gap_s=1.0))
    assert all(not frames[i].faces for i in away)
    assert all(frames[i].faces for i in (13, 15, 19))
    assert {face.track for frame in frames for face in frame.faces} == {1}
    short_gap = list(iter_video(path, student, max_gap_s=0.2))
    assert {face.track for face in short_gap[7].faces} == {1}
    assert {face.track for face in short_gap[19].faces} == {2}


def test_sparse_analysis_keeps_track_numbers_whatever_the_gap_allowance(clip, student):
    """--every 8 at 10 frames/s analyses a frame every 0.8 s, longer than a 0.5 s gap allowance."""
    frames = list(iter_video(clip, student, every=8, max_gap_s=0.5))
    assert {face.track for frame in frames for face in frame.faces} == {1}


def test_every_n_analyses_one_frame_in_n_and_repeats_its_answers(clip, student):
    frames = list(iter_video(clip, student, every=3))
    assert [frame.analysed for frame in frames] == [i % 3 == 0 for i in range(20)]
    for frame in frames:
        if not frame.analysed:
            assert frame.faces == frames[frame.index - frame.index % 3].faces


def flips(labels: list[int]) -> int:
    return sum(a != b for a, b in zip(labels, labels[1:]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_smoothing_reduces_label_flips(seed):
    """Four seconds of a noisy happy face at 25 frames/s: the raw label flips often, the smoothed one rarely."""
    predictor, tracker = NoisyPredictor(seed), Tracker(time_constant=0.5)
    raw, smoothed = [], []
    for i in range(100):
        track, = tracker.update([(0, 0, 50, 50)], predictor.predict_proba(np.zeros((1, 1, 48, 48), np.float32)), i / 25)
        raw.append(int(np.argmax(track.probs)))
        smoothed.append(int(np.argmax(track.smoothed)))
    assert flips(raw) >= 20
    assert flips(smoothed) <= flips(raw) // 5
    assert smoothed[-1] == LABELS.index("happy")


def test_smoothing_reduces_label_flips_in_a_video(clip):
    frames = [frame for frame in iter_video(clip, NoisyPredictor(), time_constant=0.5) if frame.faces]
    raw = [int(np.argmax(frame.faces[0].probs)) for frame in frames]
    smoothed = [int(np.argmax(frame.faces[0].smoothed)) for frame in frames]
    assert flips(smoothed) < flips(raw)
    unsmoothed = [int(np.argmax(frame.faces[0].smoothed)) for frame in iter_video(clip, NoisyPredictor(), time_constant=0)
                  if frame.faces]
    assert unsmoothed == raw


def test_the_window_search_finds_the_face_that_moved(clip):
    patch = face_patch()
    box = search_window(gray_frame(frame_with_face(patch, 0)), (60, 20, 90, 90))
    moved = search_window(gray_frame(frame_with_face(patch, 12)), box[0])
    assert len(moved) == 1 and moved[0][0] - box[0][0] == pytest.approx(12, abs=6)


# ---- outputs -----------------------------------------------------------------------------------

def read_video(path: Path) -> tuple[int, tuple[int, int]]:
    capture = cv2.VideoCapture(str(path))
    count, size = 0, None
    while True:
        ok, frame = capture.read()
        if not ok:
            return count, size
        count, size = count + 1, frame.shape[1::-1]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("suffix", [".mp4", ".webm"])
def test_the_outputs_are_a_readable_video_csv_and_plot(clip, student, tmp_path, suffix):
    out, table, plot = tmp_path / f"annotated{suffix}", tmp_path / "timeline.csv", tmp_path / "timeline.png"
    summary = annotate_video(clip, student, out, table, plot)
    assert (summary.frames, summary.analysed, summary.people) == (20, 20, 1)
    assert read_video(out) == (20, SIZE)
    rows = read_csv(table)
    assert list(rows[0]) == csv_header(LABELS) and summary.face_rows == len(rows) >= 18
    assert [f"raw_{label}" for label in LABELS] == csv_header(LABELS)[7:14]
    row = rows[-1]
    assert row["track"] == "1" and row["label"] in LABELS and row["uncertain"] in ("0", "1")
    assert sum(float(row[f"smoothed_{label}"]) for label in LABELS) == pytest.approx(1, abs=1e-3)
    assert Image.open(plot).size[0] >= 800
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([out.name, table.name, plot.name])  # no temp files


def test_max_side_shrinks_the_annotated_video_only(clip, student, tmp_path):
    annotate_video(clip, student, tmp_path / "small.mp4", tmp_path / "t.csv", max_side=160)
    assert read_video(tmp_path / "small.mp4") == (20, (160, 120))
    assert int(read_csv(tmp_path / "t.csv")[0]["w"]) >= 50  # boxes stay in the input's pixels (~30 at 160)


def test_a_video_without_faces_gives_empty_tables_and_says_so(tmp_path, student):
    path = write_clip(tmp_path / "empty-room.mp4", [frame_with_face(None, 0)] * 6)
    summary = annotate_video(path, student, tmp_path / "a.mp4", tmp_path / "t.csv", tmp_path / "t.png")
    assert (summary.frames, summary.people, summary.face_rows) == (6, 0, 0)
    assert read_csv(tmp_path / "t.csv") == [] and (tmp_path / "t.csv").read_text().startswith("frame,time_s,track")
    assert read_video(tmp_path / "a.mp4") == (6, SIZE) and (tmp_path / "t.png").stat().st_size > 0


def test_a_4k_clip_is_read_at_full_size(tmp_path, student):
    big = cv2.resize(frame_with_face(face_patch(), 0, (480, 270)), (3840, 2160), interpolation=cv2.INTER_LINEAR)
    path = write_clip(tmp_path / "4k.mp4", [big, big])
    summary = annotate_video(path, student, tmp_path / "a.mp4", tmp_path / "t.csv")
    assert summary.frames == 2 and read_video(tmp_path / "a.mp4") == (2, (3840, 2160))
    assert summary.people == 1 and int(read_csv(tmp_path / "t.csv")[0]["w"]) > 300


def test_a_failure_half_way_leaves_no_output_and_no_temporary_file(clip, tmp_path):
    class BreaksOnTheFifthFrame(NoisyPredictor):
        calls = 0

        def predict_proba(self, batch):
            self.calls += 1
            if self.calls == 5:
                raise FerError("the model broke")
            return super().predict_proba(batch)

    old = tmp_path / "t.csv"
    old.write_text("the previous result\n")
    with pytest.raises(FerError, match="the model broke"):
        annotate_video(clip, BreaksOnTheFifthFrame(), tmp_path / "a.mp4", old, tmp_path / "t.png")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["t.csv"] and old.read_text() == "the previous result\n"


# ---- bad input ---------------------------------------------------------------------------------

def truncated(path: Path, target: Path, keep: float) -> Path:
    data = path.read_bytes()
    target.write_bytes(data[:int(len(data) * keep)])
    return target


@pytest.mark.parametrize("make, message", [
    (lambda folder, clip: folder / "missing.mp4", "no such file"),
    (lambda folder, clip: folder, "is a folder"),
    (lambda folder, clip: _write(folder / "empty.mp4", b""), "the file is empty"),
    (lambda folder, clip: _write(folder / "notes.mp4", b"these are not moving pictures\n" * 50), "not a readable video"),
    (lambda folder, clip: truncated(clip, folder / "cut.mp4", 0.5), "not a readable video"),
])
def test_unreadable_videos_are_one_line_errors(tmp_path, clip, student, make, message):
    with pytest.raises(FerError, match=message):
        annotate_video(make(tmp_path, clip), student, tmp_path / "a.mp4")
    assert not (tmp_path / "a.mp4").exists()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_a_truncated_avi_gives_the_frames_before_the_cut(tmp_path, student, caplog):
    whole = write_clip(tmp_path / "whole.avi", moving_face(20), fourcc="MJPG")
    cut = truncated(whole, tmp_path / "cut.avi", 0.6)
    summary = annotate_video(cut, student, csv_path=tmp_path / "t.csv")
    assert 5 <= summary.frames < 20
    assert "may be truncated" in caplog.text


@pytest.mark.parametrize("kwargs, message", [
    ({"every": 0}, "every .* must be 1 or more"),
    ({"time_constant": -1}, "time constant must be 0 s or more"),
    ({"out": "a.mkv"}, "cannot write a .mkv video"),
    ({"out": None}, "nothing to write"),
    ({"out": "same.csv", "csv_path": "same.csv"}, "must be different files"),
])
def test_bad_options_are_refused_before_any_work(tmp_path, clip, student, kwargs, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    options = {"out": "a.mp4"} | kwargs
    with pytest.raises(FerError, match=message):
        annotate_video(clip, student, **options)


def test_a_plot_without_matplotlib_is_one_line_before_any_work(clip, student, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "matplotlib" else real(name, *args))
    with pytest.raises(FerError, match="the timeline plot needs matplotlib"):
        annotate_video(clip, student, csv_path=tmp_path / "t.csv", plot=tmp_path / "t.png")
    assert list(tmp_path.iterdir()) == []


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fer_fastai.video", *args], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)


def test_the_command_writes_all_three_outputs_and_a_summary(clip, tmp_path):
    out, table, plot = tmp_path / "a.mp4", tmp_path / "t.csv", tmp_path / "t.png"
    result = run_cli(str(clip), "--out", str(out), "--csv", str(table), "--plot", str(plot), "--every", "2",
                     "--model", str(STUDENT))
    assert result.returncode == 0, result.stderr
    assert "20 frames (10 analysed), 2.0 s of video" in result.stdout and "1 person followed" in result.stdout
    assert read_video(out)[0] == 20 and len(read_csv(table)) >= 18 and plot.stat().st_size > 0


def test_the_command_gives_one_line_for_a_non_video(tmp_path):
    bad = _write(tmp_path / "notes.mp4", b"not a video\n" * 10)
    result = run_cli(str(bad), "--csv", str(tmp_path / "t.csv"), "--model", str(STUDENT))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"error: {bad}: not a readable video (OpenCV cannot open it: not a video, or truncated)"
    assert "Traceback" not in result.stderr and not (tmp_path / "t.csv").exists()


# ---- memory ------------------------------------------------------------------------------------

PEAK_RSS = """
import resource, sys
from fer_fastai.predict import load_predictor
from fer_fastai.video import annotate_video
annotate_video(sys.argv[1], load_predictor(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_length_of_the_video(tmp_path):
    """A 60 s clip peaks within 20 MB of a 10 s one (maxrss: the whole process, models and libraries included)."""
    peaks = []
    for seconds in (10, 60):
        n = int(seconds * 25)
        path = write_clip(tmp_path / f"{seconds}s.mp4", (frame_with_face(face_patch(), i % 90) for i in range(n)), fps=25)
        result = subprocess.run([sys.executable, "-c", PEAK_RSS, str(path), str(STUDENT), str(tmp_path / "a.mp4"),
                                 str(tmp_path / "t.csv"), str(tmp_path / "t.png")], capture_output=True, text=True,
                                timeout=900, cwd=ROOT)
        assert result.returncode == 0, result.stderr
        assert len(read_csv(tmp_path / "t.csv")) > n * 0.9
        peaks.append(int(result.stdout.split()[-1]) / 1024)
    assert peaks[1] - peaks[0] < 20, f"peak RSS {peaks[0]:.0f} MB for 10 s, {peaks[1]:.0f} MB for 60 s"


# ---- the demo's Video tab -----------------------------------------------------------------------

class OneModel:
    """What the tab needs of demo.app.Models: a predictor per backend."""

    def __init__(self, predictor):
        self.predictor = predictor

    def get(self, backend: str):
        return self.predictor


def test_the_video_tab_returns_the_annotated_clip_plot_csv_and_status(clip, student):
    from demo.uploads import OutputFiles
    from demo.video_tab import make_video_handler

    handler = make_video_handler(OneModel(student), OutputFiles())
    video, plot, table, status = handler({"path": str(clip), "orig_name": "interview.mp4"}, "onnx", 2)
    assert video.endswith(".webm") and read_video(Path(video)) == (20, SIZE)
    assert Path(plot).stat().st_size > 0 and len(read_csv(Path(table))) >= 18
    assert "**1 person** followed" in status and "20 frames (2.0 s), 10 of them analysed" in status


def test_the_video_tab_refuses_long_clips_and_non_videos_in_one_line(tmp_path, student, monkeypatch):
    from demo import video_tab
    from demo.uploads import OutputFiles

    handler = video_tab.make_video_handler(OneModel(student), OutputFiles())
    monkeypatch.setattr(video_tab, "MAX_VIDEO_SECONDS", 1)
    long_clip = write_clip(tmp_path / "long.mp4", moving_face(15))
    *outputs, status = handler({"path": str(long_clip), "orig_name": "lecture.mp4"}, "onnx")
    assert outputs == [None, None, None]
    assert status == ("**Could not use this video:** lecture.mp4 is 2 s long; this page takes clips up to 1 s: "
                      "cut it, or run python -m fer_fastai.video on it")
    notes = _write(tmp_path / "notes.mp4", b"not a video\n")
    *outputs, status = handler({"path": str(notes), "orig_name": "holiday.mp4"}, "onnx")
    assert outputs == [None, None, None] and status.startswith("**Could not use this video:** holiday.mp4: not a readable")


def test_the_video_tab_builds_inside_a_page_and_states_its_limits(student):
    import gradio as gr

    from demo.uploads import OutputFiles
    from demo.video_tab import MAX_VIDEO_MB, MAX_VIDEO_SECONDS, build_video_tab

    with gr.Blocks() as page:
        backend = gr.Radio(["onnx"], value="onnx")
        with gr.Tabs():
            build_video_tab(OneModel(student), backend, OutputFiles())
    config = str(page.get_config_file())
    assert f"Clips up to {MAX_VIDEO_SECONDS} s and {MAX_VIDEO_MB} MB" in config and "classify_video" in config
