"""What an ensemble's model card says about its test-time views, readable without torch.

`models` builds the views into the network; the demo names them on its page, and its ONNX backend
must not import torch (see the package docstring). Both read the card through these functions,
so a card means the same thing to the model and to the page that describes it.
"""

from __future__ import annotations

from typing import Any

ENSEMBLE = "ensemble"  # a model card's `arch` for an ensemble: assembled from trained networks, never trained itself


def view_count(shifts: int, mirrors: bool = False) -> int:
    """How many views of each face an ensemble averages: every offset up to `shifts`, each also mirrored with `mirrors`."""
    return (2 * shifts + 1) ** 2 * (2 if mirrors else 1)


def member_mirrors(members: list[dict[str, Any]], ensemble_wide: bool = False) -> list[bool]:
    """Which members also see mirrored views: each member's own `mirrors` entry, or every member when
    `ensemble_wide` (cards written before 2026-11-29 set `mirrors` once for the whole ensemble)."""
    return [bool(ensemble_wide) or bool(member.get("mirrors", False)) for member in members]


def rows_per_face(arch: str, arch_kwargs: dict[str, Any]) -> int:
    """How many rows of a network's batch one face becomes: an ensemble runs every view of a face
    (and their mirror images, if any member mirrors) as rows of one batch; a single network, one."""
    if arch != ENSEMBLE:
        return 1
    mirrored = any(member_mirrors(arch_kwargs.get("members") or [], ensemble_wide=arch_kwargs.get("mirrors", False)))
    return view_count(int(arch_kwargs.get("shifts", 0)), mirrored)
