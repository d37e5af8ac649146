"""The study's statistics: Student-t distribution and paired differences against SciPy."""

from __future__ import annotations

import math

import pytest

from faceaux.study.stats import paired_difference, student_t_cdf, student_t_quantile

stats = pytest.importorskip("scipy.stats", reason="the reference values come from SciPy (dev)")


@pytest.mark.parametrize("df", [1, 2, 3, 4, 5, 9, 30])
@pytest.mark.parametrize("t", [-7.5, -2.0, -0.3, 0.0, 0.8, 2.776, 40.0])
def test_cdf_matches_scipy(df: int, t: float) -> None:
    assert student_t_cdf(t, df) == pytest.approx(stats.t.cdf(t, df), abs=1e-12)


@pytest.mark.parametrize("df", [1, 2, 4, 7, 29])
@pytest.mark.parametrize("p", [0.025, 0.5, 0.9, 0.975, 0.999])
def test_quantile_matches_scipy(df: int, p: float) -> None:
    assert student_t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), abs=1e-8)


def test_paired_difference_is_the_t_interval_of_the_differences() -> None:
    arm = [0.81, 0.79, 0.86, 0.84, 0.80]
    base = [0.78, 0.80, 0.81, 0.80, 0.77]
    d = [a - b for a, b in zip(arm, base, strict=True)]
    result = paired_difference(arm, base)
    interval = stats.t.interval(0.95, len(d) - 1, loc=sum(d) / 5, scale=stats.sem(d))
    assert result["mean"] == pytest.approx(sum(d) / 5)
    assert (result["low"], result["high"]) == pytest.approx(interval, abs=1e-10)
    assert result["excludes_zero"] == (interval[0] > 0 or interval[1] < 0)


def test_paired_difference_edge_cases() -> None:
    one = paired_difference([0.5], [0.4])
    assert one["n"] == 1
    assert math.isinf(one["high"])
    assert not one["excludes_zero"]
    same = paired_difference([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])
    assert same["mean"] == 0.0
    assert not same["excludes_zero"]
    with pytest.raises(ValueError, match="one value per seed"):
        paired_difference([0.1, 0.2], [0.1])
    with pytest.raises(ValueError, match="finite"):
        paired_difference([float("nan"), 0.2], [0.1, 0.2])
    with pytest.raises(ValueError, match="df"):
        student_t_cdf(1.0, 0)
    with pytest.raises(ValueError, match="p: "):
        student_t_quantile(1.0, 3)
