"""``anchorbind report RUN_DIR``: ``report.md`` with tables and PNG figures from ``metrics.json``.

Run ``anchorbind eval`` first; the report reads its ``metrics.json``, the stored embeddings and
the run's ``train_log.csv``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bind import figures
from bind.errors import ConfigError
from bind.evaluate import EMBEDDINGS_FILE
from bind.extract import EmbeddingSet

__all__ = ["main", "write_report"]


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _figure(title: str, path: Path | None, run_dir: Path) -> str:
    return f"![{title}]({path.relative_to(run_dir)})\n" if path else ""


def _retrieval(m: dict[str, Any]) -> list[str]:
    rows = [[pair, b["kind"], b["num_pairs"], b["instance/R@1"], b["instance/R@5"], b["instance/mAP"],
             b.get("category/R@1"), b.get("category/mAP"), b.get("chance/category/R@1")]
            for pair, b in sorted(m["retrieval"].items(), key=lambda kv: (kv[1]["kind"], kv[0]))]
    parts = ["## Retrieval\n",
             "`trained`: bound to the anchor; `emergent`: never paired in training; `direct`: a baseline.\n",
             _table(["pair", "kind", "N", "inst R@1", "inst R@5", "inst mAP", "cat R@1", "cat mAP", "chance cat R@1"],
                    rows)]
    if m.get("emergent_vs_direct"):
        rows = [[p, b["emergent/category/R@1"], b["direct/category/R@1"], b["ratio/category/R@1"],
                 b["emergent/instance/R@1"], b["direct/instance/R@1"], b["chance/category/R@1"]]
                for p, b in m["emergent_vs_direct"].items()]
        parts += ["### Emergent vs direct\n", _table(
            ["pair", "emergent cat R@1", "direct cat R@1", "ratio", "emergent inst R@1", "direct inst R@1",
             "chance cat R@1"], rows)]
    return parts


def _alignment(m: dict[str, Any], run_dir: Path, fig_dir: Path) -> list[str]:
    parts = []
    if m.get("alignment"):
        def pick(block: dict[str, float], prefix: str) -> float | None:
            return next((v for k, v in block.items() if k.startswith(prefix)), None)

        rows = []
        for name, b in m["alignment"].items():
            feats, embs = b["features_vs_anchor_features"], b["embeddings_vs_anchor_embeddings"]
            rows.append([name, pick(feats, "mutual_knn"), feats.get("cka_linear"), pick(embs, "mutual_knn"),
                         embs.get("cka_linear"), embs.get("cka_linear_unbiased"), pick(embs, "cknna")])
        parts += ["## Alignment with the anchor\n", _table(
            ["modality", "features mKNN", "features CKA", "embeddings mKNN", "embeddings CKA", "embeddings CKA (unb.)",
             "embeddings CKNNA"], rows)]
    sweep = m.get("alignment_across_checkpoints", {})
    if sweep.get("points"):
        parts += ["### Does alignment predict retrieval? (across checkpoints)\n", _table(
            ["measure", "Pearson r", "p"], [[k, v.get("r"), v.get("p")] for k, v in sweep.items()
                                            if k.startswith("pearson")]),
            _figure("alignment vs retrieval", figures.alignment_scatter(
                sweep["points"], fig_dir / "alignment_vs_retrieval.png"), run_dir)]
    return parts


def _visiocentrism(m: dict[str, Any], run_dir: Path, fig_dir: Path) -> list[str]:
    vis = m.get("visiocentrism", {})
    if not vis.get("probes"):
        return []
    parts = ["## Visiocentrism\n",
             "Linear-probe accuracy of each ground-truth attribute from the bound embedding and from the native "
             "trunk features; relative loss = share of the above-chance information lost by binding. Index = mean "
             "relative loss on non-visual attributes minus that on shared ones.\n"]
    indices = {run_dir.name: vis["index"]}
    indices.update({Path(r).name: b["visiocentrism_index"] for r, b in m.get("compare", {}).items()})
    modalities = sorted({k for v in indices.values() for k in v})
    parts += [_table(["run", *modalities], [[run, *(idx.get(mod) for mod in modalities)]
                                           for run, idx in indices.items()]),
              _figure("visiocentrism index", figures.visiocentrism_bars(indices, fig_dir / "visiocentrism.png"),
                      run_dir)]
    for name, probes in vis["probes"].items():
        probes = {a: p for a, p in probes.items() if "relative_loss" in p}
        rows = [[a, p["group"], p["native"], p["bound"], p["chance"], p["relative_loss"]]
                for a, p in sorted(probes.items(), key=lambda kv: kv[1]["group"])]
        parts += [f"### {name} (index {_fmt(vis['index'].get(name))})\n",
                  _table(["attribute", "group", "native", "bound", "majority", "relative loss"], rows),
                  _figure(f"probes {name}", figures.probe_bars(probes, name, fig_dir / f"probes_{name}.png"), run_dir)]
    for pair, block in vis.get("retrieval_by_attribute", {}).items():
        rows = [[a, b["group"], b["R@1"], b["chance_R@1"], b["num_queries"]]
                for a, b in block.items() if isinstance(b, dict)]
        parts += [f"### {pair} ({block['kind']}) retrieval by attribute\n",
                  "Relevant = gallery items sharing the query's value of the attribute.\n",
                  _table(["attribute", "group", "R@1", "chance", "queries"], rows)]
    return parts


def write_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.md`` and ``run_dir/figures/*.png``; returns the report's path."""
    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        raise ConfigError(f"{run_dir}: no metrics.json; run `anchorbind eval {run_dir} --shards ...` first")
    m = json.loads(metrics_path.read_text())
    emb = EmbeddingSet.load(run_dir / EMBEDDINGS_FILE)
    fig_dir = run_dir / "figures"
    fig_dir.mkdir(exist_ok=True)
    parts = [f"# AnchorBind report: `{run_dir}`\n",
             f"Evaluated on `{m['shards']}`: {m['num_samples']} samples "
             f"({', '.join(f'{k}: {v}' for k, v in m['modalities'].items())}); "
             f"{m['decode_errors']['count']} decode errors. Anchor: `{m['anchor_identity']}`.\n",
             "## Headline\n", _table(["measure", "value"], [[k, v] for k, v in m["headline"].items()])]
    parts += _retrieval(m)
    pairs = [(a, b) for a, b in (("text", "audio"), ("image", "audio"), ("text", "image"))
             if a in emb.modalities and b in emb.modalities]
    if pairs and all(meta for meta in emb.meta):
        parts.append(_figure("category similarity", figures.similarity_matrices(
            emb, pairs, fig_dir / "similarity.png"), run_dir))
    if m.get("zero_shot"):
        rows = [[name, b["acc@1"], b["acc@3"], b["chance"]] for name, b in m["zero_shot"].items() if name != "classes"]
        parts += ["## Zero-shot classification through text prompts\n",
                  _table(["modality", "acc@1", "acc@3", "chance"], rows)]
    if m.get("arithmetic"):
        a = m["arithmetic"]
        parts += ["## Embedding arithmetic (image + audio → image)\n", a["rule"] + "\n",
                  _table(["query", "acc@1", "acc@5", "acc@10"],
                         [[q, a.get(f"{q}/acc@1"), a.get(f"{q}/acc@5"), a.get(f"{q}/acc@10")]
                          for q in ("image+audio", "image", "audio")])]
    if m.get("groupwise"):
        parts += ["## Group-wise structure (all modalities stacked)\n",
                  _table(["measure", "value"], [[k, v] for k, v in m["groupwise"].items()])]
    if m.get("gap"):
        rows = [[pair, b.get("centroid_distance"), b.get("centroid_angle"), b.get("mean_pair_cosine"),
                 b.get("mean_inter_similarity"), b.get("linear_separability")] for pair, b in m["gap"].items()]
        parts += ["## Modality gap\n", _table(["pair", "centroid distance", "centroid angle (deg)", "true-pair cosine",
                                               "inter similarity", "linear separability"], rows),
                  _figure("gap projection", figures.gap_projection(emb, fig_dir / "gap_projection.png"), run_dir)]
        if m.get("gap_shift"):
            parts.append(_figure("shift", figures.shift_curves(m["gap_shift"], fig_dir / "gap_shift.png"), run_dir))
    parts += _alignment(m, run_dir, fig_dir)
    parts += _visiocentrism(m, run_dir, fig_dir)
    parts += ["## Training\n", _figure("training curves", figures.training_curves(
        run_dir / "train_log.csv", fig_dir / "training_curves.png"), run_dir)]
    report = run_dir / "report.md"
    tmp = report.with_name(".report.md.tmp")
    tmp.write_text("\n".join(parts) + "\n")
    os.replace(tmp, report)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="anchorbind report", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args(argv)
    print(write_report(args.run_dir))
    return 0
