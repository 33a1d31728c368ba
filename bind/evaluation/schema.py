"""The ground truth a sample's JSON carries: attribute values, who can observe them, who carries them.

Analyses read attribute names and their observability from the data, never from a hard-coded
list, so a new world (or a real dataset whose JSON follows the same keys) works unchanged.
The keys read from each sample's ``json`` member:

* ``attributes``: ``{name: value}``, the scene's ground-truth values;
* ``label_attribute`` (optional): the name of the attribute that is the category, evaluation's
  default label (:func:`declared_label`);
* ``observability`` (optional): ``{name: "visual" | "both" | <anything else>}`` — who can perceive
  it. ``visual`` = only the image shows it, ``both`` = seen and heard; any other value (the world
  uses ``audio``) = not visible. An attribute that no record gives an observability (a user's
  labels) is in the ``shared`` group and carried by every modality
  (:func:`unobserved_attributes`: the evaluation says it assumed so);
* ``carried_by`` (optional): ``{name: [modality, ...]}`` — which of the sample's files carry it
  (finer than observability: a depth map shows shape but not colour);
* ``caption_states`` (optional): ``{name: bool}`` — whether *this* sample's caption states it.

Which modality carries which attribute (:func:`carried_mask`) is decided from the data first and
from what the plugins declare second, never from a modality's name: ``caption_states`` holds
for every plugin that ``encodes_text``; ``carried_by`` for every modality it names; otherwise
the attribute's ``observability`` against the plugin's ``perceives`` (see :func:`perceived_groups`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from anchorbind.registry import ANCHOR_MODALITY, plugin_class_or_none

__all__ = ["ANCHOR_PERCEIVES", "DEFAULT_LABEL", "GROUP_ORDER", "SHARED_OBSERVABILITY", "attribute_groups",
           "attribute_labels", "carried_by_omits", "carried_mask", "declared_label", "observability_group",
           "perceived_groups", "unobserved_attributes"]

GROUP_ORDER = ("shared", "visual-only", "non-visual")

VISUAL_OBSERVABILITY = "visual"
SHARED_OBSERVABILITY = "both"
"""The observability value of an attribute every modality perceives (seen and heard)."""
ANCHOR_PERCEIVES: tuple[str, ...] = (VISUAL_OBSERVABILITY,)
"""What the anchor (image) perceives: what is visible."""
DEFAULT_LABEL = "category"
"""The label attribute when neither the user nor the data names one."""
LABEL_KEY = "label_attribute"


def observability_group(observability: str) -> str:
    """``shared`` (seen and heard), ``visual-only`` or ``non-visual`` (not visible at all)."""
    if observability == SHARED_OBSERVABILITY:
        return "shared"
    if observability == VISUAL_OBSERVABILITY:
        return "visual-only"
    return "non-visual"


def attribute_groups(meta: Sequence[Mapping[str, Any] | None]) -> dict[str, str] | None:
    """``{attribute: group}``; None when the records declare neither ``observability`` nor ``attributes``.

    The groups of the first record that declares ``observability``; then every attribute of the
    records' ``attributes`` that no record gives an observability, as ``shared``: with nothing
    known, every modality carries it (:func:`carried_mask`), as for an attribute seen and heard.
    """
    groups: dict[str, str] = {}
    for record in meta:
        if record and isinstance(record.get("observability"), Mapping):
            groups = {name: observability_group(str(seen_by)) for name, seen_by in record["observability"].items()}
            break
    for name in unobserved_attributes(meta):
        groups[name] = observability_group(SHARED_OBSERVABILITY)
    return groups or None


def unobserved_attributes(meta: Sequence[Mapping[str, Any] | None]) -> list[str]:
    """The attributes (in order of appearance) that some record has and no record's ``observability`` names."""
    seen: dict[str, None] = {}
    observed: set[str] = set()
    for record in meta:
        if not record:
            continue
        if isinstance(record.get("attributes"), Mapping):
            seen.update(dict.fromkeys(str(name) for name in record["attributes"]))
        if isinstance(record.get("observability"), Mapping):
            observed.update(str(name) for name in record["observability"])
    return [name for name in seen if name not in observed]


def declared_label(meta: Sequence[Mapping[str, Any] | None]) -> str | None:
    """The attribute the records name as their category (``label_attribute``), when they all agree; else None."""
    names = {record[LABEL_KEY] for record in meta if record and isinstance(record.get(LABEL_KEY), str)}
    return names.pop() if len(names) == 1 else None


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
    states (``caption_states``); a modality that ``carried_by`` names (for any attribute) carries
    what it lists for it; otherwise (no ``carried_by``, or one written before the modality
    existed), a modality carries the attributes whose ``observability`` it perceives (``both``,
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
        carried_by = record.get("carried_by")
        if reads_captions and isinstance(record.get("caption_states"), Mapping):
            out.append(bool(record["caption_states"].get(attribute, False)))
        elif (isinstance(carried_by, Mapping) and attribute in carried_by
              and _names(carried_by, modality)):
            out.append(modality in carried_by[attribute])
        elif perceived is not None and isinstance(observability, Mapping) and attribute in observability:
            seen_by = str(observability[attribute])
            out.append(seen_by == SHARED_OBSERVABILITY or seen_by in perceived)
        else:
            out.append(True)
    return np.array(out, dtype=bool)


def _names(carried_by: Mapping[str, Any], modality: str) -> bool:
    """Whether a record's ``carried_by`` lists ``modality`` for any attribute."""
    return any(isinstance(listed, (list, tuple)) and modality in listed for listed in carried_by.values())


def carried_by_omits(meta: Sequence[Mapping[str, Any] | None], modality: str) -> bool:
    """Whether the records' ``carried_by`` would decide for ``modality`` but never names it.

    Such a modality (a plugin added after the data was written) is not taken as carrying
    nothing: :func:`carried_mask` falls back on ``observability`` and what it perceives. Records
    whose caption decides for a plugin that ``encodes_text`` (``caption_states``) do not count.
    """
    cls = plugin_class_or_none(modality)
    reads_captions = cls is not None and cls.encodes_text
    decides = False
    for record in meta:
        if not record or not isinstance(record.get("carried_by"), Mapping):
            continue
        if reads_captions and isinstance(record.get("caption_states"), Mapping):
            continue
        if _names(record["carried_by"], modality):
            return False
        decides = True
    return decides
