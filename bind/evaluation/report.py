"""``anchorbind report RUN_DIR``: ``report.md`` with tables and PNG figures from ``metrics.json``.

Run ``anchorbind eval`` first; the report reads its ``metrics.json``, the stored embeddings and
the run's ``train_log.csv``, so it needs no model and reruns in seconds. Figures go to
``RUN_DIR/figures/`` and are linked relative to the report.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Mapping, Sequence
from itertools import combinations
from pathlib import Path
from typing import Any

from anchorbind.errors import ConfigError
from anchorbind.evaluation import figures
from anchorbind.evaluation.evaluate import EMBEDDINGS_FILE, METRICS_FILE
from anchorbind.evaluation.extract import EmbeddingSet
from anchorbind.evaluation.schema import GROUP_ORDER
from anchorbind.metrics.significance import (
    compare_estimates,
    estimate,
    proportion_estimate,
    word_comparison,
    word_correlation,
)
from anchorbind.registry import ANCHOR_MODALITY, caption_modality, text_modalities

__all__ = ["main", "similarity_pairs", "write_report"]

MAX_SIMILARITY_PANELS = 4
PLUGIN_PAIR_KINDS = ("emergent", "direct")


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _count(value: Any) -> int | None:
    """Counts are stored as floats by some metrics; show them as integers."""
    return None if value is None else int(value)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _interval(ci: Sequence[float] | None) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "–"


def _p(value: float | None) -> str:
    """A p-value with two significant digits; tiny ones as ``<0.001`` (more digits claim nothing)."""
    if value is None:
        return "–"
    return "<0.001" if value < 0.001 else f"{value:.2g}"


def _index_cell(value: float | None, summary: Mapping[str, Any]) -> str:
    """``0.516 [0.422, 0.612]``: the index with its bootstrap interval, ``–`` when undefined."""
    if value is None:
        return "–"
    ci = summary.get("index_ci95")
    return f"{value:.3f} {_interval(ci)}" if ci else f"{value:.3f}"


def _index_estimate(summary: Mapping[str, Any]) -> dict[str, Any]:
    """A run's index as an estimate: one training seed, spread from the bootstrap over evaluation samples."""
    return estimate(summary.get("index"), sem=summary.get("index_std"), n=1, unit="seed",
                    ci95=summary.get("index_ci95"))


def _recall_estimate(rate: float | None, queries: int | None) -> dict[str, Any]:
    """A recall over ``queries`` independent queries (one training seed): Wilson interval."""
    if rate is None or not queries:
        return estimate(None, sem=None, n=int(queries or 0), unit="queries")
    return proportion_estimate(rate, int(queries), unit="queries")


def _short_verdict(a: Mapping[str, Any], b: Mapping[str, Any], label_a: str, label_b: str) -> str:
    """``emergent < direct (p=0.003, n=200 vs 200 queries)`` or ``no significant difference (…)``, for a cell."""
    result = compare_estimates(a, b)
    counts = f"n={a.get('n')} vs {b.get('n')} {a.get('unit', '')}".rstrip()
    if result["verdict"] in (">", "<"):
        return f"{label_a} {result['verdict']} {label_b} (p={result['p_value']:.2g}, {counts})"
    if result["verdict"] == "~":
        return f"no significant difference (p={result['p_value']:.2g}, {counts})"
    return f"not tested ({result['reason']})"


class _Figures:
    """Writes figures into ``run_dir/figures`` and returns markdown links relative to the report."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.dir = run_dir / "figures"
        self.dir.mkdir(exist_ok=True)

    def path(self, name: str) -> Path:
        return self.dir / name

    def link(self, title: str, path: Path | None) -> str:
        return f"![{title}]({path.relative_to(self.run_dir).as_posix()})\n" if path else ""


def _headline(m: dict[str, Any], run_name: str) -> list[str]:
    retrieval = m["retrieval"]
    rows = []
    for kind in ("trained", "emergent"):
        for pair, b in sorted(retrieval.items()):
            if b["kind"] == kind:
                rows.append([kind, pair, b.get("category/R@1"), b.get("instance/R@1"), b.get("chance/category/R@1")])
    for pair, b in sorted(m.get("emergent_vs_direct", {}).items()):
        rows.append([f"direct ({Path(b['baseline']).name})", pair, b.get("direct/category/R@1"),
                     b.get("direct/instance/R@1"), b.get("chance/category/R@1")])
    parts = ["## Headline\n", "### Retrieval: trained vs emergent vs direct\n",
             _table(["kind", "pair", "category R@1", "instance R@1", "chance category R@1"], rows)]
    if m.get("emergent_vs_direct"):
        rows = []
        for p, b in sorted(m["emergent_vs_direct"].items()):
            level = "category" if "emergent/category/R@1" in b else "instance"
            emergent, direct = _emergent_direct_estimates(m, p, b, level)
            rows.append([p, level, b.get(f"ratio/{level}/R@1"), b.get(f"ratio_above_chance/{level}/R@1"),
                         _short_verdict(emergent, direct, "emergent", "direct")])
        parts.append(_table(["pair", "level", "emergent ÷ direct (R@1)", "(emergent − chance) ÷ (direct − chance)",
                             "emergent vs direct R@1 (two-proportion test)"], rows))
    summaries = {run_name: m.get("visiocentrism", {}).get("summary", {})}
    summaries.update({Path(r).name: b.get("visiocentrism_summary", {}) for r, b in m.get("compare", {}).items()})
    indices = {run_name: m.get("visiocentrism", {}).get("index", {})}
    indices.update({Path(r).name: b.get("visiocentrism_index", {}) for r, b in m.get("compare", {}).items()})
    modalities = list(m["modalities"])
    header = ["modality", "zero-shot acc@1", "gap to image (centroid distance)", "true-pair cosine with image"]
    header += [f"visiocentrism index, 95% CI ({run})" for run in indices]
    rows = []
    for name in modalities:
        zero_shot = m.get("zero_shot", {}).get(name, {})
        gap = m.get("gap", {}).get(f"image-{name}", {})
        rows.append([name, zero_shot.get("acc@1"), gap.get("centroid_distance"), gap.get("mean_pair_cosine"),
                     *(_index_cell(idx.get(name), summaries.get(run, {}).get(name, {}))
                       for run, idx in indices.items())])
    parts += ["### Per modality\n", _table(header, rows)]
    return parts


def similarity_pairs(modalities: Sequence[str], retrieval: Mapping[str, Mapping[str, Any]],
                     max_panels: int = MAX_SIMILARITY_PANELS) -> list[tuple[str, str]]:
    """The (row, column) modality pairs of the centroid-similarity figure, derived from the run.

    Plugin pairs (emergent or direct: what binding to the anchor bridges) come first, then every
    anchor pair (the plugins' trained pairs), at most ``max_panels`` in all: the plugin pairs get
    the panels the anchor pairs leave, at least one. A modality that ``encodes_text`` is the row
    of its pairs and its plugin pairs come first (retrieval by caption is the use case); ties
    keep the run's order of modalities.
    """
    present = [name for name in modalities if name != ANCHOR_MODALITY]
    captions = text_modalities(present)
    order = {name: (name not in captions, i) for i, name in enumerate(present)}
    kinds = {tuple(pair.split("->")): block.get("kind") for pair, block in retrieval.items()}
    plugin_pairs = []
    for a, b in combinations(sorted(present, key=order.__getitem__), 2):
        if kinds.get((a, b)) in PLUGIN_PAIR_KINDS or kinds.get((b, a)) in PLUGIN_PAIR_KINDS:
            plugin_pairs.append((a, b))
    anchor_pairs = [(ANCHOR_MODALITY, name) for name in present] if ANCHOR_MODALITY in modalities else []
    keep = max(1, max_panels - len(anchor_pairs))
    return (plugin_pairs[:keep] + anchor_pairs)[:max_panels]


def _retrieval(m: dict[str, Any], figs: _Figures, emb: EmbeddingSet) -> list[str]:
    rows = [[pair, b["kind"], b["num_pairs"], b.get("instance/R@1"), b.get("instance/R@5"), b.get("instance/R@10"),
             b.get("instance/median_rank"), b.get("instance/mAP"), b.get("category/R@1"), b.get("category/R@5"),
             b.get("category/mAP"), b.get("chance/category/R@1")]
            for pair, b in sorted(m["retrieval"].items(), key=lambda kv: (kv[1]["kind"], kv[0]))]
    direct = {p: r for base in m.get("baselines", {}).values() for p, r in base["retrieval"].items()
              if r["kind"] == "direct"}
    parts = ["## Retrieval\n",
             "`trained`: a plugin bound to the anchor (image); `emergent`: two plugins never paired in training; "
             "`direct`: a pair trained directly (baseline). Instance: the true match is the same sample; category: "
             f"any gallery item with the query's `{m.get('label_attribute', 'category')}`.\n",
             _table(["pair", "kind", "N", "inst R@1", "inst R@5", "inst R@10", "inst median rank", "inst mAP",
                     "cat R@1", "cat R@5", "cat mAP", "chance cat R@1"], rows),
             figs.link("retrieval", figures.retrieval_bars(m["retrieval"], figs.path("retrieval.png"), direct))]
    for base, block in m.get("baselines", {}).items():
        rows = [[pair, b["kind"], b.get("instance/R@1"), b.get("category/R@1"), b.get("chance/category/R@1")]
                for pair, b in sorted(block["retrieval"].items())]
        parts += [f"### Baseline `{Path(base).name}`\n",
                  _table(["pair", "kind", "inst R@1", "cat R@1", "chance cat R@1"], rows)]
    if m.get("emergent_vs_direct"):
        rows = [[p, b.get("emergent/category/R@1"), b.get("direct/category/R@1"), b.get("chance/category/R@1"),
                 b.get("ratio/category/R@1"), b.get("emergent/instance/R@1"), b.get("direct/instance/R@1"),
                 b.get("chance/instance/R@1"), b.get("ratio/instance/R@1")]
                for p, b in sorted(m["emergent_vs_direct"].items())]
        parts += ["### Emergent vs direct\n", _table(
            ["pair", "emergent cat R@1", "direct cat R@1", "chance cat R@1", "ratio", "emergent inst R@1",
             "direct inst R@1", "chance inst R@1", "ratio"], rows), _emergent_vs_direct_words(m)]
    pairs = similarity_pairs(emb.modalities, m["retrieval"])
    parts.append(figs.link("category centroid similarity", figures.similarity_matrices(
        emb, pairs, figs.path("similarity.png"), label_attribute=m.get("label_attribute", "category"))))
    return parts


def _emergent_direct_estimates(m: Mapping[str, Any], pair: str, block: Mapping[str, Any],
                               level: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Emergent (this run) and direct (its baseline) R@1 of ``pair`` as estimates over their queries."""
    ours = m.get("retrieval", {}).get(pair, {})
    theirs = m.get("baselines", {}).get(block.get("baseline"), {}).get("retrieval", {}).get(pair, {})
    return (_recall_estimate(block.get(f"emergent/{level}/R@1"), ours.get("num_pairs")),
            _recall_estimate(block.get(f"direct/{level}/R@1"), theirs.get("num_pairs")))


def _emergent_vs_direct_words(m: Mapping[str, Any]) -> str:
    """One worded comparison per pair and level: a claim only where a two-proportion test makes it."""
    lines = []
    for pair, block in sorted(m["emergent_vs_direct"].items()):
        for level in ("category", "instance"):
            if f"emergent/{level}/R@1" in block:
                emergent, direct = _emergent_direct_estimates(m, pair, block, level)
                lines.append(f"- {pair}, {level} R@1: " + word_comparison("emergent", emergent, "direct", direct))
    return ("Each R@1 with its Wilson 95 % interval over the evaluated queries; one training seed per run, so "
            "the interval covers the evaluation sample, not training variation. A direction is claimed only "
            "where a two-sided two-proportion test gives p < 0.05 (unpaired, which is conservative for the "
            "shared queries).\n\n" + "\n".join(lines) + "\n") if lines else ""


def _zero_shot_arithmetic_groupwise(m: dict[str, Any]) -> list[str]:
    parts = []
    if m.get("zero_shot"):
        rows = [[name, b.get("acc@1"), b.get("acc@3"), b.get("chance"), _count(b.get("num_samples")),
                 " / ".join(b["templates"])] for name, b in m["zero_shot"].items() if name != "classes"]
        caption = caption_modality(m.get("modalities", {}))
        through = f"through `{caption}` prompts" if caption else "through prompts"
        parts += [f"## Zero-shot classification {through}\n",
                  f"Classes: {', '.join(m['zero_shot']['classes'])}. Prompts per class are ensembled.\n",
                  _table(["modality", "acc@1", "acc@3", "chance", "N", "templates"], rows)]
    if m.get("arithmetic"):
        rows = []
        for plugin, per_attribute in m["arithmetic"].items():
            for attribute, b in per_attribute.items():
                for query in (f"image+{plugin}", "image", plugin):
                    rows.append([f"image + {plugin}", attribute, query, b.get(f"{query}/acc@1"),
                                 b.get(f"{query}/acc@5"), b.get(f"{query}/acc@10"), _count(b.get("num_queries"))])
        parts += ["## Embedding arithmetic\n",
                  "Query: image of scene *i* + the plugin input of scene *j* (another category). Hit: a retrieved "
                  "image with *j*'s category **and** *i*'s value of the visual-only attribute. The single-modality "
                  "queries use the same targets.\n",
                  _table(["composition", "attribute kept from the image", "query", "acc@1", "acc@5", "acc@10",
                          "queries"], rows)]
    groupwise = m.get("groupwise", {})
    if groupwise.get("stacked"):
        s = groupwise["stacked"]
        parts += ["## Group-wise structure\n",
                  f"All modalities stacked ({', '.join(s['modalities'])}): k-means with as many clusters as classes.\n",
                  _table(["V-measure vs class", "V-measure vs modality", "homogeneity", "completeness",
                          "kNN accuracy (leave-one-out)"],
                         [[s.get("kmeans/v_measure"), s.get("kmeans/v_measure_vs_modality"),
                           s.get("kmeans/homogeneity"), s.get("kmeans/completeness"), s.get("knn/accuracy")]])]
    if groupwise.get("linear_probe"):
        parts += ["Linear probe of the label per modality (stratified cross-validation):\n",
                  _table(["modality", "accuracy", "± std", "balanced accuracy", "chance", "folds"],
                         [[n, b.get("accuracy"), b.get("accuracy_std"), b.get("balanced_accuracy"), b.get("chance"),
                           _count(b.get("num_folds"))] for n, b in groupwise["linear_probe"].items()])]
    return parts


def _gap(m: dict[str, Any], figs: _Figures, emb: EmbeddingSet) -> list[str]:
    if not m.get("gap"):
        return []
    rows = [[pair, b.get("centroid_distance"), b.get("centroid_angle_deg"), b.get("mean_pair_cosine"),
             b.get("inter_similarity"), *(b.get(f"intra_similarity/{n}") for n in pair.split("-")),
             b.get("linear_separability"), *(b.get(f"uniformity/{n}") for n in pair.split("-"))]
            for pair, b in m["gap"].items()]
    parts = ["## Modality gap\n",
             "Centroid distance ‖mean(a) − mean(b)‖ and angle; true-pair cosine; mean cosine across (inter) and "
             "within (intra) modalities; linear separability (held-out accuracy telling the two apart; 0.5 = "
             "inseparable); uniformity (Wang & Isola, lower = more uniform).\n",
             _table(["pair a-b", "centroid distance", "angle (°)", "true-pair cosine", "inter sim", "intra sim a",
                     "intra sim b", "separability", "uniformity a", "uniformity b"], rows),
             figs.link("gap projection", figures.gap_projection(emb, figs.path("gap_projection.png")))]
    if m.get("gap_shift"):
        parts += ["### Shift along the gap\n",
                  "Each modality moved by λ · (target centroid − own centroid), re-normalised, and retrieval "
                  "measured again.\n",
                  figs.link("gap shift", figures.shift_curves(m["gap_shift"], figs.path("gap_shift.png")))]
    return parts


def _alignment(m: dict[str, Any], figs: _Figures) -> list[str]:
    parts = []
    if m.get("alignment"):
        rows = []
        for name, block in m["alignment"].items():
            for comparison, scores in block.items():
                if isinstance(scores, dict):
                    rows.append([name, comparison, scores.get("mutual_knn@10"), scores.get("cka_linear"),
                                 scores.get("cka_linear_unbiased"), scores.get("cknna@10")])
        parts += ["## Alignment\n", _table(["modality / pair", "comparison", "mutual kNN@10", "CKA", "CKA (unbiased)",
                                            "CKNNA@10"], rows)]
    sweep = m.get("alignment_across_checkpoints", {})
    if sweep.get("points"):
        rows = [[group, measure, c.get("r"), c.get("p"), c.get("num_points"),
                 word_correlation(c.get("r"), c.get("p"), c.get("num_points")) if c.get("r") is not None else "",
                 c.get("undefined", "")]
                for group, block in sweep["pearson"].items() for measure, c in block.items()]
        parts += ["### Does alignment predict retrieval? (across checkpoints)\n",
                  f"Each checkpoint embeds the first {sweep['max_samples']} evaluation samples; Pearson r between "
                  "the alignment measure and plugin→image instance R@1, over all (checkpoint, plugin) points and "
                  "per plugin.\n",
                  "A correlation is claimed only where p < 0.05; points of one plugin share a training run, so "
                  "they are not independent and p is optimistic.\n",
                  _table(["points", "alignment measure", "Pearson r", "p", "n", "reading", "undefined because"],
                         rows),
                  figs.link("alignment vs retrieval", figures.alignment_scatter(
                      sweep["points"], figs.path("alignment_vs_retrieval.png")))]
    return parts


def _visiocentrism(m: dict[str, Any], figs: _Figures, run_name: str) -> list[str]:
    vis = m.get("visiocentrism", {})
    if not vis.get("probes"):
        return []
    rule = vis.get("index_rule", {})
    alpha, min_lift = rule.get("alpha", 0.05), rule.get("min_native_lift", 0.05)
    parts = ["## Visiocentrism\n",
             "Cross-validated linear-probe accuracy of each ground-truth attribute the modality's input carries, "
             "from the native trunk features and from the bound embedding. Relative loss = share of the native "
             "features' above-chance accuracy that the bound embedding lost (clipped to [−1, 1]). An attribute "
             f"enters only when its native lift over chance is significant (one-sided binomial test of the "
             f"out-of-fold native predictions against the majority rate, p < {alpha}) and at least {min_lift}; "
             "otherwise its relative loss would divide by noise, and it is listed as excluded with the reason. "
             "Index = mean relative loss on non-visual attributes − mean on shared ones (> 0: binding to the image "
             "space loses non-visual information more). 95 % CI: bootstrap over the evaluated samples "
             f"({rule.get('bootstrap_replicates', 'n/a')} replicates, seed {rule.get('seed', 'n/a')}); each run is "
             "one training seed, so the interval does not include training variation.\n"]
    runs = {run_name: (m.get("uses_mitigation"), vis.get("summary", {}))}
    runs.update({Path(r).name: (b.get("uses_mitigation"), b.get("visiocentrism_summary", {}))
                 for r, b in m.get("compare", {}).items()})
    rows = []
    for run, (mitigated, summary) in runs.items():
        for name, s in summary.items():
            rows.append([run, mitigated, name, s.get("index"), _interval(s.get("index_ci95")),
                         _count(s.get("num_folds")),
                         *(s.get(f"mean_relative_loss/{g}") for g in GROUP_ORDER),
                         *(s.get(f"mean_bound_lift/{g}") for g in GROUP_ORDER)])
    parts += [_table(["run", "mitigation", "modality", "index", "index 95% CI", "folds",
                      *(f"rel. loss {g}" for g in GROUP_ORDER), *(f"bound − chance {g}" for g in GROUP_ORDER)], rows),
              _index_comparisons(run_name, runs),
              figs.link("visiocentrism index", figures.visiocentrism_bars(
                  {run: {n: s.get("index") for n, s in summary.items()} for run, (_, summary) in runs.items()},
                  figs.path("visiocentrism.png")))]
    for name, probes in vis["probes"].items():
        parts += _modality_probes(name, probes, vis.get("summary", {}).get(name, {}), vis["index"].get(name), figs)
    for pair, block in vis.get("retrieval_by_attribute", {}).items():
        if block["kind"] not in ("emergent", "direct"):
            continue
        rows = [[a, b["group"], b["R@1"], b["chance_R@1"], b["R@1"] - b["chance_R@1"], b["num_queries"]]
                for a, b in block["attributes"].items()]
        rows += [[f"**mean {g}**", g, b["mean_R@1"], None, b["mean_lift_over_chance"], None]
                 for g, b in block["by_group"].items()]
        parts += [f"### {pair} ({block['kind']}) retrieval by attribute\n",
                  "Relevant = gallery items with the query's value of the attribute; only queries whose input "
                  "carries it (a caption carries what it states).\n",
                  _table(["attribute", "group", "R@1", "chance", "lift", "queries"], rows)]
    return parts


def _index_comparisons(run_name: str, runs: Mapping[str, tuple[Any, Mapping[str, Any]]]) -> str:
    """This run's index against each ``--compare`` run's, worded only as strongly as a test allows."""
    ours = runs[run_name][1]
    lines = []
    for other, (mitigated, summary) in runs.items():
        if other == run_name:
            continue
        for name in ours:
            if name in summary:
                mine_label = f"{run_name} (mitigation {_fmt(runs[run_name][0])})"
                other_label = f"{other} (mitigation {_fmt(mitigated)})"
                lines.append(f"- {name}: " + word_comparison(mine_label, _index_estimate(ours[name]),
                                                             other_label, _index_estimate(summary[name])))
    if not lines:
        return ""
    return ("Index of this run against each compared run (two-sided test on the bootstrap standard errors, "
            "p < 0.05; n = training seeds per run):\n\n" + "\n".join(lines) + "\n")


def _modality_probes(name: str, probes: Mapping[str, Mapping[str, Any]], summary: Mapping[str, Any],
                     index: float | None, figs: _Figures) -> list[str]:
    """One modality's probe table, what was excluded from its index and why, and its figure."""
    probed = {a: p for a, p in probes.items() if "native" in p}
    if not probed:
        return []
    rows = [[a, p["group"], p["num_samples"], p["native"], _p(p.get("native_p_value")), p["bound"], p["chance"],
             p.get("relative_loss"), _interval(p.get("relative_loss_ci95")),
             "yes" if p.get("relative_loss") is not None else "no"]
            for a, p in probed.items()]
    not_carried = [a for a, p in probes.items() if not p.get("carried", True)]
    excluded = {a: p["excluded"] for a, p in probed.items() if p.get("excluded")}
    lines = [f"Excluded from the index: {', '.join(f'{a} ({why})' for a, why in excluded.items())}.\n"
             if excluded else "",
             f"Index undefined: {summary['index_undefined_reason']}.\n" if summary.get("index_undefined_reason")
             else "",
             f"Not carried by {name} inputs (not probed): {', '.join(not_carried)}.\n" if not_carried else ""]
    return [f"### {name} (index {_index_cell(index, summary)})\n",
            _table(["attribute", "group", "N", "native", "p (native > chance)", "bound", "chance", "relative loss",
                    "rel. loss 95% CI", "in index"], rows),
            *lines,
            figs.link(f"probes {name}", figures.probe_bars(probed, f"What survives binding: {name}",
                                                           figs.path(f"probes_{name}.png")))]


def write_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.md`` and ``run_dir/figures/*.png``; returns the report's path.

    Raises:
        ConfigError: ``run_dir`` has no ``metrics.json`` or no stored embeddings (run ``anchorbind eval``).
    """
    run_dir = Path(run_dir)
    metrics_path, embeddings_path = run_dir / METRICS_FILE, run_dir / EMBEDDINGS_FILE
    for path in (metrics_path, embeddings_path):
        if not path.is_file():
            raise ConfigError(f"{run_dir}: no {path.name}; run `anchorbind eval {run_dir} --shards ...` first")
    m = json.loads(metrics_path.read_text())
    emb = EmbeddingSet.load(embeddings_path)
    figs = _Figures(run_dir)
    run_name = run_dir.resolve().name
    errors = m["decode_errors"]
    parts = [f"# AnchorBind report: `{run_name}`\n",
             f"Run `{m['run']}`, evaluated on `{m['shards']}`: {m['num_samples']} samples "
             f"({', '.join(f'{k}: {v}' for k, v in m['modalities'].items())}); "
             f"{errors['count']} decode errors"
             + (f" ({', '.join(f'{k}: {v}' for k, v in errors['by_modality'].items())})" if errors["count"] else "")
             + f". Anchor: `{m['anchor_identity']}`. Visiocentrism mitigation: {_fmt(m.get('uses_mitigation'))}"
             f" (native loss weights {m.get('native_loss_weights', {})}).\n"]
    if m.get("ignored_modalities"):
        parts.append(f"Left out (the model has no plugin for them): {m['ignored_modalities']}.\n")
    parts += _headline(m, run_name)
    parts += _retrieval(m, figs, emb)
    parts += _zero_shot_arithmetic_groupwise(m)
    parts += _gap(m, figs, emb)
    parts += _alignment(m, figs)
    parts += _visiocentrism(m, figs, run_name)
    parts += ["## Training\n", figs.link("training curves", figures.training_curves(
        run_dir / "train_log.csv", figs.path("training_curves.png"))) or "No `train_log.csv` in the run.\n"]
    if m.get("notes"):
        parts += ["## Notes\n", "\n".join(f"- {note}" for note in m["notes"]) + "\n"]
    report = run_dir / "report.md"
    tmp = report.with_name(".report.md.tmp")
    tmp.write_text("\n".join(p for p in parts if p) + "\n")
    os.replace(tmp, report)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="anchorbind report", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a run evaluated with `anchorbind eval`")
    args = parser.parse_args(argv)
    print(write_report(args.run_dir))  # errors: the CLI convention (anchorbind.errors.run_command)
    return 0
