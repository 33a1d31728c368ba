"""Dataclass configs built from YAML / dicts, with unknown keys refused.

YAML is parsed by PyYAML and dicts are turned into dataclasses by dacite in
strict mode, so a typo such as ``lerning_rate`` fails loudly with the key's
dotted path instead of being ignored.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import dacite
import yaml

from anchorbind.errors import ConfigError

__all__ = ["apply_overrides", "config_to_dict", "from_dict", "load_yaml", "packaged_config_names", "resolve_config"]

T = TypeVar("T")


def from_dict(cls: type[T], data: Mapping[str, Any] | None, *, where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``, refusing unknown keys and wrong types.

    Args:
        cls: the dataclass type to build.
        data: a mapping (e.g. parsed YAML); ``None`` means all defaults.
        where: a name for the config in error messages (a file path or a section).

    Raises:
        ConfigError: naming the unknown key(s) or the field with the wrong type.
    """
    if data is None:
        data = {}
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping for {cls.__name__}, got {type(data).__name__}")
    try:
        return dacite.from_dict(
            cls, dict(data), config=dacite.Config(strict=True, cast=[tuple], type_hooks={float: _as_float})
        )
    except dacite.UnexpectedDataError as err:
        known = sorted(f.name for f in dataclasses.fields(cls))
        raise ConfigError(
            f"{where}: unknown config key(s) {sorted(err.keys)} for {cls.__name__}; known keys: {known}"
        ) from None
    except dacite.WrongTypeError as err:
        raise ConfigError(
            f"{where}: key '{err.field_path}' expects {err.field_type}, got {err.value!r}"
        ) from None
    except dacite.MissingValueError as err:
        raise ConfigError(f"{where}: required key '{err.field_path}' is missing") from None
    except dacite.DaciteError as err:
        raise ConfigError(f"{where}: {err}") from None


def _as_float(value: Any) -> Any:
    """YAML reads ``1`` as int and ``1e-3`` as a string (YAML 1.1); both are valid floats here."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, str)):
        try:
            return float(value)
        except ValueError:
            return value  # left for the type check to report
    return value


def config_to_dict(config: Any) -> dict[str, Any]:
    """A plain, YAML/JSON-serialisable dict of a dataclass config (tuples become lists)."""

    def plain(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return plain(dataclasses.asdict(config))


PACKAGED_CONFIGS = "anchorbind.configs"
"""The package whose YAML files ``--config NAME`` resolves to (``configs/`` in the checkout)."""


def packaged_config_names() -> list[str]:
    """Names of the training configs shipped in the package (``demo``, ``base``, …)."""
    from importlib.resources import files

    return sorted(p.name[:-5] for p in files(PACKAGED_CONFIGS).iterdir() if p.name.endswith(".yaml"))


def resolve_config(name_or_path: str | Path) -> Path:
    """A config file from a path, or from the name of a packaged config.

    An existing file wins, so a local ``demo.yaml`` is never shadowed; a bare name such as
    ``demo`` (or ``demo.yaml``, or ``accelerate/multi_gpu``) that is not a file resolves to the
    YAML shipped in :mod:`anchorbind.configs`, so the same command works from a checkout, an
    installed wheel and any working directory.

    Raises:
        ConfigError: neither a file nor a packaged config; the message lists the packaged names.
    """
    from importlib.resources import as_file, files

    path = Path(name_or_path)
    if path.is_file():
        return path
    name = str(name_or_path)
    if not name.endswith((".yaml", ".yml")):
        name += ".yaml"
    candidate = files(PACKAGED_CONFIGS).joinpath(*Path(name).parts)
    if not path.is_absolute() and candidate.is_file():
        with as_file(candidate) as real:  # a real file for installed packages; zip imports excepted
            return Path(real)
    raise ConfigError(
        f"config {str(name_or_path)!r}: no such file, and not a packaged config "
        f"(packaged: {', '.join(packaged_config_names())})"
    )


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; an unreadable or non-mapping file is a :class:`ConfigError`.

    ``path`` may name a packaged config (see :func:`resolve_config`).
    """
    path = resolve_config(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config ({err.strerror or err})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML ({err})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def apply_overrides(data: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to a copy of ``data``.

    Unknown keys are not checked here: the dataclass build that follows refuses them,
    so an override can add an optional section but never a misspelt key.
    """
    result = copy.deepcopy(dict(data))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"override {item!r}: empty key")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({err})") from None
        node: dict[str, Any] = result
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: '{part}' is not a section")
            node = child
        node[parts[-1]] = value
    return result
