"""What ``anchorbind embed`` runs: inputs (files, a folder, a manifest, shards) -> an embedding store.

Inputs are read, decoded and collated by the modality's :class:`~anchorbind.processor.Processor`
in DataLoader worker processes (``num_workers``), so decoding overlaps the forward pass, which
runs in the calling process on ``device`` under ``torch.inference_mode()``. Batches come back in
input order. Each row gets a key:

- files given as arguments: the argument itself (for a plugin that ``encodes_text``: the text);
- a folder: the file's path relative to the folder (``a/0001.jpg``); files are searched
  recursively (hidden ones ignored) and taken when their name means this modality by the rules
  of ``anchorbind shards`` among the model's modalities (``x.png`` is an image, ``x.depth.png`` or
  ``x.npy`` a depth map, ``x.txt`` a text file);
- a CSV/JSONL manifest: the ``key_column`` (default ``key``, when a row has it), else the cell
  itself for a path column, else the row number (``000000000``...). Paths are relative to the
  manifest's folder; for a plugin that ``encodes_text`` the cell is the text itself;
- WebDataset shards: the sample key; the member is the first of the processor's ``sample_keys``
  the sample has.

An unreadable input is skipped (recorded in the output with its reason) or, ``strict``, stops
the run with an :class:`~anchorbind.errors.InputError`. A key already in the store (a resumed run)
is not read again; a key seen twice in one run is skipped as a duplicate.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anchorbind.errors import AnchorBindError, ConfigError, InputError

if TYPE_CHECKING:
    import torch

    from anchorbind.processor import Processor

__all__ = ["EmbedResult", "Job", "SingleFileSink", "folder_items", "main", "manifest_items", "run_embedding"]


@dataclass
class Job:
    """The inputs of one run: ``items`` (key, source) or ``shards``, plus inputs refused up front."""

    items: list[tuple[str, Any]] = field(default_factory=list)
    shards: list[str] | None = None
    refused: list[tuple[str | None, Any, str]] = field(default_factory=list)
    """``(key or None, input, reason)`` of inputs found unusable before reading them (bad manifest rows)."""
    total: int | None = None


@dataclass
class EmbedResult:
    written: int = 0
    skipped: list[tuple[str | None, Any, str]] = field(default_factory=list)
    already: int = 0


# ---------------------------------------------------------------------------------------- inputs
def arg_items(inputs: Sequence[str], *, encodes_text: bool) -> Job:
    """Inputs given on the command line: each is its own key (duplicates are refused as such)."""
    job = Job(total=len(inputs))
    seen: set[str] = set()
    for value in inputs:
        if value in seen:
            job.refused.append((value, value, "duplicate input (already given)"))
            continue
        seen.add(value)
        job.items.append((value, value))
    del encodes_text  # the text itself, or a path every other processor reads
    return job


def folder_items(folder: Path, modality: str, keys: dict[str, tuple[str, ...]], *, exclude: Path | None = None,
                 encodes_text: bool = False) -> Job:
    """Files under ``folder`` (recursive, hidden ones ignored) whose name means ``modality``.

    ``keys`` is ``{modality: sample_keys}`` of every modality of the model: a name is classified as
    ``anchorbind shards`` does, so ``x.png`` beside ``x.depth.png`` is an image, not a depth map.
    """
    from anchorbind.pipelines.shards.convert import classify_file

    if not folder.is_dir():
        raise InputError(folder, "no such folder", modality)
    lower = {m: tuple(k.lower() for k in ks) for m, ks in keys.items()}
    exclude = exclude.resolve() if exclude is not None else None
    job = Job()
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        if exclude is not None and (path.resolve() == exclude or exclude in path.resolve().parents):
            continue
        found = classify_file(path.name, lower)
        if isinstance(found, str) or found[1] != modality:
            continue
        job.items.append((relative.as_posix(), path if encodes_text else str(path)))
    job.total = len(job.items)
    return job


def manifest_items(manifest: Path, modality: str, *, column: str | None, key_column: str | None,
                   encodes_text: bool) -> Job:
    """Rows of a ``.csv`` / ``.jsonl`` manifest: ``column`` (default: the modality's name) holds a
    path (relative to the manifest's folder), or the text itself for a plugin that ``encodes_text``.

    Raises:
        InputError: no such file, not .csv/.jsonl, an unreadable header.
        ConfigError: no row has ``column`` (or the explicit ``key_column``).
    """
    from anchorbind.pipelines.shards.convert import _read_manifest

    if not manifest.is_file():
        raise InputError(manifest, "no such manifest file", modality)
    column = column or modality
    explicit_key = key_column is not None
    key_column = key_column or "key"
    job = Job()
    seen: dict[str, int] = {}
    found_column = found_key = False
    for index, (line, record) in enumerate(_read_manifest(manifest)):
        where = f"{manifest}:{line}"
        if isinstance(record, BaseException):
            job.refused.append((None, where, getattr(record, "reason", str(record))))
            continue
        if not isinstance(record, dict):
            job.refused.append((None, where, "row is not an object"))
            continue
        value = record.get(column)
        found_column |= column in record
        given_key = record.get(key_column)
        found_key |= key_column in record
        if given_key is not None and given_key != "":
            key = str(given_key)
        elif explicit_key:
            job.refused.append((None, where, f"no key in column {key_column!r}"))
            continue
        elif encodes_text or not isinstance(value, (str, int, float)) or isinstance(value, bool):
            key = f"{index:09d}"
        else:
            key = str(value)
        if value is None or value == "":
            if column in record:
                job.refused.append((key, where, f"empty {column!r} cell"))
            else:
                job.refused.append((key, where, f"no {column!r} column in this row"))
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            job.refused.append((key, where, f"column {column!r} holds a {type(value).__name__}, not a "
                                            f"{'text' if encodes_text else 'path'}"))
            continue
        if key in seen:
            job.refused.append((key, where, f"duplicate key {key!r} (the row at line {seen[key]} has it)"))
            continue
        seen[key] = line
        value = str(value)
        if encodes_text:
            source: Any = value
        else:
            source = value if Path(value).is_absolute() else str(manifest.parent / value)
        job.items.append((key, source))
    if not found_column:
        raise ConfigError(f"{manifest}: no row has a {column!r} column; name the column with --column")
    if explicit_key and not found_key:
        raise ConfigError(f"{manifest}: no row has the key column {key_column!r}")
    job.total = len(job.items) + len(job.refused)
    return job


def shard_job(spec: str) -> Job:
    from anchorbind.data.shardlist import count_samples, expand_shards

    urls = expand_shards(spec)
    return Job(shards=urls, total=count_samples(urls))


# ---------------------------------------------------------------------------------------- loading
class _Items:
    """A map-style dataset of ``(key, source)``: the DataLoader hands lists of them to :class:`_LoadBatch`."""

    def __init__(self, items: Sequence[tuple[str, Any]]) -> None:
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[str, Any]:
        return self.items[index]


class _LoadBatch:
    """A DataLoader ``collate_fn``: reads each input with the processor, collates the readable ones.

    Failures are returned, never raised, so the caller reports them in input order (a worker's
    exception would lose its type).
    """

    def __init__(self, processor: Processor) -> None:
        self.processor = processor

    def __call__(self, items: list[tuple[str, Any]]) -> dict[str, Any]:
        keys, samples, bad = [], [], []
        for key, source in items:
            try:
                samples.append(self.processor.load(source))
            except (AnchorBindError, OSError, ValueError, RuntimeError) as err:
                reason = err.reason if isinstance(err, InputError) else (
                    getattr(err, "strerror", None) or f"{type(err).__name__}: {err}")
                bad.append((key, source, reason))
                continue
            keys.append(key)
        return {"keys": keys, "batch": self.processor.collate(samples) if samples else None, "bad": bad}


class _NotDone:
    """``keep_key`` of the shard loader: keys not in the store yet (a frozenset, so it pickles)."""

    def __init__(self, done: set[str]) -> None:
        self.done = frozenset(done)

    def __call__(self, key: str) -> bool:
        return key not in self.done


def _worker_init(_: int) -> None:
    import torch

    torch.set_num_threads(1)


def _batches(job: Job, processor: Processor, modality: str, *, done: set[str], batch_size: int,
             num_workers: int, pin_memory: bool) -> Iterator[dict[str, Any]]:
    """``{"keys", "batch", "bad"}`` per batch, in input order; keys in ``done`` left out unread."""
    import torch

    if job.shards is None:
        todo = [(k, s) for k, s in job.items if k not in done]
        if not todo:
            return
        num_workers = min(num_workers, -(-len(todo) // batch_size))  # no idle worker for a small job
        loader = torch.utils.data.DataLoader(
            _Items(todo), batch_size=batch_size, shuffle=False, num_workers=num_workers,
            collate_fn=_LoadBatch(processor), pin_memory=pin_memory, worker_init_fn=_worker_init,
            prefetch_factor=4 if num_workers > 0 else None, persistent_workers=False)
        yield from loader
        return
    from anchorbind.data.loader import build_loader

    loader = build_loader(job.shards, {modality: processor}, train=False, batch_size=batch_size,
                          num_workers=num_workers, keep_key=_NotDone(done) if done else None)
    for raw in loader:
        bad = []
        for error in raw["errors"]:
            key, url = error.get("key"), error.get("url")
            bad.append((key, f"{url}:{key}" if key is not None else str(url), error.get("reason", "unreadable")))
        mask = raw["mask"].get(modality)
        keys = [] if mask is None else [k for k, m in zip(raw["__key__"], mask.tolist(), strict=True) if m]
        yield {"keys": keys, "batch": raw.get(modality) if keys else None, "bad": bad}


# ---------------------------------------------------------------------------------------- the run
def run_embedding(model: Any, modality: str, job: Job, sink: Any, *, batch_size: int = 64, num_workers: int = 0,
                  strict: bool = False, progress: bool | None = None,
                  on_skip: Callable[[str | None, Any, str], None] | None = None) -> EmbedResult:
    """Embed ``job``'s inputs with ``model`` into ``sink`` (an :class:`EmbeddingStoreWriter`-like
    object with ``done``, ``add(keys, embeddings)`` and ``skip(input, reason, key=)``).

    Keys already in ``sink.done`` are not read. The caller closes (or abandons) the sink.

    Raises:
        InputError: ``strict`` and an input cannot be used (the first one, in input order).
    """
    import torch
    from tqdm.auto import tqdm

    from anchorbind.processor import move_to_device

    processor = model.processor(modality)
    encoder = model.encoder(modality)
    device = model.device
    result = EmbedResult()
    done = set(sink.done)
    result.already = sum(1 for k, _ in job.items if k in done) if job.shards is None else len(done)

    def skip(key: str | None, source: Any, reason: str) -> None:
        if strict:
            raise InputError(source, reason, modality)
        result.skipped.append((key, source, reason))
        sink.skip(source if isinstance(source, str) else str(source), reason, key=key)
        if on_skip is not None:
            on_skip(key, source, reason)

    for key, source, reason in job.refused:
        if key is None or key not in done:
            skip(key, source, reason)
    total = None if job.total is None else max(0, job.total - result.already - len(job.refused))
    bar = tqdm(total=total, unit="input", desc=f"embed {modality}", disable=None if progress is None else not progress,
               file=sys.stderr, dynamic_ncols=True)
    fresh: set[str] = set()
    with torch.inference_mode(), bar:
        for item in _batches(job, processor, modality, done=done, batch_size=batch_size, num_workers=num_workers,
                             pin_memory=device.type == "cuda"):
            for key, source, reason in item["bad"]:
                skip(key, source, reason)
            bar.update(len(item["bad"]))
            keys = item["keys"]
            if not keys:
                continue
            embeddings = encoder(move_to_device(item["batch"], device)).float().cpu()
            unique = [i for i, k in enumerate(keys) if k not in done and k not in fresh]
            if len(unique) != len(keys):
                for i, k in enumerate(keys):
                    if i not in unique:
                        skip(k, k, "duplicate key (already embedded)")
                keys = [keys[i] for i in unique]
                embeddings = embeddings[unique]
            if keys:
                fresh.update(keys)
                sink.add(keys, embeddings)
                result.written += len(keys)
            bar.update(len(item["keys"]))
    return result


# ---------------------------------------------------------------------------------------- single file
class SingleFileSink:
    """Today's small-job output: one ``.safetensors`` (``embeddings`` + metadata ``inputs`` / ``skipped``),
    written at :meth:`close` only, atomically. Not resumable."""

    def __init__(self, path: Path, modality: str) -> None:
        self.path, self.modality = path, modality
        self.done: set[str] = set()
        self.keys: list[str] = []
        self.chunks: list[torch.Tensor] = []
        self.skipped: list[str] = []

    @property
    def count(self) -> int:
        return len(self.keys)

    def add(self, keys: Sequence[str], embeddings: torch.Tensor) -> None:
        import torch

        self.keys.extend(keys)
        self.done.update(keys)
        self.chunks.append(torch.as_tensor(embeddings, dtype=torch.float32))

    def skip(self, input: Any, reason: str, *, key: str | None = None) -> None:
        del reason, key
        self.skipped.append(str(input))

    def abandon(self) -> None:
        pass

    def close(self) -> None:
        import json

        import torch
        from safetensors.torch import save_file

        embeddings = torch.cat(self.chunks).contiguous()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            save_file({"embeddings": embeddings}, str(tmp),
                      metadata={"modality": self.modality, "inputs": json.dumps(self.keys),
                                "skipped": json.dumps(self.skipped)})
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------- the command
EMBED_EPILOG = """\
Inputs (exactly one kind): FILES as arguments (key: the argument; for a plugin that encodes text,
the texts themselves); --folder DIR (recursive; files whose name means the modality, as for
`anchorbind shards`; key: the path relative to DIR); --manifest CSV/JSONL (--column, default the
modality's name: a path relative to the manifest, or the text itself for a text plugin; key:
--key-column, default a "key" column, else the path, else the row number); --shards SPEC (key:
the sample key; the member is the first of the modality's shard keys present).

Output: --out DIR writes an embedding store (DIR/manifest.json, part-NNNNNN.safetensors with
float32 "embeddings" and part-NNNNNN.keys.jsonl), a part every --part-size rows, each file
written to a temporary name and renamed into place. It is resumable: rerunning the command on
an interrupted store (or on a complete one after adding inputs) embeds only the inputs whose key
is not in it yet; --overwrite starts it over. A store made with another model, modality or dim
is refused. --out FILE.safetensors is the single-file form for small jobs (embeddings plus the
inputs' order in its metadata, written at the end; not resumable).

Unreadable inputs (missing, empty, truncated, wrong format) are skipped: stderr names each input
and the reason, the summary line counts them, and the rest is written; the exit status is then
0. The output lists the inputs skipped ("skipped" in DIR/manifest.json; in a .safetensors file's
metadata, with the inputs embedded in row order as "inputs"). With --strict the first unreadable
input stops the command (exit 1; a .safetensors output is not written, a store keeps the parts
written so far and stays incomplete). When no input can be read the exit status is 1 and nothing
is written. A missing or damaged model folder exits 1, a --modality the model lacks exits 2.
"""

MAX_SKIP_LINES = 50
"""Skipped inputs named on stderr; the rest are counted (all of them are in the output)."""


def main(argv: Sequence[str] | None = None) -> int:
    """``anchorbind embed MODEL --modality M (FILES... | --folder D | --manifest F | --shards S) --out OUT``."""
    parser = argparse.ArgumentParser(prog="anchorbind embed", description="Embed a collection with a saved BindModel.",
                                     epilog=EMBED_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", metavar="MODEL",
                        help="a directory written by BindModel.save_pretrained, or a Hub id org/name (through the "
                             "Hugging Face cache; HF_HUB_OFFLINE=1 reads only the cache)")
    parser.add_argument("--modality", required=True, help="image, or a plugin modality of the model")
    parser.add_argument("inputs", nargs="*", metavar="FILES",
                        help="input files (an encodes_text plugin: the strings themselves)")
    parser.add_argument("--folder", type=Path, help="embed the modality's files under this folder (recursive)")
    parser.add_argument("--manifest", type=Path, help="embed the paths (or texts) of a .csv/.jsonl manifest column")
    parser.add_argument("--column", help="the manifest column holding the inputs (default: the modality's name)")
    parser.add_argument("--key-column", help="the manifest column holding keys (default: 'key' when present)")
    parser.add_argument("--shards", help="embed the modality's member of every sample of these WebDataset shards")
    parser.add_argument("--out", type=Path, required=True,
                        help="an embedding store folder (resumable), or a .safetensors file (small jobs)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=2,
                        help="processes that read and decode inputs while the model runs (0: none)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda when available)")
    parser.add_argument("--part-size", type=int, default=16384, help="rows per part file of a store")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing store instead of resuming it")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (it shows on a terminal only)")
    parser.add_argument("--strict", action="store_true",
                        help="stop at the first unreadable input (exit 1) instead of skipping it")
    args = parser.parse_intermixed_args(argv)  # FILES may come before or after the options

    import torch

    from anchorbind.embedding_store import EmbeddingStoreWriter, is_embedding_store
    from anchorbind.errors import ModelFileError, UnknownModalityError, describe_source
    from anchorbind.model import BindModel

    for name in ("batch_size", "part_size"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be an integer >= 1, got {getattr(args, name)}")
    if args.num_workers < 0:
        raise ConfigError(f"--num-workers must be an integer >= 0, got {args.num_workers}")
    sources = [flag for flag, given in (("FILES", args.inputs), ("--folder", args.folder),
                                        ("--manifest", args.manifest), ("--shards", args.shards)) if given]
    if len(sources) != 1:
        raise ConfigError("give the inputs one way: FILES, --folder, --manifest or --shards"
                          + (f" (got {', '.join(sources)})" if sources else ""))
    if (args.column or args.key_column) and not args.manifest:
        raise ConfigError("--column and --key-column apply to --manifest only")
    single_file = args.out.suffix == ".safetensors" and not args.out.is_dir()
    blocking = next((p for p in args.out.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise ConfigError(f"--out {str(args.out)!r}: {str(blocking)!r} is a file, not a directory")
    if single_file and args.overwrite:
        raise ConfigError("--overwrite is for a store folder; a .safetensors output is always replaced")
    if not single_file:
        if args.out.exists() and not args.out.is_dir():
            raise ConfigError(f"--out {str(args.out)!r} is a file; give a store folder or a .safetensors path")
        if (args.out.is_dir() and not is_embedding_store(args.out)
                and any(not p.name.startswith(".") for p in args.out.iterdir())):
            raise ConfigError(f"--out {str(args.out)!r} is a directory that holds no embedding store "
                              "(no manifest.json); give a new or empty folder, or a .safetensors file")
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device)
    except RuntimeError as err:
        raise ConfigError(f"--device {args.device!r}: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {args.device!r}: CUDA is not available here (use cpu or auto)")

    try:
        model = BindModel.from_pretrained(args.model_dir, map_location=device).eval()
    except (ConfigError, UnknownModalityError) as err:  # a saved config that no longer builds: a damaged model
        if isinstance(err, ModelFileError):
            raise
        raise ModelFileError(f"{args.model_dir}: the saved model cannot be rebuilt ({err})") from err
    encoder = model.encoder(args.modality)  # a modality the model lacks: UnknownModalityError
    encodes_text = bool(getattr(encoder, "encodes_text", False))
    if args.folder:
        keys = {name: tuple(model.processor(name).sample_keys) for name in model.modalities}
        job = folder_items(args.folder, args.modality, keys, exclude=args.out, encodes_text=encodes_text)
        if not job.items:
            raise InputError(args.folder, f"no {args.modality} files under it (names ending in "
                                          f"{', '.join('.' + k for k in keys[args.modality])})", args.modality)
    elif args.manifest:
        job = manifest_items(args.manifest, args.modality, column=args.column, key_column=args.key_column,
                             encodes_text=encodes_text)
    elif args.shards:
        job = shard_job(args.shards)
    else:
        job = arg_items(args.inputs, encodes_text=encodes_text)

    if single_file:
        sink = SingleFileSink(args.out, args.modality)
    else:
        def same_model(stored: str, given: str) -> bool:
            return stored == given or (Path(stored).exists() and Path(given).exists()
                                       and Path(stored).resolve() == Path(given).resolve())

        sink = EmbeddingStoreWriter(args.out, args.modality, model.embed_dim, args.model_dir,
                                    part_size=args.part_size, overwrite=args.overwrite, same_model=same_model)
    try:
        result = run_embedding(model, args.modality, job, sink, batch_size=args.batch_size,
                               num_workers=args.num_workers, strict=args.strict,
                               progress=False if args.no_progress else None)
    except BaseException:
        sink.abandon()  # a store keeps the parts written: rerun to resume
        raise
    if sink.count == 0:
        if result.already == 0 and result.skipped:
            _, source, reason = result.skipped[0]
            sink.abandon()
            raise InputError(source, f"{reason}; none of the {job.total or len(result.skipped)} inputs could be "
                                     "read, nothing written", modality=args.modality)
        if result.already == 0:
            sink.abandon()
            raise InputError(args.shards or args.manifest or args.folder or args.out, "no input to embed",
                             args.modality)
    for _, source, reason in result.skipped[:MAX_SKIP_LINES]:
        print(f"anchorbind embed: skipped {args.modality} input {describe_source(source)}: {reason}", file=sys.stderr)
    if len(result.skipped) > MAX_SKIP_LINES:
        print(f"anchorbind embed: ... and {len(result.skipped) - MAX_SKIP_LINES} more skipped "
              f"(all listed in {args.out if single_file else args.out / 'manifest.json'})", file=sys.stderr)
    sink.close()
    report = f"; skipped {len(result.skipped)} unreadable input(s), listed above" if result.skipped else ""
    resumed = f" ({result.already} already there, {result.written} new)" if result.already else ""
    shape = (sink.count, model.embed_dim)
    print(f"wrote {shape} {args.modality} embeddings to {args.out}{resumed}{report}", file=sys.stderr)
    return 0
