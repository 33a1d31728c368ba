"""Before the first step: what the training data can train, said plainly.

Two checks, run once by the main process (the other processes get its answer):

- :func:`resolve_anchor_source`: ``data.anchor`` against the anchor cache the shards carry. A
  cache built for another anchor is never used silently: with ``auto`` one line says
  ``cache built for X, model anchor is Y: running the anchor live``; with ``cache`` it is a
  :class:`~anchorbind.errors.ConfigError` naming both identities.
- :func:`untrained_plugins`: which plugins' modalities no training sample carries
  (:func:`anchorbind.data.inventory.data_modalities`: the shards' ``manifest.json``, else a
  bounded look-ahead). Such a plugin would get a loss of 0 at every step and never move, so by
  default (``data.missing_modalities: error``) training stops with one line naming the plugins
  and the two ways on; ``ignore`` (or a list of the plugins that may be missing) trains the
  others and leaves those plugins exactly as built, without a loss term or a log column.

A modality that the data has but a batch happens to lack (sparse data) is normal: it is masked
in that step, as always; only absence from the whole data counts here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from anchorbind.data.cache import anchor_cache_status
from anchorbind.data.inventory import LOOKAHEAD_STREAM, DataInventory, data_modalities
from anchorbind.data.streaming import StreamOptions
from anchorbind.errors import ConfigError
from anchorbind.model import BindModel
from anchorbind.registry import ANCHOR_MODALITY
from anchorbind.train.config import TrainConfig

__all__ = ["DataPlan", "plan_data", "resolve_anchor_source", "untrained_plugins"]


@dataclass
class DataPlan:
    """The main process's decision, sent to every process.

    Attributes:
        use_cache: read cached anchor embeddings instead of running the anchor.
        untrained: plugins left out of training (no sample carries their modality).
        notes: lines the main process logs as warnings (each said once).
        sidecars: per training shard, the anchor-cache sidecar the loader reads beside it (None:
            the shard carries its cache); empty without a cache.
    """

    use_cache: bool
    untrained: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    sidecars: list[str | None] = field(default_factory=list)


def resolve_anchor_source(cfg: TrainConfig, model: BindModel) -> tuple[bool, str | None, list[str | None]]:
    """``(use the cache, a line to log or None, the sidecars)`` for ``data.anchor`` and the shards' cache.

    The cache is looked for as sidecars under ``data.anchor_cache`` (default: ``anchor-cache``
    beside the shards, local or served) and in the shards themselves
    (:func:`anchorbind.data.cache.anchor_cache_status`); ``sidecars`` is what the loader reads
    (empty when the cache is not used).

    Raises:
        ConfigError: ``data.anchor: cache`` and the shards' cache was built for another anchor.
        FileNotFoundError: ``data.anchor: cache`` and a shard has no cache.
    """
    if cfg.data.anchor == "live":
        return False, None, []
    identity = model.anchor.identity
    wait = cfg.data.read_timeout_s or cfg.data.batch_timeout_s or LOOKAHEAD_STREAM.read_timeout_s
    status = anchor_cache_status(cfg.data.train_shards, identity, cfg.data.anchor_cache,
                                 StreamOptions(read_timeout_s=wait, retries=0))
    if status.complete:
        return True, None, status.sidecars
    where = f"{status.first_without}" + (f" and the {status.shards - status.matching - 1} shard(s) after it"
                                         if status.shards - status.matching > 1 else "")
    if cfg.data.anchor == "cache":
        if status.found is not None:
            raise ConfigError(
                f"data.anchor=cache: cache built for {status.found}, model anchor is {identity} (shard "
                f"{status.first_without}); rerun `anchorbind cache` with the model's anchor (--anchor-config "
                "your training config), or set data.anchor=live"
            )
        raise FileNotFoundError(
            f"data.anchor=cache but {status.first_without} (in {cfg.data.train_shards}) has no anchor cache "
            f"for {identity} ({_where_looked(cfg)}); run `anchorbind cache` first or set data.anchor=live"
        )
    if status.found is not None:
        return False, (f"cache built for {status.found}, model anchor is {identity}: running the anchor live "
                       f"(shard {status.first_without}; rerun `anchorbind cache` with the model's anchor to use "
                       "a cache)"), []
    if status.matching:
        return False, (f"the anchor cache for {identity} covers the first {status.matching} shard(s) but not "
                       f"{where}: running the anchor live (run `anchorbind cache` on them to use it)"), []
    return False, None, []


def _where_looked(cfg: TrainConfig) -> str:
    if cfg.data.anchor_cache:
        return f"looked under data.anchor_cache {cfg.data.anchor_cache} and in the shards"
    return "looked in anchor-cache/ beside the shards and in the shards; set data.anchor_cache if it is elsewhere"


def _allowed_missing(cfg: TrainConfig, plugins: Sequence[str]) -> set[str]:
    """The plugins ``data.missing_modalities`` lets be missing."""
    setting = cfg.data.missing_modalities
    if isinstance(setting, str):
        return set(plugins) if setting == "ignore" else set()
    unknown = [name for name in setting if name not in plugins]
    if unknown:
        raise ConfigError(f"data.missing_modalities names {', '.join(unknown)}, which the model has no plugin for "
                          f"(its plugins: {', '.join(plugins)})")
    return set(setting)


def _found(inventory: DataInventory) -> str:
    present = [f"{name} ({count})" for name, count in inventory.counts.items() if count]
    return ", ".join(present) if present else "none of the model's modalities"


def untrained_plugins(cfg: TrainConfig, model: BindModel, *, use_cache: bool) -> tuple[list[str], str | None]:
    """``(plugins to leave out, a line to log or None)`` from the modalities the training data holds.

    Raises:
        ConfigError: a plugin has no sample and ``data.missing_modalities`` does not allow it;
            no plugin has a sample; the data has no anchor sample to bind to (live anchor);
            ``loss.direct_pairs`` names a plugin left out.
    """
    plugins = list(model.plugins)
    allowed = _allowed_missing(cfg, plugins)
    readers = {name: tuple(model.processor(name).sample_keys) for name in plugins}
    anchor_keys = () if use_cache else tuple(model.processor(ANCHOR_MODALITY).sample_keys)
    if anchor_keys:
        readers = {ANCHOR_MODALITY: anchor_keys, **readers}
    # URLs are read once, waiting at most data.read_timeout_s (else batch_timeout_s) for a byte
    wait = cfg.data.read_timeout_s or cfg.data.batch_timeout_s or LOOKAHEAD_STREAM.read_timeout_s
    inventory = data_modalities(cfg.data.train_shards, readers, lookahead=cfg.data.modality_lookahead,
                                stream=StreamOptions(read_timeout_s=wait, retries=0))
    if inventory.samples == 0:
        # nothing could be read (every shard unreadable or unreachable): the loader reports why
        return [], (f"could not read a sample of data.train_shards to find which modalities it holds "
                    f"({len(inventory.unreadable)} shard(s) unreadable); training without that check")
    spec = cfg.data.train_shards
    hint = "" if inventory.complete else "; raise data.modality_lookahead to read further"
    if anchor_keys and not inventory.counts[ANCHOR_MODALITY]:
        raise ConfigError(
            f"data.train_shards {spec!r} has no {ANCHOR_MODALITY} sample (members {', '.join(anchor_keys)}) for "
            f"the plugins to bind to, in {inventory.where()}{hint}; it holds {_found(inventory)}"
        )
    missing = [name for name in plugins if not inventory.counts[name]]
    if not missing:
        return [], None
    refused = [name for name in missing if name not in allowed]
    if refused:
        raise ConfigError(
            f"no training sample carries {', '.join(refused)}: data.train_shards {spec!r} holds {_found(inventory)} "
            f"in {inventory.where()}{hint}; remove {', '.join(refused)} from model.modalities (with "
            "model.init_from: set each to null), or set data.missing_modalities: ignore to train the other "
            "plugins and leave those without data as built"
        )
    if len(missing) == len(plugins):
        raise ConfigError(f"no training sample carries any plugin's modality ({', '.join(plugins)}): "
                          f"data.train_shards {spec!r} holds {_found(inventory)} in {inventory.where()}{hint}; "
                          "nothing to train")
    for pair in cfg.loss.direct_pairs:
        if set(pair) & set(missing):
            raise ConfigError(f"loss.direct_pairs entry {list(pair)} names {', '.join(set(pair) & set(missing))}, "
                              "which no training sample carries; remove the pair")
    them = "it" if len(missing) == 1 else "them"
    return missing, (f"not training {', '.join(missing)}: no training sample carries {them}, in "
                     f"{inventory.where()}{hint} (data.missing_modalities: {_setting(cfg)}); left as built, "
                     "with no loss term")


def _setting(cfg: TrainConfig) -> str:
    setting = cfg.data.missing_modalities
    return setting if isinstance(setting, str) else "[" + ", ".join(setting) + "]"


def plan_data(cfg: TrainConfig, model: BindModel) -> DataPlan:
    """Both checks, in order (the anchor source decides whether the anchor's members must exist)."""
    use_cache, note, sidecars = resolve_anchor_source(cfg, model)
    untrained, untrained_note = untrained_plugins(cfg, model, use_cache=use_cache)
    return DataPlan(use_cache, untrained, [n for n in (note, untrained_note) if n], sidecars)
