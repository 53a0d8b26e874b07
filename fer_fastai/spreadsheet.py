"""Text cells that are safe to open in a spreadsheet.

Prediction CSVs carry file names chosen by whoever supplied the images (the demo's uploads, a
folder given to `evaluate`). A name such as `=HYPERLINK(...).png` would run as a formula in Excel
or LibreOffice, so such cells get a leading apostrophe, the spreadsheet convention for "text".
"""

from __future__ import annotations

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(text: str) -> str:
    """`text` unchanged, or prefixed with ' if a spreadsheet would read it as a formula."""
    return "'" + text if text.startswith(FORMULA_STARTS) else text
