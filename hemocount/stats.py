"""Binomial confidence intervals for WBC differential percentages."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=4096)  # a run asks for the same (k, n) for many slides
def binomial_ci(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) confidence interval for a proportion ``k / n``.

    Exact rather than Wilson/normal because differentials are often small counts with
    proportions near 0 (basophils) where the normal approximation undercovers.

    Args:
        k: Successes (cells of one subtype).
        n: Trials (classified WBCs); ``n == 0`` gives ``(0.0, 1.0)``.
        level: Confidence level.

    Returns:
        ``(low, high)`` as proportions in [0, 1].
    """
    # betaincinv is what scipy.stats.beta.ppf evaluates (same values), without the second it takes
    # to import scipy.stats.
    from scipy.special import betaincinv

    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n (got k={k}, n={n})")
    if n == 0:
        return 0.0, 1.0
    alpha = 1.0 - level
    low = 0.0 if k == 0 else float(betaincinv(k, n - k + 1, alpha / 2))
    high = 1.0 if k == n else float(betaincinv(k + 1, n - k, 1 - alpha / 2))
    return low, high
