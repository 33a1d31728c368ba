"""Check evaluation shards against a model before embedding anything.

The loader only decodes the members a model's processors ask for, so shards that carry a
modality the model has no plugin for would silently yield no result for it. Listing the tar
headers (no member is read) says which registered modalities the shards carry, so ``anchorbind
eval`` can refuse, or skip and record, what the model cannot embed.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Sequence
from pathlib import Path

from anchorbind.data.shardlist import expand_shards, is_url
from anchorbind.errors import AnchorBindError, InputError
from anchorbind.image_processor import IMAGE_SAMPLE_KEYS
from anchorbind.registry import ANCHOR_MODALITY, get_plugin_class, list_modalities

__all__ = ["check_shards", "member_readers", "shard_modalities"]

_BASE_PLUS_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
"""webdataset's rule: the key is the path up to the first dot of the file name, the rest the extension."""


def member_readers() -> dict[str, tuple[str, ...]]:
    """``{modality: member extensions it reads}`` for the anchor and every plugin that loads."""
    readers = {ANCHOR_MODALITY: tuple(IMAGE_SAMPLE_KEYS)}
    for name in list_modalities():
        try:
            readers[name] = tuple(get_plugin_class(name).sample_keys)
        except AnchorBindError:  # a broken third-party entry point: the registry reports it elsewhere
            continue
    return readers


def shard_modalities(shards: str | Sequence[str]) -> dict[str, int] | None:
    """How many samples carry each registered modality, from the tar headers of local shards.

    Returns:
        ``{modality: samples}``; None when a shard is not a local file (a ``pipe:`` or remote
        URL cannot be listed without streaming it).

    Raises:
        InputError: the spec names no shard, a local shard does not exist, or one cannot be opened
            as a tar.
    """
    try:
        urls = expand_shards(shards)
    except FileNotFoundError as err:
        raise InputError(str(shards), str(err)) from err
    missing = [url for url in urls if not is_url(url) and not Path(url).is_file()]
    if missing:
        count = "" if len(urls) == 1 else f" ({len(missing)} of {len(urls)} shards missing)"
        raise InputError(missing[0], f"no such shard file{count}")
    if not all(Path(url).is_file() for url in urls):
        return None
    readers = member_readers()
    counts = dict.fromkeys(readers, 0)
    for url in urls:
        exts_by_key: dict[str, set[str]] = {}
        try:
            with tarfile.open(url) as archive:
                for member in archive:
                    match = _BASE_PLUS_EXT.match(member.name) if member.isfile() else None
                    if match:
                        exts_by_key.setdefault(match.group(1), set()).add(match.group(2).lower())
        except (OSError, tarfile.TarError) as err:
            raise InputError(url, f"cannot list the shard as a tar archive ({err})") from err
        for exts in exts_by_key.values():
            for name, keys in readers.items():
                if exts & set(keys):
                    counts[name] += 1
    return {name: n for name, n in counts.items() if n}


def check_shards(shards: str | Sequence[str], model_modalities: Sequence[str], *, ignore: Sequence[str] = (),
                 source: str = "the model") -> dict[str, int]:
    """Modalities the shards carry that the model lacks; an error unless each is in ``ignore``.

    Args:
        shards: the evaluation shard spec.
        model_modalities: what the model embeds (``image`` and its plugins).
        ignore: modalities the caller accepts to leave out.
        source: names the model in the error message.

    Returns:
        ``{modality: samples}`` of the ignored modalities (empty when the shards cannot be listed).

    Raises:
        InputError: the shards carry a modality the model has no plugin for, not in ``ignore``, or
            none of the modalities of the model's plugins.
    """
    carried = shard_modalities(shards)
    if carried is None:
        return {}
    extra = {name: n for name, n in carried.items() if name not in model_modalities}
    refused = sorted(set(extra) - set(ignore))
    if refused:
        listed = ", ".join(f"{name} ({extra[name]} samples)" for name in refused)
        flags = " ".join(f"--ignore-modality {name}" for name in refused)
        raise InputError(str(shards), f"the shards carry {listed}, which {source} has no plugin for "
                                      f"(it has {sorted(model_modalities)}); pass {flags} to evaluate without it")
    plugins = sorted(set(model_modalities) - {ANCHOR_MODALITY})
    if plugins and not set(plugins) & set(carried):
        found = ", ".join(f"{name} ({n} samples)" for name, n in sorted(carried.items())) or "no registered modality"
        raise InputError(str(shards), f"the shards carry none of the modalities {source} was trained for "
                                      f"({', '.join(plugins)}); they carry {found}")
    return extra
