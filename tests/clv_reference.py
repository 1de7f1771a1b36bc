"""What the CLV tests check against: the CDNOW data (tests/data/cdnow, from the lifetimes wheel, MIT)
and the BG/NBD formulas written with SciPy, independently of seg_spark's Spark expressions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.special import hyp2f1

CDNOW = Path(__file__).resolve().parent / "data" / "cdnow"


def expected_purchases_and_p_alive(params: dict[str, float], t: float, x, t_x, age):
    """Fader, Hardie and Lee (2005): expected purchases in the next ``t`` (eq. 10, SciPy's 2F1) and P(alive)."""
    r, alpha, a, b = (params[n] for n in ("r", "alpha", "a", "b"))
    hyp = hyp2f1(r + x, b + x, a + b + x - 1, t / (alpha + age + t))
    bracket = 1 - ((alpha + age) / (alpha + age + t)) ** (r + x) * hyp
    odds = np.where(x > 0, a / (b + np.maximum(x, 1) - 1) * ((alpha + age) / (alpha + t_x)) ** (r + x), 0.0)
    return (a + b + x - 1) / (a - 1) * bracket / (1 + odds), 1 / (1 + odds)
