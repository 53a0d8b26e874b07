"""The seven FER2013 classes: ids fixed by the original fer2013.csv, plus folder-name aliases."""

from __future__ import annotations

from .errors import FerError

LABELS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
NUM_CLASSES = len(LABELS)

# Spellings of the class names seen in public copies of FER2013 and similar data sets
# (CK+, JAFFE, AffectNet folders). Matching is case-insensitive.
ALIASES: dict[str, str] = {
    "anger": "angry",
    "mad": "angry",
    "disgusted": "disgust",
    "disgusting": "disgust",
    "contempt": "disgust",
    "fearful": "fear",
    "afraid": "fear",
    "scared": "fear",
    "happiness": "happy",
    "joy": "happy",
    "sadness": "sad",
    "surprised": "surprise",
    "suprise": "surprise",
    "neutrality": "neutral",
    "calm": "neutral",
}


def canonical_label(name: str) -> str | None:
    """The FER2013 label for a folder or class name, or None if it is not one we know."""
    key = name.strip().lower()
    if key in LABELS:
        return key
    return ALIASES.get(key)


def label_id(name: str) -> int:
    """The fixed FER2013 id of a class name or alias; a clear error for anything else."""
    label = canonical_label(name)
    if label is None:
        raise FerError(f"unknown class {name!r}; accepted names: {accepted_names()}")
    return LABELS.index(label)


def accepted_names() -> str:
    """Every accepted class name and alias, for error messages."""
    return ", ".join(sorted(set(LABELS) | set(ALIASES)))
