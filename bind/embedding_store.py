"""An embedding store: a folder of embeddings and their keys, written in parts, resumable.

What ``anchorbind embed ... --out DIR`` writes and ``anchorbind index`` reads. Layout::

    DIR/manifest.json                 # {"format": "anchorbind-embeddings", "version": 1,
                                      #  "modality", "dim", "count", "model",
                                      #  "parts": [{"embeddings", "keys", "count"}, ...],
                                      #  "skipped": [{"key"?, "input"?, "reason"}, ...],
                                      #  "complete": bool}
    DIR/part-000000.safetensors       # one float32 tensor "embeddings" (n, dim); no keys in the header
    DIR/part-000000.keys.jsonl        # n lines, one JSON string (the key) each, in row order
    DIR/part-000001.safetensors ...

Every file is written to a temporary name and renamed into place (``os.replace``), parts first
and ``manifest.json`` last, rewritten after every part: whatever happens to the writer, the
manifest lists only complete parts. A part on disk that the manifest does not list (a writer
killed between the two) is ignored and overwritten by the next run. ``complete`` is set by
:meth:`EmbeddingStoreWriter.close` only, so a store with ``complete: false`` is an interrupted
run; reopening it with the same modality, dim and model continues it after the keys it holds
(``anchorbind embed`` then skips the inputs whose key is done).

Keys are unique strings across the whole store. Reading: :func:`load_embedding_store` (all of it,
one ``(N, dim)`` array) or :func:`iter_embedding_parts` (one part at a time, bounded memory).
A missing, corrupt or inconsistent store raises :class:`EmbeddingStoreError` naming the path.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from anchorbind.errors import ModelFileError

__all__ = [
    "FORMAT",
    "MANIFEST",
    "VERSION",
    "EmbeddingStore",
    "EmbeddingStoreError",
    "EmbeddingStoreWriter",
    "is_embedding_store",
    "iter_embedding_parts",
    "load_embedding_store",
    "read_store_manifest",
]

FORMAT = "anchorbind-embeddings"
VERSION = 1
MANIFEST = "manifest.json"
TENSOR = "embeddings"
DEFAULT_PART_SIZE = 16384
"""Rows per part: 32 MiB of float32 at dim 512; also the most work an interrupted run loses."""


class EmbeddingStoreError(ModelFileError):
    """An embedding store is missing, unreadable, corrupt, inconsistent, or not the one expected.

    A :class:`~anchorbind.errors.ModelFileError` (a saved file that cannot be used): the CLI prints
    one line naming the path and exits 1.
    """


# ---------------------------------------------------------------------------------------- helpers
def _part_names(index: int) -> tuple[str, str]:
    stem = f"part-{index:06d}"
    return f"{stem}.safetensors", f"{stem}.keys.jsonl"


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _as_float32(embeddings: Any) -> np.ndarray:
    if hasattr(embeddings, "detach"):  # a torch tensor (torch is not needed to read a store)
        embeddings = embeddings.detach().float().cpu().numpy()
    return np.ascontiguousarray(np.asarray(embeddings, dtype=np.float32))


def is_embedding_store(directory: str | os.PathLike[str]) -> bool:
    """Whether ``directory`` holds a ``manifest.json`` of this format (not checked further)."""
    path = Path(directory) / MANIFEST
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == FORMAT


def read_store_manifest(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The validated ``manifest.json`` of a store.

    Raises:
        EmbeddingStoreError: no such folder or manifest, not JSON, another format or a newer
            version, or fields missing or of the wrong type.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise EmbeddingStoreError(f"{directory}: no such embedding store folder")
    path = directory / MANIFEST
    if not path.is_file():
        raise EmbeddingStoreError(f"{directory}: not an embedding store (no {MANIFEST})")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise EmbeddingStoreError(f"{path}: unreadable manifest ({err})") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise EmbeddingStoreError(f"{path}: not an embedding store manifest (format={found!r}, expected {FORMAT!r})")
    version = meta.get("version")
    if not isinstance(version, int) or version < 1 or version > VERSION:
        raise EmbeddingStoreError(f"{path}: unsupported store version {version!r} (this AnchorBind reads {VERSION})")
    types = {"modality": str, "dim": int, "count": int, "model": str, "parts": list, "skipped": list,
             "complete": bool}
    for name, kind in types.items():
        if not isinstance(meta.get(name), kind) or (kind is int and isinstance(meta.get(name), bool)):
            raise EmbeddingStoreError(f"{path}: field {name!r} missing or not a {kind.__name__} "
                                      f"(got {meta.get(name)!r})")
    if meta["dim"] < 1:
        raise EmbeddingStoreError(f"{path}: dim must be >= 1, got {meta['dim']}")
    total = 0
    for i, part in enumerate(meta["parts"]):
        if (not isinstance(part, dict) or not isinstance(part.get("embeddings"), str)
                or not isinstance(part.get("keys"), str) or not isinstance(part.get("count"), int)
                or part["count"] < 0):
            raise EmbeddingStoreError(f"{path}: part {i} is not {{'embeddings': str, 'keys': str, 'count': int}}")
        for name in (part["embeddings"], part["keys"]):
            if Path(name).name != name or name in ("", ".", ".."):
                raise EmbeddingStoreError(f"{path}: part {i} names {name!r}, not a file of the store folder")
        total += part["count"]
    if total != meta["count"]:
        raise EmbeddingStoreError(f"{path}: count is {meta['count']} but the parts hold {total} rows")
    return meta


def _read_part(directory: Path, part: dict[str, Any], dim: int) -> tuple[list[str], np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    emb_path, keys_path = directory / part["embeddings"], directory / part["keys"]
    if not emb_path.is_file():
        raise EmbeddingStoreError(f"{emb_path}: missing part file")
    try:
        tensors = load_file(str(emb_path))
    except (OSError, SafetensorError, ValueError) as err:
        raise EmbeddingStoreError(f"{emb_path}: unreadable safetensors file ({err})") from err
    array = tensors.get(TENSOR)
    if array is None:
        raise EmbeddingStoreError(f"{emb_path}: no {TENSOR!r} tensor (has {sorted(tensors)})")
    if array.dtype != np.float32 or array.ndim != 2 or array.shape != (part["count"], dim):
        raise EmbeddingStoreError(f"{emb_path}: expected float32 ({part['count']}, {dim}) embeddings, "
                                  f"got {array.dtype} {tuple(array.shape)}")
    if not keys_path.is_file():
        raise EmbeddingStoreError(f"{keys_path}: missing keys file")
    keys: list[str] = []
    try:
        with keys_path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                key = json.loads(line)
                if not isinstance(key, str):
                    raise EmbeddingStoreError(f"{keys_path}:{number}: a key must be a JSON string, got {key!r}")
                keys.append(key)
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise EmbeddingStoreError(f"{keys_path}: unreadable keys file ({err})") from err
    if len(keys) != part["count"]:
        raise EmbeddingStoreError(f"{keys_path}: {len(keys)} keys for {part['count']} embeddings")
    return keys, array


def iter_embedding_parts(directory: str | os.PathLike[str]) -> Iterator[tuple[list[str], np.ndarray]]:
    """``(keys, embeddings)`` of each part in order, one part in memory at a time.

    ``embeddings`` is a float32 ``(n, dim)`` array. The manifest is read (and checked) once, before
    the first part.

    Raises:
        EmbeddingStoreError: as :func:`load_embedding_store` (a part's error when that part is reached).
    """
    directory = Path(directory)
    meta = read_store_manifest(directory)
    for part in meta["parts"]:
        yield _read_part(directory, part, meta["dim"])


@dataclass
class EmbeddingStore:
    """A whole store in memory (:func:`load_embedding_store`).

    Attributes:
        keys: one unique key per row.
        embeddings: float32 ``(N, dim)``, row ``i`` is ``keys[i]``'s embedding.
        modality: what was embedded (``image`` or a plugin's name).
        model: the model path or id given to ``anchorbind embed``.
        dim: the embedding width.
        skipped: ``{"key"?, "input"?, "reason"}`` per input that could not be embedded.
        complete: False for an interrupted run (it holds what was written so far).
        path: the store folder.
    """

    keys: list[str]
    embeddings: np.ndarray
    modality: str
    model: str
    dim: int
    skipped: list[dict[str, Any]] = field(default_factory=list)
    complete: bool = True
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.keys)


def load_embedding_store(directory: str | os.PathLike[str], *, require_complete: bool = False) -> EmbeddingStore:
    """Read a whole store: its keys and one float32 ``(N, dim)`` array (parts concatenated).

    For stores larger than memory use :func:`iter_embedding_parts`.

    Args:
        require_complete: refuse a store whose run was interrupted (``complete: false``).

    Raises:
        EmbeddingStoreError: naming the path: no folder or manifest, a manifest that is not this
            format, a missing or corrupt part, a part whose shape, dtype or key count disagrees with
            the manifest, a duplicate key, or (``require_complete``) an incomplete store.
    """
    directory = Path(directory)
    meta = read_store_manifest(directory)
    if require_complete and not meta["complete"]:
        raise EmbeddingStoreError(f"{directory}: incomplete embedding store ({meta['count']} rows written); "
                                  "rerun the same `anchorbind embed` command to finish it")
    embeddings = np.empty((meta["count"], meta["dim"]), dtype=np.float32)
    keys: list[str] = []
    seen: set[str] = set()
    row = 0
    for part in meta["parts"]:
        part_keys, array = _read_part(directory, part, meta["dim"])
        for key in part_keys:
            if key in seen:
                raise EmbeddingStoreError(f"{directory / part['keys']}: duplicate key {key!r}")
            seen.add(key)
        keys.extend(part_keys)
        embeddings[row:row + len(part_keys)] = array
        row += len(part_keys)
    return EmbeddingStore(keys=keys, embeddings=embeddings, modality=meta["modality"], model=meta["model"],
                          dim=meta["dim"], skipped=list(meta["skipped"]), complete=meta["complete"], path=directory)


# ---------------------------------------------------------------------------------------- writing
class EmbeddingStoreWriter:
    """Writes a store part by part; reopening an existing store continues it.

    Example::

        with EmbeddingStoreWriter("emb", modality="image", dim=512, model="my-model") as store:
            todo = [k for k in keys if k not in store.done]
            ...
            store.add(batch_keys, batch_embeddings)
            store.skip("bad.jpg", "truncated file", key="bad.jpg")

    Nothing is created until the first part is written or :meth:`close` is called, so a run that
    embeds nothing leaves no folder behind. Leaving the ``with`` block by an exception writes the
    rows already added as a (shorter) part and leaves the store incomplete; a clean exit closes it.

    Args:
        directory: the store folder (created with its parents).
        modality, dim, model: recorded in the manifest; an existing store must have the same
            (``same_model`` decides for ``model``, default: equal strings).
        part_size: rows per part file.
        overwrite: discard an existing store in ``directory`` instead of continuing it.

    Raises:
        EmbeddingStoreError: ``directory`` holds a store of another modality, dim or model, or a
            damaged one, or files that are not a store (unless ``overwrite``).
    """

    def __init__(self, directory: str | os.PathLike[str], modality: str, dim: int, model: str, *,
                 part_size: int = DEFAULT_PART_SIZE, overwrite: bool = False,
                 same_model: Any = None) -> None:
        if part_size < 1:
            raise ValueError(f"part_size must be >= 1, got {part_size}")
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.directory = Path(directory)
        self.modality, self.dim, self.model, self.part_size = str(modality), int(dim), str(model), int(part_size)
        self.parts: list[dict[str, Any]] = []
        self.skipped: list[dict[str, Any]] = []
        self.done: set[str] = set()
        """Keys already in the store (written in parts or waiting in the buffer)."""
        self.resumed = 0
        """Rows that were in the store when it was opened."""
        self.complete = False
        self._buffer_keys: list[str] = []
        self._buffer: list[np.ndarray] = []
        self._buffered = 0
        self._closed = False
        if self.directory.exists() and not self.directory.is_dir():
            raise EmbeddingStoreError(f"{self.directory}: is a file, not an embedding store folder")
        if self.directory.is_dir() and (self.directory / MANIFEST).exists():
            if overwrite:
                self._remove_store_files()
            else:
                self._reopen(same_model)
        elif self.directory.is_dir() and any(not p.name.startswith(".") for p in self.directory.iterdir()):
            raise EmbeddingStoreError(f"{self.directory}: a folder that holds files but no embedding store "
                                      f"({MANIFEST}); give a new or empty folder")

    # ------------------------------------------------------------------ opening
    def _reopen(self, same_model: Any) -> None:
        meta = read_store_manifest(self.directory)
        theirs = {"modality": meta["modality"], "dim": meta["dim"]}
        ours = {"modality": self.modality, "dim": self.dim}
        if theirs != ours or not (same_model or (lambda a, b: a == b))(meta["model"], self.model):
            raise EmbeddingStoreError(
                f"{self.directory}: holds {meta['modality']} embeddings (dim {meta['dim']}) of model "
                f"{meta['model']!r}, not {self.modality} (dim {self.dim}) of {self.model!r}; give another folder "
                "or overwrite it")
        for part in meta["parts"]:
            keys, _ = _read_part(self.directory, part, self.dim)  # checks every part, as a reader would
            for key in keys:
                if key in self.done:
                    raise EmbeddingStoreError(f"{self.directory / part['keys']}: duplicate key {key!r}")
                self.done.add(key)
        self.parts = [dict(p) for p in meta["parts"]]
        self.skipped = [dict(s) for s in meta["skipped"]]
        self.resumed = meta["count"]
        self._clean_temporaries()

    def _clean_temporaries(self) -> None:
        for path in self.directory.glob(".*.tmp"):
            path.unlink(missing_ok=True)

    def _remove_store_files(self) -> None:
        for path in self.directory.iterdir():
            name = path.name
            if path.is_file() and (name == MANIFEST or (name.startswith("part-") and
                                                        name.endswith((".safetensors", ".keys.jsonl")))):
                path.unlink()
        self._clean_temporaries()

    # ------------------------------------------------------------------ state
    @property
    def count(self) -> int:
        """Rows in the store, including rows added but not yet written."""
        return sum(p["count"] for p in self.parts) + self._buffered

    def manifest(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "modality": self.modality,
            "dim": self.dim,
            "count": sum(p["count"] for p in self.parts),
            "model": self.model,
            "parts": self.parts,
            "skipped": self.skipped,
            "complete": self.complete,
        }

    # ------------------------------------------------------------------ writing
    def add(self, keys: Sequence[str], embeddings: Any) -> None:
        """Append rows: ``keys[i]`` is the key of ``embeddings[i]`` (``(n, dim)``, numpy or torch).

        A key that was skipped earlier (:meth:`skip`) leaves the skipped list.

        Raises:
            ValueError: a key that is not a string or already in the store, or a shape mismatch.
        """
        self._check_open()
        array = _as_float32(embeddings)
        keys = list(keys)
        if array.ndim != 2 or array.shape != (len(keys), self.dim):
            raise ValueError(f"expected embeddings of shape ({len(keys)}, {self.dim}), got {tuple(array.shape)}")
        fresh: set[str] = set()
        for key in keys:
            if not isinstance(key, str):
                raise ValueError(f"keys must be strings, got {type(key).__name__} {key!r}")
            if key in self.done or key in fresh:
                raise ValueError(f"key {key!r} is already in the embedding store {self.directory}")
            fresh.add(key)
        if not keys:
            return
        self.done |= fresh
        if self.skipped:
            self.skipped = [s for s in self.skipped if s.get("key") not in fresh]
        self._buffer_keys.extend(keys)
        self._buffer.append(array)
        self._buffered += len(keys)
        while self._buffered >= self.part_size:
            self._write_part(self.part_size)

    def skip(self, input: Any, reason: str, *, key: str | None = None) -> None:
        """Record an input that could not be embedded (kept in the manifest's ``skipped``).

        An earlier entry for the same key (or, without a key, the same input) is replaced, so a
        resumed run that retries an input does not list it twice.
        """
        self._check_open()
        entry: dict[str, Any] = {}
        if key is not None:
            entry["key"] = str(key)
        if input is not None:
            entry["input"] = input if isinstance(input, (str, int, float)) else str(input)
        entry["reason"] = str(reason)
        if key is not None:
            self.skipped = [s for s in self.skipped if s.get("key") != entry["key"]]
        elif "input" in entry:
            self.skipped = [s for s in self.skipped if "key" in s or s.get("input") != entry["input"]]
        self.skipped.append(entry)

    def flush(self) -> None:
        """Write the rows added so far as a part (possibly shorter than ``part_size``) and the manifest."""
        self._check_open()
        if self._buffered:
            self._write_part(self._buffered)

    def close(self) -> None:
        """Write what remains, mark the store complete and write its manifest."""
        if self._closed:
            return
        self.flush()
        self.complete = True
        self._write_manifest()
        self._closed = True

    def abandon(self) -> None:
        """Stop without closing: rows still buffered are written as a part, the store stays incomplete.

        Does nothing more when nothing was ever written (no folder is created).
        """
        if self._closed:
            return
        if self._buffered:
            self._write_part(self._buffered)
        self._closed = True

    def __enter__(self) -> EmbeddingStoreWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abandon()

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"the embedding store writer of {self.directory} is closed")

    def _take(self, n: int) -> tuple[list[str], np.ndarray]:
        keys, self._buffer_keys = self._buffer_keys[:n], self._buffer_keys[n:]
        merged = self._buffer[0] if len(self._buffer) == 1 else np.concatenate(self._buffer)
        rows, rest = merged[:n], merged[n:]
        self._buffer = [rest] if len(rest) else []
        self._buffered -= n
        return keys, np.ascontiguousarray(rows)

    def _write_part(self, n: int) -> None:
        from safetensors.numpy import save

        keys, rows = self._take(n)
        self.directory.mkdir(parents=True, exist_ok=True)
        index = len(self.parts)
        emb_name, keys_name = _part_names(index)
        _write_atomic(self.directory / emb_name, save({TENSOR: rows}, metadata={"format": FORMAT}))
        _write_atomic(self.directory / keys_name,
                      "".join(json.dumps(k, ensure_ascii=False) + "\n" for k in keys).encode("utf-8"))
        self.parts.append({"embeddings": emb_name, "keys": keys_name, "count": len(keys)})
        self._write_manifest()

    def _write_manifest(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        data = json.dumps(self.manifest(), indent=1, ensure_ascii=False, allow_nan=False)
        _write_atomic(self.directory / MANIFEST, data.encode("utf-8"))

