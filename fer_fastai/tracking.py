"""Follow faces across video frames and smooth each one's answers over time (numpy only).

The tracker is deliberately simple, so that its mistakes are predictable:

- **Matching by overlap.** Each new face box is matched to the live track whose last box overlaps it most
  (intersection over union, IoU), greedily from the best-overlapping pair down; a pair below `min_iou`
  never matches. A face that matches no track starts a new one, numbered 1, 2, 3, … in order of appearance.
- **Gap allowance.** A track that finds no face keeps its last box for `max_gap_s` seconds: a face lost for
  a few frames (a turned head, a hand in front, a missed detection) keeps its number if it comes back
  near where it was. After that the track ends, and a face found later gets a new number.
- **Smoothing.** Each track keeps an exponential moving average of its class probabilities whose time
  constant is in seconds, not frames: a new answer `dt` seconds after the last one gets the weight
  `1 - exp(-dt / time_constant)`. So the same setting smooths a 15 and a 60 frames/s video alike, and a
  track seen again after a gap leans on its new answer more. `time_constant=0` turns smoothing off.

It does not re-identify people: two people who swap places while both are lost swap numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

Box = tuple[int, int, int, int]  # x, y, width, height (as fer_fastai.faces)

MIN_IOU = 0.3         # less overlap than this between frames is a different face
MAX_GAP_S = 1.0       # how long a lost face keeps its track number
TIME_CONSTANT_S = 0.5  # the smoothing's memory: an answer's weight falls to 1/e after this many seconds


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two (x, y, w, h) boxes: 1 for the same box, 0 for boxes that do not touch."""
    left, top = max(a[0], b[0]), max(a[1], b[1])
    right, bottom = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    inter = max(0, right - left) * max(0, bottom - top)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def match_boxes(old: list[Box], new: list[Box], min_iou: float = MIN_IOU) -> dict[int, int]:
    """{index in `new`: index in `old`} for the pairs that overlap at least `min_iou`, best overlap first;
    each box is used at most once."""
    pairs = sorted(((iou(a, b), i, j) for i, a in enumerate(old) for j, b in enumerate(new)), reverse=True)
    matched: dict[int, int] = {}
    used_old: set[int] = set()
    for overlap, i, j in pairs:
        if overlap < min_iou:
            break
        if i not in used_old and j not in matched:
            matched[j] = i
            used_old.add(i)
    return matched


def smoothing_weight(dt: float, time_constant: float) -> float:
    """The weight of a new answer that arrives `dt` seconds after the previous one (1: no memory)."""
    if time_constant <= 0:
        return 1.0
    return 1.0 - math.exp(-max(dt, 0.0) / time_constant)


@dataclass
class Track:
    """One face followed across frames: its number, where it was last seen, and its smoothed answer."""

    id: int
    box: Box
    last_time: float                       # seconds into the video of its latest answer
    probs: np.ndarray                      # the latest raw answer
    smoothed: np.ndarray = field(repr=False)

    def update(self, box: Box, probs: np.ndarray, time: float, time_constant: float) -> None:
        weight = smoothing_weight(time - self.last_time, time_constant)
        self.smoothed = self.smoothed + weight * (probs - self.smoothed)
        self.box, self.probs, self.last_time = box, probs, time


class Tracker:
    """Numbers the faces of successive frames (see the module docstring for the rules)."""

    def __init__(self, max_gap_s: float = MAX_GAP_S, min_iou: float = MIN_IOU, time_constant: float = TIME_CONSTANT_S):
        self.max_gap_s, self.min_iou, self.time_constant = max_gap_s, min_iou, time_constant
        self.live: list[Track] = []
        self.next_id = 1

    def expire(self, time: float) -> None:
        """End the tracks that have found no face for longer than the gap allowance."""
        self.live = [track for track in self.live if time - track.last_time <= self.max_gap_s]

    def followed(self, time: float) -> list[Box]:
        """The last boxes of the faces still followed at `time` (seen within the gap allowance)."""
        self.expire(time)
        return [track.box for track in self.live]

    def update(self, boxes: list[Box], probs: np.ndarray, time: float) -> list[Track]:
        """The tracks of this frame's faces, in the order of `boxes` (`probs[i]` is box i's answer)."""
        self.expire(time)
        matched = match_boxes([track.box for track in self.live], list(boxes), self.min_iou)
        tracks = []
        for j, (box, answer) in enumerate(zip(boxes, np.asarray(probs, dtype=np.float64))):
            if j in matched:
                track = self.live[matched[j]]
                track.update(box, answer, time, self.time_constant)
            else:
                track = Track(self.next_id, box, time, answer, answer.copy())
                self.next_id += 1
                self.live.append(track)
            tracks.append(track)
        return tracks
