"""The ground truth a sample's JSON carries: attribute values, who can observe them, who carries them.

Analyses read attribute names and their observability from the data, never from a hard-coded
list, so a new world (or a real dataset whose JSON follows the same keys) works unchanged.
The keys read from each sample's ``json`` member:

* ``attributes``: ``{name: value}``, the scene's ground-truth values;
* ``observability``: ``{name: "visual" | "both" | <anything else>}`` — who can perceive it.
  ``visual`` = only the image shows it, ``both`` = seen and heard; any other value (the world
  uses ``audio``) = not visible;
* ``carried_by`` (optional): ``{name: [modality, ...]}`` — which of the sample's files carry it
  (finer than observability: a depth map shows shape but not colour);
* ``caption_states`` (optional): ``{name: bool}`` — whether *this* sample's caption states it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["CAPTION_MODALITY", "GROUP_ORDER", "attribute_groups", "attribute_labels", "carried_mask",
           "observability_group"]

CAPTION_MODALITY = "text"
"""The modality whose input is the caption: what it carries is ``caption_states``, per sample."""

GROUP_ORDER = ("shared", "visual-only", "non-visual")


def observability_group(observability: str) -> str:
    """``shared`` (seen and heard), ``visual-only`` or ``non-visual`` (not visible at all)."""
    if observability == "both":
        return "shared"
    if observability == "visual":
        return "visual-only"
    return "non-visual"


def attribute_groups(meta: Sequence[Mapping[str, Any] | None]) -> dict[str, str] | None:
    """``{attribute: group}`` from the first record that declares ``observability`` (None if none does)."""
    for record in meta:
        if record and isinstance(record.get("observability"), Mapping):
            return {name: observability_group(str(seen_by)) for name, seen_by in record["observability"].items()}
    return None


def attribute_labels(meta: Sequence[Mapping[str, Any] | None], rows: Sequence[int] | np.ndarray,
                     attribute: str) -> np.ndarray | None:
    """The value of ``attribute`` for each row, as strings; None when any row lacks it."""
    values = []
    for i in np.asarray(rows, dtype=int).tolist():
        record = meta[i]
        attributes = record.get("attributes") if record else None
        if not isinstance(attributes, Mapping) or attribute not in attributes:
            return None
        values.append(str(attributes[attribute]))
    return np.array(values, dtype=str)


def carried_mask(meta: Sequence[Mapping[str, Any] | None], rows: Sequence[int] | np.ndarray, modality: str,
                 attribute: str) -> np.ndarray:
    """Whether ``modality``'s input of each row carries ``attribute``.

    The caption carries what it states (``caption_states``); other modalities carry what
    ``carried_by`` lists for them. A record without that information counts as carrying it
    (nothing known to the contrary), so data without the keys is probed on every attribute.
    """
    out = []
    for i in np.asarray(rows, dtype=int).tolist():
        record = meta[i] or {}
        if modality == CAPTION_MODALITY and isinstance(record.get("caption_states"), Mapping):
            out.append(bool(record["caption_states"].get(attribute, False)))
        elif isinstance(record.get("carried_by"), Mapping) and attribute in record["carried_by"]:
            out.append(modality in record["carried_by"][attribute])
        else:
            out.append(True)
    return np.array(out, dtype=bool)
