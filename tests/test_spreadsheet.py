import pytest

from fer_fastai.spreadsheet import spreadsheet_safe


@pytest.mark.parametrize("text", ["=HYPERLINK(\"http://x\")", "+1", "-2+3", "@SUM(A1)", "\tx"])
def test_formula_like_cells_become_text(text):
    assert spreadsheet_safe(text) == "'" + text


@pytest.mark.parametrize("text", ["photo.png", "/data/photos/=x.png", "", "a=b"])
def test_other_cells_are_unchanged(text):
    assert spreadsheet_safe(text) == text
