"""Nearest-neighbour search over an embedding store: ``anchorbind index`` and ``anchorbind search``.

``anchorbind index STORE --out INDEX`` builds a faiss index over the unit-norm embeddings of an
embedding store (written by ``anchorbind embed ... --out DIR``); ``anchorbind search INDEX --text
"a dog barking"`` embeds one query of *any* modality of the model and prints the nearest stored
items: a text query over an index of audio clips is emergent retrieval as a user meets it.

An index is a directory, written atomically (a temporary sibling renamed into place):

* ``index.faiss`` — the faiss index (``faiss.write_index``; read back with ``faiss.read_index``,
  nothing is ever unpickled);
* ``index.json`` — ``{"format": "anchorbind-index", "version", "type", "params", "metric",
  "modality", "dim", "count", "model", "store", "recall@10", "recall_queries"}``;
* ``keys.jsonl`` — one JSON value per line: the store's key of row ``i`` of the index.

Types: ``flat`` (``IndexFlatIP``, exact inner product — cosine on unit vectors; the default),
``ivf`` (``IndexIVFFlat``, inner product, trained on the data or a sample of it) and ``hnsw``
(``IndexHNSWFlat`` with ``METRIC_INNER_PRODUCT``). For the approximate types recall@10 against
exact search is measured on up to 200 of the store's own vectors, printed and kept in
``index.json``.

The core names no built-in modality: ``search``'s query flags (``--image`` and one per registered
plugin) are generated from the registry.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from anchorbind.atomic import write_directory
from anchorbind.errors import AnchorBindError, ConfigError, InputError, ModelFileError, UnknownModalityError

__all__ = [
    "INDEX_FORMAT",
    "INDEX_TYPES",
    "IndexFileError",
    "SearchIndex",
    "build_index",
    "embed_query",
    "index_main",
    "load_index",
    "search_main",
]

INDEX_FORMAT = "anchorbind-index"
INDEX_VERSION = 1
INDEX_TYPES = ("flat", "ivf", "hnsw")
FAISS_NAME = "index.faiss"
META_NAME = "index.json"
KEYS_NAME = "keys.jsonl"
RECALL_K = 10
RECALL_QUERIES = 200
DEFAULT_HNSW_M = 32
DEFAULT_EF_CONSTRUCTION = 40
DEFAULT_EF_SEARCH = 64


class IndexFileError(AnchorBindError, OSError):
    """An index directory is missing, unreadable, damaged, or does not match the model queried with it."""


def _faiss() -> Any:
    import faiss

    return faiss


# ---------------------------------------------------------------------------------------- building
def _normalised(embeddings: Any, where: str) -> np.ndarray:
    """float32, C-contiguous, rows scaled to unit length (zero rows stay zero); non-finite refused.

    A float32 C-contiguous array is normalised in place (a store's rows are read fresh for this).
    """
    array = np.ascontiguousarray(np.asarray(embeddings, dtype=np.float32))
    if array.ndim != 2 or array.shape[0] == 0:
        raise IndexFileError(f"{where}: expected a non-empty (n, dim) embedding matrix, got shape {array.shape}")
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).any(axis=1).sum())
        raise IndexFileError(f"{where}: {bad} embedding row(s) hold NaN or infinite values")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    np.divide(array, np.where(norms > 0, norms, 1.0).astype(np.float32), out=array)
    return array


def default_nlist(count: int) -> int:
    """IVF lists for ``count`` vectors: about ``4 * sqrt(count)``, at most ``count / 39`` (faiss's minimum
    training points per centroid), at least 1."""
    return max(1, min(round(4 * math.sqrt(count)), count // 39))


def default_nprobe(nlist: int) -> int:
    """Lists probed per query: about ``sqrt(nlist)``, at least 1 and at most ``nlist``."""
    return max(1, min(nlist, round(math.sqrt(nlist))))


def _check_positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise ConfigError(f"{name} must be an integer >= 1, got {value}")


def _build_faiss_index(vectors: np.ndarray, index_type: str, params: dict[str, int], seed: int) -> Any:
    faiss = _faiss()
    count, dim = vectors.shape
    if index_type == "flat":
        index = faiss.IndexFlatIP(dim)
    elif index_type == "ivf":
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, params["nlist"], faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        # faiss samples 256 points per centroid at most; train on that many (or all) rows
        size = min(count, 256 * params["nlist"])
        rows = np.random.default_rng(seed).choice(count, size, replace=False) if size < count else slice(None)
        index.train(np.ascontiguousarray(vectors[rows]))
        index.nprobe = params["nprobe"]
    elif index_type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, params["m"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params["ef_construction"]
        index.hnsw.efSearch = params["ef_search"]
    else:  # guarded by the callers
        raise ConfigError(f"unknown index type {index_type!r}; choose one of {', '.join(INDEX_TYPES)}")
    index.add(vectors)
    return index


def measure_recall(index: Any, vectors: np.ndarray, *, k: int = RECALL_K, queries: int = RECALL_QUERIES,
                   seed: int = 0) -> tuple[float, int]:
    """Recall@k of ``index`` against exact inner-product search, on up to ``queries`` rows of ``vectors``.

    Returns ``(recall, number of queries)``: the mean fraction of each query's exact top-k that the
    index also returns in its top-k.
    """
    faiss = _faiss()
    count = vectors.shape[0]
    k = min(k, count)
    picked = np.sort(np.random.default_rng(seed).choice(count, min(queries, count), replace=False))
    sample = np.ascontiguousarray(vectors[picked])
    _, truth = faiss.knn(sample, vectors, k, metric=faiss.METRIC_INNER_PRODUCT)  # brute force, no copy
    _, found = index.search(sample, k)
    hits = [len(set(t.tolist()) & set(f[f >= 0].tolist())) / k for t, f in zip(truth, found, strict=True)]
    return float(np.mean(hits)), len(picked)


def _check_out(out: Path) -> None:
    """Refuse an ``out`` under a file, or a non-empty directory that is not an index (never clobbered)."""
    blocking = next((p for p in [out, *out.parents] if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise ConfigError(f"--out {str(out)!r}: {str(blocking)!r} is a file, not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / META_NAME).is_file():
        raise ConfigError(f"--out {str(out)!r} is a non-empty directory that is not an AnchorBind index; "
                          "refusing to replace it")


def _write_atomically(out: Path, write: Any) -> None:
    """Run ``write(tmp_dir)`` then rename the temporary directory to ``out`` (replacing an old index)."""
    out = Path(out)
    _check_out(out)
    write_directory(out, write)


def _resolved_model(model: Any) -> Any:
    """A model given as an existing relative path is recorded absolute, so ``search`` finds it from anywhere."""
    if isinstance(model, str) and model and Path(model).is_dir():
        return str(Path(model).resolve())
    return model


def build_index(
    store: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    index_type: str = "flat",
    nlist: int | None = None,
    nprobe: int | None = None,
    m: int = DEFAULT_HNSW_M,
    ef_construction: int = DEFAULT_EF_CONSTRUCTION,
    ef_search: int = DEFAULT_EF_SEARCH,
    recall_queries: int = RECALL_QUERIES,
    seed: int = 0,
) -> dict[str, Any]:
    """Build the index directory ``out`` over the embedding store ``store``; returns its ``index.json``.

    Raises:
        ConfigError: a bad type or parameter (``--nlist`` larger than the collection, ...), or an
            ``out`` that is a file or a non-empty directory other than an index.
        AnchorBindError: the store is missing or damaged (from ``load_embedding_store``).
    """
    from anchorbind.embedding_store import load_embedding_store

    if index_type not in INDEX_TYPES:
        raise ConfigError(f"unknown index type {index_type!r}; choose one of {', '.join(INDEX_TYPES)}")
    for name, value in (("--nlist", nlist), ("--nprobe", nprobe), ("--m", m), ("--ef-construction", ef_construction),
                        ("--ef-search", ef_search), ("recall queries", recall_queries)):
        _check_positive(name, value)
    _check_out(Path(out))
    loaded = load_embedding_store(store)
    if len(loaded.keys) == 0:
        raise IndexFileError(f"{store}: the embedding store holds no embeddings; nothing to index")
    vectors = _normalised(loaded.embeddings, str(store))
    if not loaded.complete:
        print(f"anchorbind index: warning: {store} is an incomplete embedding store (an interrupted embed run); "
              f"indexing the {len(loaded.keys)} rows it holds", file=sys.stderr)
    keys = list(loaded.keys)
    count, dim = vectors.shape
    if len(keys) != count:
        raise IndexFileError(f"{store}: {len(keys)} keys for {count} embeddings")
    if int(loaded.dim) != dim:
        raise IndexFileError(f"{store}: the manifest says dim {loaded.dim} but the embeddings have {dim}")

    params: dict[str, int] = {}
    if index_type == "ivf":
        params["nlist"] = nlist if nlist is not None else default_nlist(count)
        if params["nlist"] > count:
            raise ConfigError(f"--nlist {params['nlist']} exceeds the {count} vectors of {str(store)!r}")
        params["nprobe"] = min(params["nlist"], nprobe if nprobe is not None else default_nprobe(params["nlist"]))
    elif index_type == "hnsw":
        params.update(m=m, ef_construction=ef_construction, ef_search=ef_search)
    index = _build_faiss_index(vectors, index_type, params, seed)

    meta: dict[str, Any] = {
        "format": INDEX_FORMAT,
        "version": INDEX_VERSION,
        "type": index_type,
        "params": params,
        "metric": "inner_product",
        "modality": loaded.modality,
        "dim": dim,
        "count": count,
        "model": _resolved_model(loaded.model),
        "store": str(Path(store).resolve()),
        "store_complete": bool(loaded.complete),
        "skipped": len(loaded.skipped or []),
    }
    if index_type != "flat":
        recall, queries = measure_recall(index, vectors, queries=recall_queries, seed=seed)
        meta[f"recall@{RECALL_K}"] = round(recall, 4)
        meta["recall_queries"] = queries

    def write(tmp: Path) -> None:
        _faiss().write_index(index, str(tmp / FAISS_NAME))
        with (tmp / KEYS_NAME).open("w", encoding="utf-8") as f:
            for key in keys:
                f.write(json.dumps(key, ensure_ascii=False) + "\n")
        (tmp / META_NAME).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    _write_atomically(Path(out), write)
    return meta


# ----------------------------------------------------------------------------------------- loading
@dataclass
class SearchIndex:
    """A loaded index directory: the faiss index, its metadata and the key of each row."""

    path: Path
    index: Any
    meta: dict[str, Any]
    keys: list[Any]

    @property
    def modality(self) -> str:
        return str(self.meta["modality"])

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    def set_search_params(self, *, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Override the stored ``nprobe`` (IVF) or ``efSearch`` (HNSW); ignored by other types."""
        _check_positive("--nprobe", nprobe)
        _check_positive("--ef-search", ef_search)
        if nprobe is not None and hasattr(self.index, "nprobe"):
            self.index.nprobe = nprobe
        if ef_search is not None and hasattr(self.index, "hnsw"):
            self.index.hnsw.efSearch = ef_search

    def search(self, queries: Any, k: int = 10) -> list[list[tuple[Any, float]]]:
        """The top-``k`` ``(key, score)`` of each query row (scores are cosine similarities)."""
        vectors = _normalised(np.array(queries, dtype=np.float32), "query")  # a copy: the caller's rows stay
        if vectors.shape[1] != self.dim:
            raise IndexFileError(f"{self.path}: the index holds {self.dim}-dim embeddings but the query has "
                                 f"{vectors.shape[1]}")
        k = min(max(1, int(k)), self.index.ntotal)
        scores, rows = self.index.search(vectors, k)
        return [[(self.keys[r], float(s)) for s, r in zip(srow, rrow, strict=True) if r >= 0]
                for srow, rrow in zip(scores, rows, strict=True)]


def load_index(path: str | os.PathLike[str]) -> SearchIndex:
    """Read an index directory written by :func:`build_index`.

    Raises:
        IndexFileError: naming the path: not a directory, no or unreadable ``index.json``, a
            foreign format, a damaged ``index.faiss`` or ``keys.jsonl``, or counts that disagree.
    """
    path = Path(path)
    if not path.is_dir():
        raise IndexFileError(f"{path}: no such index directory")
    meta_path = path / META_NAME
    if not meta_path.is_file():
        raise IndexFileError(f"{path}: not an AnchorBind index (no {META_NAME})")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise IndexFileError(f"{meta_path}: unreadable index metadata ({err})") from err
    if not isinstance(meta, dict) or meta.get("format") != INDEX_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise IndexFileError(f"{meta_path}: not an AnchorBind index (format={found!r})")
    missing = [k for k in ("type", "modality", "dim", "count") if k not in meta]
    if missing or int(meta.get("version", 0)) > INDEX_VERSION:
        raise IndexFileError(f"{meta_path}: missing {missing} or an unsupported version {meta.get('version')!r}")
    faiss_path = path / FAISS_NAME
    if not faiss_path.is_file():
        raise IndexFileError(f"{faiss_path}: missing index file")
    try:
        index = _faiss().read_index(str(faiss_path))
    except (RuntimeError, OSError) as err:
        first = str(err).strip().splitlines()
        raise IndexFileError(f"{faiss_path}: unreadable faiss index ({first[0] if first else err})") from err
    try:
        with (path / KEYS_NAME).open(encoding="utf-8") as f:
            keys = [json.loads(line) for line in f if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise IndexFileError(f"{path / KEYS_NAME}: unreadable keys ({err})") from err
    if not (index.ntotal == len(keys) == int(meta["count"])) or index.d != int(meta["dim"]):
        raise IndexFileError(f"{path}: the index holds {index.ntotal} x {index.d} vectors and {len(keys)} keys, "
                             f"but {META_NAME} says {meta['count']} x {meta['dim']}")
    return SearchIndex(path, index, meta, keys)


# ----------------------------------------------------------------------------------------- the CLI
INDEX_EPILOG = """\
Types: flat = exact inner product (IndexFlatIP; cosine on the store's unit vectors), the default;
ivf = IndexIVFFlat (inner product), trained on the data or a sample of 256 vectors per list, for
large collections; hnsw = IndexHNSWFlat (METRIC_INNER_PRODUCT), a graph, fast and memory-hungry.
For ivf and hnsw, recall@10 against exact search is measured on up to 200 of the store's own
vectors, printed, and kept in INDEX/index.json. --nprobe (ivf) and --ef-search (hnsw) are the
defaults stored with the index; `anchorbind search` can override them per query.
INDEX is written to a temporary directory and renamed into place (an older index is replaced).
"""


def index_main(argv: Sequence[str] | None = None) -> int:
    """``anchorbind index STORE --out INDEX [--type flat|ivf|hnsw]``: a faiss index over an embedding store."""
    parser = argparse.ArgumentParser(prog="anchorbind index", allow_abbrev=False,
                                     description="Build a faiss index over an embedding store.",
                                     epilog=INDEX_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("store", type=Path, help="an embedding store directory (anchorbind embed ... --out DIR)")
    parser.add_argument("--out", type=Path, required=True, help="the index directory to write")
    parser.add_argument("--type", choices=INDEX_TYPES, default="flat", help="index type (default: flat, exact)")
    parser.add_argument("--nlist", type=int, help="ivf: number of lists (default: about 4*sqrt(n))")
    parser.add_argument("--nprobe", type=int, help="ivf: lists probed per query (default: about sqrt(nlist))")
    parser.add_argument("--m", type=int, default=DEFAULT_HNSW_M,
                        help="hnsw: neighbours per node (default: %(default)s)")
    parser.add_argument("--ef-construction", type=int, default=DEFAULT_EF_CONSTRUCTION,
                        help="hnsw: candidate list size while building (default: %(default)s)")
    parser.add_argument("--ef-search", type=int, default=DEFAULT_EF_SEARCH,
                        help="hnsw: candidate list size while searching (default: %(default)s)")
    parser.add_argument("--recall-queries", type=int, default=RECALL_QUERIES,
                        help="ivf/hnsw: store vectors used to measure recall@10 (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the training and recall samples")
    args = parser.parse_args(argv)

    meta = build_index(args.store, args.out, index_type=args.type, nlist=args.nlist, nprobe=args.nprobe, m=args.m,
                       ef_construction=args.ef_construction, ef_search=args.ef_search,
                       recall_queries=args.recall_queries, seed=args.seed)
    params = "".join(f" {k}={v}" for k, v in meta["params"].items())
    print(f"wrote the {meta['type']} index of {meta['count']} {meta['modality']} embeddings "
          f"(dim {meta['dim']}{',' if params else ''}{params}) to {args.out}")
    recall_name = f"recall@{RECALL_K}"
    if recall_name in meta:
        print(f"{recall_name} against exact search: {meta[recall_name]:.4f} "
              f"(on {meta['recall_queries']} of the store's vectors)")
    return 0


# fixed options of ``search``: a plugin whose name collides with one is queried with --modality
_SEARCH_OPTIONS = {"modality", "input", "model", "json", "k", "nprobe", "ef_search", "ef-search", "help", "debug"}


def _query_flags() -> list[tuple[str, str]]:
    """``(modality, metavar)`` for the anchor and every registered plugin, in that order."""
    from anchorbind.registry import ANCHOR_MODALITY, get_plugin_class, list_modalities

    flags = [(ANCHOR_MODALITY, "PATH")]
    for name in list_modalities():
        if name in _SEARCH_OPTIONS or name == ANCHOR_MODALITY:
            continue
        flags.append((name, "STRING" if get_plugin_class(name).encodes_text else "PATH"))
    return flags


def _load_model(path: Any, *, given: bool) -> Any:
    from anchorbind.model import BindModel

    if path is None:
        raise ConfigError("the index does not record the model its store was embedded with; pass --model DIR")
    try:
        return BindModel.from_pretrained(path).eval()
    except (ConfigError, UnknownModalityError) as err:  # a saved config that no longer builds: a damaged model
        if isinstance(err, ModelFileError):
            raise
        raise ModelFileError(f"{path}: the saved model cannot be rebuilt ({err})") from err
    except ModelFileError as err:
        if given:
            raise
        raise ModelFileError(f"{err} (the model recorded with the index; pass --model DIR)") from err


def embed_query(model: Any, modality: str, source: Any) -> np.ndarray:
    """The (1, dim) embedding of one raw ``source`` of ``modality`` (a path, or the string for a text plugin).

    Raises:
        UnknownModalityError: ``modality`` is not registered, or the model lacks it.
        InputError: the input cannot be read.
    """
    import torch

    from anchorbind.registry import ANCHOR_MODALITY, get_plugin_class

    if modality != ANCHOR_MODALITY:
        get_plugin_class(modality)  # not registered at all: say so, listing what is
    processor = model.processor(modality)  # registered but not in this model: names the model's modalities
    try:
        sample = processor.load(source)
    except InputError:
        raise
    except (AnchorBindError, OSError) as err:
        raise InputError(source, getattr(err, "strerror", None) or str(err), modality=modality) from err
    with torch.inference_mode():
        emb = model.encode(modality, processor.collate([sample]))
    return emb.float().cpu().numpy()


def search_main(argv: Sequence[str] | None = None) -> int:
    """``anchorbind search INDEX --<modality> QUERY [-k 10] [--model DIR] [--json]``."""
    flags = _query_flags()
    example = next((f'--{name} "a dog barking"' for name, metavar in flags if metavar == "STRING"),
                   f"--{flags[0][0]} x.jpg")
    parser = argparse.ArgumentParser(
        prog="anchorbind search", allow_abbrev=False,
        description="Embed one query of any modality of the model and print the nearest items of an index "
                    "(of any modality: emergent retrieval).",
        epilog=f"example: anchorbind search INDEX {example} -k 5",
    )
    parser.add_argument("index", type=Path, help="an index directory written by anchorbind index")
    group = parser.add_mutually_exclusive_group(required=True)
    for name, metavar in flags:
        what = "the query itself" if metavar == "STRING" else "a file"
        group.add_argument(f"--{name}", dest=f"query__{name}", metavar=metavar, help=f"query with {name} ({what})")
    group.add_argument("--modality", help="query modality (with --input), e.g. a plugin without its own flag")
    parser.add_argument("--input", help="the query input for --modality: a path, or the string for a plugin "
                                        "that encodes natural language")
    parser.add_argument("-k", type=int, default=10, help="number of results (default: %(default)s)")
    parser.add_argument("--model", type=Path, help="the model to embed the query with (default: the one the "
                                                   "index's store was embedded with)")
    parser.add_argument("--nprobe", type=int, help="ivf: lists probed (default: stored with the index)")
    parser.add_argument("--ef-search", type=int, help="hnsw: candidate list size (default: stored with the index)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)

    if args.modality is not None:
        if args.input is None:
            raise ConfigError("--modality needs --input PATH_OR_STRING (the query)")
        modality, source = args.modality, args.input
    else:
        if args.input is not None:
            raise ConfigError("--input goes with --modality M")
        modality, source = next((name, getattr(args, f"query__{name}")) for name, _ in flags
                                if getattr(args, f"query__{name}") is not None)
    _check_positive("-k", args.k)

    index = load_index(args.index)
    index.set_search_params(nprobe=args.nprobe, ef_search=args.ef_search)
    model = _load_model(args.model if args.model is not None else index.meta.get("model"), given=args.model is not None)
    if model.embed_dim != index.dim:
        raise IndexFileError(f"{args.index}: the index holds {index.dim}-dim {index.modality} embeddings but the model "
                             f"{str(args.model or index.meta.get('model'))!r} embeds into {model.embed_dim} dims")
    query = embed_query(model, modality, source)
    results = index.search(query, args.k)[0]
    if args.json:
        print(json.dumps({
            "query": {"modality": modality, "input": str(source)},
            "index": str(args.index), "indexed_modality": index.modality, "k": args.k,
            "results": [{"rank": r, "key": key, "score": round(score, 6)}
                        for r, (key, score) in enumerate(results, 1)],
        }, indent=2, ensure_ascii=False))
    else:
        print(f"top {len(results)} {index.modality} item(s) of {args.index} for the {modality} query {source!r}:")
        for rank, (key, score) in enumerate(results, 1):
            print(f"{rank:>4}  {score:+.4f}  {key if isinstance(key, str) else json.dumps(key)}")
    return 0
