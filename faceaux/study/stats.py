"""Paired comparisons over seeds: mean difference with a Student-t 95 % confidence interval.

Each arm of an experiment runs with the same seeds; seed s gives every arm the same data and
the same initialisation stream, so the per-seed differences arm − baseline are paired. The
interval is the t-interval of their mean, ``d̄ ± t_{0.975, n−1} · s_d / √n``, which assumes
the differences are roughly normal; with 5 seeds a bootstrap interval would be too narrow.

The Student-t distribution function is computed in closed form for integer degrees of freedom
(the finite sums of Abramowitz & Stegun 26.7.3–26.7.4) and inverted by bisection, so no
statistics package is needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["paired_difference", "student_t_cdf", "student_t_quantile"]


def student_t_cdf(t: float, df: int) -> float:
    """P(T ≤ t) for Student's t with ``df`` (a positive int) degrees of freedom.

    Uses A = P(|T| ≤ |t|) from θ = atan(|t| / √df): for odd df,
    A = (2/π)(θ + sin θ (cos θ + cos³θ·2/3 + … )), for even df,
    A = sin θ (1 + cos²θ/2 + cos⁴θ·(1·3)/(2·4) + …), each with (df − 1) // 2 or df / 2 terms.

    Shape:
        Scalars in, a float out.

    Examples:
        >>> round(student_t_cdf(0.0, 3), 12), round(student_t_cdf(12.706204736, 1), 6)
        (0.5, 0.975)
    """
    if isinstance(df, bool) or not isinstance(df, int) or df < 1:
        raise ValueError(f"df: expected a positive int, received {df!r}")
    if math.isnan(t):
        raise ValueError("t: expected a number, received nan")
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    theta = math.atan(abs(t) / math.sqrt(df))
    sin, cos2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2 == 1:
        total, term = 0.0, math.cos(theta)
        for k in range(1, (df - 1) // 2 + 1):
            total += term
            term *= cos2 * (2 * k) / (2 * k + 1)
        inside = 2 / math.pi * (theta + sin * total) if df > 1 else 2 / math.pi * theta
    else:
        total, term = 0.0, 1.0
        for k in range(1, df // 2 + 1):
            total += term
            term *= cos2 * (2 * k - 1) / (2 * k)
        inside = sin * total
    return 0.5 + math.copysign(0.5 * inside, t)


def student_t_quantile(p: float, df: int) -> float:
    """The t with P(T ≤ t) = p, by bisection of :func:`student_t_cdf` (to 1e-12).

    Shape:
        Scalars in, a float out.

    Examples:
        >>> round(student_t_quantile(0.975, 4), 4), round(student_t_quantile(0.975, 30), 4)
        (2.7764, 2.0423)
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"p: expected a probability in (0, 1), received {p!r}")
    low, high = -1.0, 1.0
    while student_t_cdf(low, df) > p:
        low *= 2
    while student_t_cdf(high, df) < p:
        high *= 2
    for _ in range(200):
        middle = 0.5 * (low + high)
        if student_t_cdf(middle, df) < p:
            low = middle
        else:
            high = middle
        if high - low < 1e-12:
            break
    return 0.5 * (low + high)


def paired_difference(
    arm: Sequence[float], baseline: Sequence[float], confidence: float = 0.95
) -> dict[str, float | bool | int]:
    """Mean of the per-seed differences ``arm − baseline`` with its t-interval.

    Args:
        arm: the metric of the arm, one value per seed.
        baseline: the baseline's, same seeds in the same order.
        confidence: coverage of the two-sided interval.

    Returns:
        ``{"n", "mean", "std", "low", "high", "excludes_zero"}``; with one seed the interval is
        infinite.

    Shape:
        Two sequences of n floats in, a dict of scalars out.

    Examples:
        >>> d = paired_difference([0.8, 0.82, 0.85], [0.7, 0.75, 0.74])
        >>> round(d["mean"], 4), d["excludes_zero"]
        (0.0933, True)
    """
    if len(arm) != len(baseline):
        raise ValueError(
            f"arm, baseline: expected one value per seed each, received {len(arm)} and "
            f"{len(baseline)}"
        )
    if not arm:
        raise ValueError("arm: expected at least one seed")
    diffs = [float(a) - float(b) for a, b in zip(arm, baseline, strict=True)]
    if not all(math.isfinite(d) for d in diffs):
        raise ValueError(f"arm, baseline: expected finite values, received differences {diffs}")
    n = len(diffs)
    mean = sum(diffs) / n
    if n == 1:
        return {
            "n": 1,
            "mean": mean,
            "std": float("nan"),
            "low": -math.inf,
            "high": math.inf,
            "excludes_zero": False,
        }
    std = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = student_t_quantile(0.5 + confidence / 2, n - 1) * std / math.sqrt(n)
    low, high = mean - half, mean + half
    return {
        "n": n,
        "mean": mean,
        "std": std,
        "low": low,
        "high": high,
        "excludes_zero": bool(low > 0 or high < 0),
    }
