"""Small statistics for honest comparisons: lift over chance, spread over seeds, worded verdicts.

A single evaluation number hides how much it would move with another training seed or another
evaluation sample; a report that says "A beats B" on two such numbers claims more than it knows.
Everything here turns numbers into *estimates* (a mean with its standard error, confidence
interval and the count it rests on) and words a comparison only as strongly as a test allows.

An estimate is a plain dict so it goes into ``metrics.json`` as is::

    {"mean": float | None, "std": float | None, "sem": float | None, "n": int, "unit": str,
     "ci95": [lo, hi] | None, "df": float | None}

``sem`` is the standard error of ``mean``; ``df`` the degrees of freedom of its Student-t
distribution (None: normal). Functions here are pure: no files, no models, no randomness.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from scipy import stats

__all__ = ["ALPHA", "aggregate_over_seeds", "compare_estimates", "describe_estimate", "estimate",
           "lift_p_value", "proportion_estimate", "word_comparison", "word_correlation"]

ALPHA = 0.05
"""Two-sided significance level of comparisons and one-sided level of lifts over chance."""


def lift_p_value(correct: int, total: int, chance: float) -> float:
    """One-sided binomial p-value that ``correct`` of ``total`` predictions beat the ``chance`` rate.

    Used on a probe's pooled out-of-fold predictions: under the null the probe is no better than
    always naming the majority class, so each prediction is right with probability ``chance``.
    Pooling folds treats the predictions as independent, which they nearly are (every row is
    predicted once, by a probe that never saw it).
    """
    if total <= 0:
        raise ValueError(f"total must be positive, got {total}")
    if not 0 <= correct <= total:
        raise ValueError(f"correct must lie in 0..{total}, got {correct}")
    if not 0.0 <= chance <= 1.0:
        raise ValueError(f"chance must lie in [0, 1], got {chance}")
    if chance >= 1.0:
        return 1.0
    return float(stats.binomtest(int(correct), int(total), float(chance), alternative="greater").pvalue)


def estimate(mean: float | None, *, sem: float | None, n: int, unit: str, std: float | None = None,
             ci95: tuple[float, float] | list[float] | None = None, df: float | None = None) -> dict[str, Any]:
    """An estimate dict (see the module docstring); ``ci95`` defaults to ``mean ± t·sem``."""
    if ci95 is None and mean is not None and sem is not None:
        half = _critical(df) * sem
        ci95 = (mean - half, mean + half)
    return {"mean": None if mean is None else float(mean), "std": None if std is None else float(std),
            "sem": None if sem is None else float(sem), "n": int(n), "unit": unit,
            "ci95": None if ci95 is None else [float(ci95[0]), float(ci95[1])],
            "df": None if df is None else float(df)}


def aggregate_over_seeds(values: Iterable[float | None], *, unit: str = "seeds") -> dict[str, Any]:
    """Mean, sample standard deviation, n and a Student-t 95 % interval of one number over runs.

    Undefined values (None, NaN: e.g. an index with no qualifying attribute in that run) are
    left out and counted in ``num_undefined``, so an average never silently mixes in a
    placeholder. With one value there is no spread: ``std``, ``sem`` and ``ci95`` are None, and
    :func:`compare_estimates` refuses to call a difference.
    """
    given = list(values)
    kept = np.array([float(v) for v in given if v is not None and math.isfinite(float(v))], dtype=np.float64)
    n = len(kept)
    if n == 0:
        out = estimate(None, sem=None, n=0, unit=unit)
    elif n == 1:
        out = estimate(float(kept[0]), sem=None, n=1, unit=unit)
    else:
        std = float(np.std(kept, ddof=1))
        out = estimate(float(np.mean(kept)), sem=std / math.sqrt(n), n=n, unit=unit, std=std, df=n - 1)
    out["num_undefined"] = len(given) - n
    return out


def proportion_estimate(rate: float, n: int, *, unit: str = "queries") -> dict[str, Any]:
    """A rate over ``n`` independent 0/1 outcomes (a recall over queries, an accuracy over samples).

    ``ci95`` is Wilson's score interval, which stays inside [0, 1] and is sensible at 0 and 1;
    ``sem`` is the Agresti-Caffo standard error (one success and one failure added), so that two
    perfect scores still have a non-zero spread to compare. It covers the evaluation sample only,
    not the training seed.
    """
    if n <= 0:
        return estimate(None, sem=None, n=0, unit=unit)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must lie in [0, 1], got {rate}")
    z = _critical(None)
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    adjusted = (rate * n + 1) / (n + 2)
    sem = math.sqrt(adjusted * (1 - adjusted) / (n + 2))
    return estimate(rate, sem=sem, n=n, unit=unit, std=math.sqrt(rate * (1 - rate)),
                    ci95=(max(0.0, centre - half), min(1.0, centre + half)))


def compare_estimates(a: Mapping[str, Any], b: Mapping[str, Any], *, alpha: float = ALPHA) -> dict[str, Any]:
    """Welch test of ``a.mean - b.mean`` from two estimates' standard errors.

    Returns ``{difference, p_value, verdict, reason}``; ``verdict`` is ``">"`` or ``"<"`` only when
    the two-sided p-value is below ``alpha``, ``"~"`` when it is not, and ``"untested"`` when either
    side is undefined or has no spread (one seed and nothing else to measure it by).
    """
    if a.get("mean") is None or b.get("mean") is None:
        return {"difference": None, "p_value": None, "verdict": "untested", "reason": "a value is undefined"}
    difference = float(a["mean"]) - float(b["mean"])
    if a.get("sem") is None or b.get("sem") is None:
        return {"difference": difference, "p_value": None, "verdict": "untested",
                "reason": f"no spread to test against (n={a.get('n')} vs {b.get('n')})"}
    se = math.hypot(float(a["sem"]), float(b["sem"]))
    if se == 0.0:
        return {"difference": difference, "p_value": None, "verdict": "untested", "reason": "both spreads are zero"}
    p = float(2 * stats.t.sf(abs(difference) / se, _welch_df(a, b)))
    verdict = "~" if p >= alpha else (">" if difference > 0 else "<")
    return {"difference": difference, "p_value": p, "verdict": verdict, "reason": None}


def describe_estimate(e: Mapping[str, Any], fmt: str = ".3f") -> str:
    """``0.420 [0.210, 0.600] (n=3 seeds)``; ``–`` for an undefined mean, no interval without spread."""
    if e.get("mean") is None:
        return f"– (n={e.get('n', 0)} {e.get('unit', '')})".replace(" )", ")")
    interval = f" [{e['ci95'][0]:{fmt}}, {e['ci95'][1]:{fmt}}]" if e.get("ci95") else ""
    return f"{e['mean']:{fmt}}{interval} (n={e.get('n')} {e.get('unit', '')})".replace(" )", ")")


def word_comparison(label_a: str, a: Mapping[str, Any], label_b: str, b: Mapping[str, Any], *,
                    alpha: float = ALPHA, fmt: str = ".3f") -> str:
    """One sentence that claims ``A > B`` (or ``<``) only when :func:`compare_estimates` says so.

    Every sentence carries both values with their intervals and counts, so a reader sees what the
    verdict rests on.
    """
    result = compare_estimates(a, b, alpha=alpha)
    values = f"{label_a} {describe_estimate(a, fmt)} vs {label_b} {describe_estimate(b, fmt)}"
    if result["verdict"] in (">", "<"):
        return f"{label_a} {result['verdict']} {label_b} (p={result['p_value']:.2g}): {values}"
    if result["verdict"] == "~":
        return f"no significant difference (p={result['p_value']:.2g}): {values}"
    return f"not tested, {result['reason']}: {values}"


def word_correlation(r: float | None, p: float | None, n: int | None, *, alpha: float = ALPHA) -> str:
    """``correlated (r=0.81, p=0.004, n=9)`` only when ``p < alpha``; otherwise says there is no evidence."""
    if r is None or p is None:
        return f"undefined (n={n})"
    sign = "positively" if r > 0 else "negatively"
    if p < alpha:
        return f"{sign} correlated (r={r:.2f}, p={p:.2g}, n={n})"
    return f"no significant correlation (r={r:.2f}, p={p:.2g}, n={n})"


def _critical(df: float | None, confidence: float = 0.95) -> float:
    """Two-sided critical value of Student's t with ``df`` degrees of freedom (normal for None)."""
    q = 0.5 + confidence / 2
    return float(stats.norm.ppf(q) if df is None else stats.t.ppf(q, df))


def _welch_df(a: Mapping[str, Any], b: Mapping[str, Any]) -> float:
    """Welch-Satterthwaite degrees of freedom; a side without ``df`` (normal) counts as infinite."""
    va, vb = float(a["sem"]) ** 2, float(b["sem"]) ** 2
    da, db = a.get("df"), b.get("df")
    if da is None and db is None:
        return math.inf
    terms = [v * v / d for v, d in ((va, da), (vb, db)) if d is not None and d > 0]
    return (va + vb) ** 2 / sum(terms) if terms and sum(terms) > 0 else math.inf
