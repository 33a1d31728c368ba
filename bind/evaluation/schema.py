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

Which modality carries which attribute (:func:`carried_mask`) is decided from the data first and
from what the plugins declare second, never from a modality's name: ``caption_states`` holds
for every plugin that ``encodes_text``; ``carried_by`` for every modality; without them, the
attribute's ``observability`` against the plugin's ``perceives`` (see :func:`perceived_groups`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from anchorbind.registry import ANCHOR_MODALITY, plugin_class_or_none

__all__ = ["ANCHOR_PERCEIVES", "GROUP_ORDER", "SHARED_OBSERVABILITY", "attribute_groups", "attribute_labels",
           "carried_mask", "observability_group", "perceived_groups"]

GROUP_ORDER = ("shared", "visual-only", "non-visual")

VISUAL_OBSERVABILITY = "visual"
SHARED_OBSERVABILITY = "both"
"""The observability value of an attribute every modality perceives (seen and heard)."""
ANCHOR_PERCEIVES: tuple[str, ...] = (VISUAL_OBSERVABILITY,)
"""What the anchor (image) perceives: what is visible."""


def observability_group(observability: str) -> str:
    """``shared`` (seen and heard), ``visual-only`` or ``non-visual`` (not visible at all)."""
    if observability == SHARED_OBSERVABILITY:
        return "shared"
    if observability == VISUAL_OBSERVABILITY:
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


def perceived_groups(modality: str) -> tuple[str, ...] | None:
    """The observability values ``modality``'s inputs carry, or None when it declares none.

    The anchor perceives what is visible (``visual``); a plugin, its ``perceives`` class
    attribute (e.g. ``("audio",)``, or ``("visual",)`` for another view of the scene). An attribute
    observable by ``both`` is shared: every modality that declares anything carries it. None
    (a plugin that declares nothing, or one not installed) means nothing is known: such a
    modality counts as carrying every attribute.
    """
    if modality == ANCHOR_MODALITY:
        return ANCHOR_PERCEIVES
    cls = plugin_class_or_none(modality)
    perceives = tuple(cls.perceives) if cls is not None else ()
    return perceives or None


def carried_mask(meta: Sequence[Mapping[str, Any] | None], rows: Sequence[int] | np.ndarray, modality: str,
                 attribute: str) -> np.ndarray:
    """Whether ``modality``'s input of each row carries ``attribute``.

    In order, per record: a plugin that ``encodes_text`` reads the caption, which carries what it
    states (``caption_states``); any modality carries what ``carried_by`` lists for it; without
    those keys, a modality carries the attributes whose ``observability`` it perceives (``both``,
    or a value in :func:`perceived_groups`). A record without any of that information, or a
    modality that declares nothing, counts as carrying it (nothing known to the contrary), so
    data without the keys is probed on every attribute.
    """
    cls = plugin_class_or_none(modality)
    reads_captions = cls is not None and cls.encodes_text
    perceived = perceived_groups(modality)
    out = []
    for i in np.asarray(rows, dtype=int).tolist():
        record = meta[i] or {}
        observability = record.get("observability")
        if reads_captions and isinstance(record.get("caption_states"), Mapping):
            out.append(bool(record["caption_states"].get(attribute, False)))
        elif isinstance(record.get("carried_by"), Mapping) and attribute in record["carried_by"]:
            out.append(modality in record["carried_by"][attribute])
        elif perceived is not None and isinstance(observability, Mapping) and attribute in observability:
            seen_by = str(observability[attribute])
            out.append(seen_by == SHARED_OBSERVABILITY or seen_by in perceived)
        else:
            out.append(True)
    return np.array(out, dtype=bool)
