"""Dataclass configs built from YAML / dicts, with unknown keys refused.

YAML is parsed by PyYAML and dicts are turned into dataclasses by dacite in
strict mode, so a typo such as ``lerning_rate`` fails loudly with the key's
dotted path instead of being ignored.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import dacite
import yaml

from anchorbind.errors import ConfigError

__all__ = [
    "apply_overrides", "config_to_dict", "describe_type", "from_dict", "load_yaml", "packaged_config",
    "packaged_config_names", "resolve_config",
]

T = TypeVar("T")


def from_dict(cls: type[T], data: Mapping[str, Any] | None, *, where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``, refusing unknown keys and wrong types.

    Args:
        cls: the dataclass type to build.
        data: a mapping (e.g. parsed YAML); ``None`` means all defaults.
        where: a name for the config in error messages (a file path or a section).

    Raises:
        ConfigError: one line naming the dotted key: an unknown key (with the keys its section
            accepts), a value of the wrong type (with the type expected, in words), or a missing
            required key.
    """
    if data is None:
        data = {}
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping for {cls.__name__}, got {type(data).__name__}")
    _check_keys(cls, data, (), where)
    try:
        return dacite.from_dict(
            cls, dict(data), config=dacite.Config(strict=True, cast=[tuple], type_hooks={float: _as_float})
        )
    except dacite.UnexpectedDataError as err:  # in a structure _check_keys does not walk
        known = sorted(f.name for f in dataclasses.fields(cls))
        raise ConfigError(
            f"{where}: unknown config key(s) {sorted(err.keys)} for {cls.__name__}; known keys: {known}"
        ) from None
    except dacite.WrongTypeError as err:
        raise ConfigError(_wrong_type(where, err.field_path, err.field_type, err.value)) from None
    except dacite.MissingValueError as err:
        raise ConfigError(f"{where}: required key '{err.field_path}' is missing") from None
    except dacite.DaciteError as err:
        raise ConfigError(f"{where}: {err}") from None


def _field_types(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # an unresolvable annotation: dacite reports it
        return {f.name: f.type for f in dataclasses.fields(cls)}


def _options(tp: Any) -> tuple[Any, ...]:
    """The members of a union (``X | None``, ``Optional[X]``), else ``(tp,)``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return typing.get_args(tp)
    return (tp,)


def _check_keys(cls: type, data: Mapping[str, Any], path: tuple[str, ...], where: str) -> None:
    """Walk ``data`` beside dataclass ``cls``: unknown keys (at any depth) and booleans given for numbers.

    dacite names neither the section of an unknown nested key nor refuses ``true`` for an ``int``
    (``bool`` subclasses ``int``), so both are checked here first, with the dotted key.
    """
    known = [f.name for f in dataclasses.fields(cls)]  # dacite sets init=False fields too
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        dotted = ", ".join(repr(".".join((*path, key))) for key in unknown)
        hint = ""
        close = difflib.get_close_matches(unknown[0], known, n=1)
        if len(unknown) == 1 and close:
            hint = f" (did you mean '{close[0]}'?)"
        section = f" of '{'.'.join(path)}'" if path else ""
        raise ConfigError(f"{where}: unknown config key{'s' if len(unknown) > 1 else ''} {dotted}{hint}; "
                          f"known keys{section}: {', '.join(sorted(known))}")
    hints = _field_types(cls)
    for name in known:
        if name not in data:
            continue
        value, tp = data[name], hints.get(name, Any)
        options = _options(tp)
        if isinstance(value, bool) and bool not in options and Any not in options and (
                int in options or float in options):
            raise ConfigError(_wrong_type(where, ".".join((*path, name)), tp, value))
        if isinstance(value, Mapping):
            sections = [o for o in options if dataclasses.is_dataclass(o) and isinstance(o, type)]
            if len(sections) == 1:
                _check_keys(sections[0], value, (*path, name), where)


def describe_type(tp: Any) -> str:
    """A config type in words, for error messages: ``int`` -> "an integer", ``float | None`` -> ...."""
    if tp is Any:
        return "any value"
    if tp is type(None) or tp is None:
        return "null"
    simple = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if tp in simple:
        return simple[tp]
    if dataclasses.is_dataclass(tp):
        return f"a mapping (the {tp.__name__} section)"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe_type(a) for a in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        if len(args) == 2:
            return f"a mapping of {describe_type(args[0]).removeprefix('a ').removeprefix('an ')} keys to " \
                   f"{describe_type(args[1])}"
        return "a mapping"
    if origin in (list, tuple) or tp in (list, tuple):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"a list of {len(args)} values ({', '.join(describe_type(a) for a in args)})"
        return f"a list of ({describe_type(args[0])})" if args else "a list"
    return getattr(tp, "__name__", str(tp))


def _wrong_type(where: str, key: str | None, tp: Any, value: Any) -> str:
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return f"{where}: key '{key}' expects {describe_type(tp)}, got {shown}"


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


def packaged_config(name: str) -> Path:
    """The packaged config ``name`` (``demo``, ``accelerate/multi_gpu``), whatever the working directory holds.

    Raises:
        ConfigError: no packaged config of that name.
    """
    from importlib.resources import as_file, files

    candidate = files(PACKAGED_CONFIGS).joinpath(*Path(name if name.endswith(".yaml") else f"{name}.yaml").parts)
    if not candidate.is_file():
        raise ConfigError(f"no packaged config {name!r} (packaged: {', '.join(packaged_config_names())})")
    with as_file(candidate) as real:
        return Path(real)


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
    # a folder that happens to share a packaged config's name (`anchorbind demo --out demo`) never
    # shadows it: only a file does
    if not path.is_absolute() and candidate.is_file():
        with as_file(candidate) as real:  # a real file for installed packages; zip imports excepted
            return Path(real)
    if path.is_dir():
        raise ConfigError(f"config {str(name_or_path)!r}: is a directory, not a YAML file")
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
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8, cannot read config ({err.reason} at byte {err.start})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML ({_yaml_problem(err)})") from None
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
            raise ConfigError(f"override {item!r}: expected key=value, e.g. --set optim.lr=3e-4")
        key, raw = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"override {item!r}: empty key")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({_yaml_problem(err)})") from None
        node: dict[str, Any] = result
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: '{'.'.join(parts[:depth + 1])}' is a value, not a section")
            node = child
        node[parts[-1]] = value
    return result


def _yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's error in one line: the problem and where (its ``str`` spans several lines)."""
    problem = getattr(err, "problem", None)
    mark = getattr(err, "problem_mark", None)
    if not problem:
        return " ".join(str(err).split())
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else str(problem)
