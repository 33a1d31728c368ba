"""End-to-end emergent search on the demo's test split: embed -> index -> search, as a user runs it.

    anchorbind demo                      # writes demo_out/world/{train,test} and demo_out/bind/model
    python bench/bench_search.py --model demo_out/bind/model --shards demo_out/world/test

1. ``anchorbind embed MODEL --modality audio --shards SHARDS --out WORK/store`` (one row per test
   clip, keyed by the sample key);
2. ``anchorbind index WORK/store --out WORK/index`` (``--type`` flat, ivf or hnsw);
3. for every category found in the shards' JSON attributes, the query ``"a {category}"`` (the
   first one through ``anchorbind search WORK/index --modality text --input ... --json``, the rest
   through the same library calls with the model loaded once; the two must agree).

Prints JSON: per category the top-1 key, its category, its score and whether it matches, the
precision of the top 10, plus the fraction of categories whose top-1 clip is of that category
(the "Done when" of issue 16: most categories), chance (1 / number of categories) and the time
of each stage. ``--indexed-modality`` and ``--query-modality`` change the pair (the query must be
a plugin that encodes natural language, since it is the prompt itself).
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path


def shard_categories(shards: Path, attribute: str) -> dict[str, str]:
    """``{sample key: attributes[attribute]}`` of every sample of the ``.tar`` shards under ``shards``."""
    tars = sorted(shards.glob("*.tar")) if shards.is_dir() else [shards]
    found: dict[str, str] = {}
    for tar_path in tars:
        if tar_path.name.startswith("."):
            continue
        with tarfile.open(tar_path) as tar:
            for member in tar:
                name = Path(member.name).name
                if not member.isfile() or not name.endswith(".json"):
                    continue
                key = str(Path(member.name).parent / name.split(".", 1)[0]).removeprefix("./")
                file = tar.extractfile(member)
                record = json.loads(file.read()) if file else {}
                value = (record.get("attributes") or {}).get(attribute)
                if value is not None:
                    found[key] = str(value)
    if not found:
        raise SystemExit(f"no sample of {shards} has a JSON attribute {attribute!r}")
    return found


def anchorbind(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("anchorbind")
    command = [exe] if exe else [sys.executable, "-m", "anchorbind"]
    done = subprocess.run([*command, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"anchorbind {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return done


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("demo_out/bind/model"))
    parser.add_argument("--shards", type=Path, default=Path("demo_out/world/test"))
    parser.add_argument("--indexed-modality", default="audio", help="what is embedded and indexed")
    parser.add_argument("--query-modality", default="text", help="a plugin that encodes natural language")
    parser.add_argument("--attribute", default="category", help="the JSON attribute the queries name")
    parser.add_argument("--prompt", default="a {}", help="query template, {} = the attribute's value")
    parser.add_argument("--type", default="flat", choices=("flat", "ivf", "hnsw"))
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--work", type=Path, help="keep the store and index here (default: a temporary folder)")
    args = parser.parse_args()

    labels = shard_categories(args.shards, args.attribute)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_search."))
    store, index = work / "store", work / "index"
    seconds: dict[str, float] = {}
    try:
        start = time.perf_counter()
        anchorbind("embed", str(args.model), "--modality", args.indexed_modality, "--shards", str(args.shards),
                   "--out", str(store), "--overwrite", "--no-progress", "--num-workers", "1")
        seconds["embed"] = time.perf_counter() - start

        start = time.perf_counter()
        built = anchorbind("index", str(store), "--out", str(index), "--type", args.type)
        seconds["index"] = time.perf_counter() - start
        meta = json.loads((index / "index.json").read_text())

        # one `anchorbind search` as a user runs it; the other queries through the same library calls
        # (load_index + embed_query) with the model loaded once, not once per query
        from anchorbind import BindModel
        from anchorbind.search import embed_query, load_index

        values = sorted(set(labels.values()))
        start = time.perf_counter()
        done = anchorbind("search", str(index), "--modality", args.query_modality, "--input",
                          args.prompt.format(values[0]), "-k", str(args.k), "--json")
        seconds["search_cli_one_query"] = time.perf_counter() - start
        cli_results = json.loads(done.stdout)["results"]

        start = time.perf_counter()
        loaded = load_index(index)
        model = BindModel.from_pretrained(meta["model"]).eval()
        per_category: dict[str, dict] = {}
        for value in values:
            query = args.prompt.format(value)
            hits = loaded.search(embed_query(model, args.query_modality, query), args.k)[0]
            results = [{"rank": r, "key": key, "score": round(score, 6)} for r, (key, score) in enumerate(hits, 1)]
            if value == values[0]:
                assert [r["key"] for r in results] == [r["key"] for r in cli_results], (results, cli_results)
            top = results[0]
            per_category[value] = {
                "query": query,
                "top1_key": top["key"],
                "top1_category": labels.get(top["key"]),
                "top1_score": top["score"],
                "correct": labels.get(top["key"]) == value,
                f"precision@{args.k}": sum(labels.get(r["key"]) == value for r in results) / len(results),
            }
        seconds[f"search_{len(values)}_queries_in_process"] = time.perf_counter() - start
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)

    counts = collections.Counter(labels.values())
    correct = sum(row["correct"] for row in per_category.values())
    print(json.dumps({
        "model": str(args.model),
        "shards": str(args.shards),
        "query_modality": args.query_modality,
        "indexed_modality": args.indexed_modality,
        "index": {k: meta[k] for k in ("type", "params", "count", "dim") if k in meta}
                 | ({"recall@10": meta["recall@10"]} if "recall@10" in meta else {}),
        "index_output": built.stdout.strip(),
        "categories": len(per_category),
        "top1_correct": correct,
        "fraction_correct": round(correct / len(per_category), 4),
        f"mean_precision@{args.k}": round(sum(r[f"precision@{args.k}"] for r in per_category.values())
                                          / len(per_category), 4),
        "chance_top1": round(1 / len(counts), 4),  # a random clip is of the queried category
        "per_category": per_category,
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
    }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
