"""Bootstrap confidence intervals for evaluation figures, in one place.

Why: a validation or test set has a few dozen instructions, so one phrasing more or less moves a
score by several points; a figure without its interval invites reading noise as progress. Every
adaptability and accuracy figure of ``edge-eval`` (and the cards and bench reports that copy
them) carries a 95 % interval from this module.

Method: a seeded percentile bootstrap over the evaluated items (instructions for the MPC task,
examples for the decision task), **stratified** by group (category or decision instruction):
each resample draws, with replacement, as many items from every group as it has, so every
group keeps its weight in a mean of group means. A paired statistic (the model's and the
oracle's score on the same instruction, for the fraction of the oracle) resamples rows, keeping
the pair together. The interval is the (2.5 %, 97.5 %) percentile pair of the resampled
statistic; the seed makes it reproducible.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np

__all__ = ["BootstrapConfig", "DEFAULT_BOOTSTRAP", "stratified_bootstrap", "mean_ci", "mean_of_means_ci",
           "ratio_of_mean_of_means_ci", "format_with_ci"]


@dataclass(frozen=True)
class BootstrapConfig:
    resamples: int = 10_000
    level: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.resamples, bool) or not isinstance(self.resamples, int) or self.resamples < 100:
            raise ValueError(f"BootstrapConfig.resamples must be an int >= 100, got {self.resamples!r}")
        if not 0.5 <= self.level < 1.0:
            raise ValueError(f"BootstrapConfig.level must be in [0.5, 1), got {self.level}")

    def describe(self) -> dict:
        """What a report states next to its intervals."""
        return {"method": "percentile bootstrap over evaluated items, stratified by group", **asdict(self)}


DEFAULT_BOOTSTRAP = BootstrapConfig()

Statistic = Callable[[list[np.ndarray]], np.ndarray]


def stratified_bootstrap(strata: Sequence[np.ndarray], statistic: Statistic,
                         config: BootstrapConfig = DEFAULT_BOOTSTRAP) -> tuple[float, float]:
    """The percentile interval of ``statistic`` under resampling within each stratum.

    ``strata``: one array per group, items along axis 0 (a 2-D array keeps each row together).
    ``statistic``: takes the resampled strata, each with a leading resample axis (shape
    ``(resamples, n_i, ...)``), and returns one value per resample."""
    arrays = [np.asarray(a, dtype=float) for a in strata]
    if not arrays or any(len(a) == 0 for a in arrays):
        raise ValueError("stratified_bootstrap: every stratum needs at least one item")
    rng = np.random.default_rng(config.seed)
    resampled = [a[rng.integers(0, len(a), size=(config.resamples, len(a)))] for a in arrays]
    values = np.asarray(statistic(resampled), dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    tail = 50.0 * (1.0 - config.level)
    lo, hi = np.percentile(values, [tail, 100.0 - tail])
    return float(lo), float(hi)


def mean_ci(values: Sequence[float], config: BootstrapConfig = DEFAULT_BOOTSTRAP) -> tuple[float, float]:
    """Interval of the plain mean of ``values`` (one group)."""
    return stratified_bootstrap([np.asarray(values, dtype=float)], lambda s: s[0].mean(axis=1), config)


def mean_of_means_ci(groups: Sequence[Sequence[float]], config: BootstrapConfig = DEFAULT_BOOTSTRAP
                     ) -> tuple[float, float]:
    """Interval of the mean of the group means (every group weighs the same, as in "overall")."""
    return stratified_bootstrap([np.asarray(g, dtype=float) for g in groups],
                                lambda s: np.mean([x.mean(axis=1) for x in s], axis=0), config)


def ratio_of_mean_of_means_ci(groups: Sequence[Sequence[tuple[float, float]]],
                              config: BootstrapConfig = DEFAULT_BOOTSTRAP) -> tuple[float, float]:
    """Interval of mean-of-means(a) / mean-of-means(b) for paired rows (a, b); resamples whose
    denominator is not positive are dropped (the ratio is undefined there)."""
    def ratio(s: list[np.ndarray]) -> np.ndarray:
        num = np.mean([x[..., 0].mean(axis=1) for x in s], axis=0)
        den = np.mean([x[..., 1].mean(axis=1) for x in s], axis=0)
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return stratified_bootstrap([np.asarray(g, dtype=float).reshape(-1, 2) for g in groups], ratio, config)


def format_with_ci(value: float, ci: Sequence[float] | None, fmt: str = "{:+.3f}") -> str:
    """``value [lo, hi]`` as reports, cards and bench tables print it (just the value when a report
    has no interval, e.g. one written before intervals existed)."""
    if ci is None:
        return fmt.format(value)
    return f"{fmt.format(value)} [{fmt.format(ci[0])}, {fmt.format(ci[1])}]"
