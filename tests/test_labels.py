import pytest

from fer_fastai.errors import FerError
from fer_fastai.labels import LABELS, canonical_label, label_id


def test_label_ids_follow_the_original_fer2013_csv():
    assert LABELS == ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


@pytest.mark.parametrize("name, expected", [
    ("Angry", 0), ("anger", 0), ("DISGUSTED", 1), ("fearful", 2), ("happiness", 3),
    ("sadness", 4), ("surprised", 5), ("Neutral", 6), (" happy ", 3),
])
def test_aliases_map_case_insensitively_to_fixed_ids(name, expected):
    assert label_id(name) == expected


def test_unknown_name_lists_accepted_names():
    assert canonical_label("confused") is None
    with pytest.raises(FerError, match="unknown class 'confused'.*accepted names: .*happiness"):
        label_id("confused")
