"""Issue 25 item 12: mean ± sample std, and the paired bootstrap interval over test segments.

Truths: numpy's / the statistics module's sample std; scikit-learn's metrics for the point estimates;
simulated paired samples with a known population difference for the interval's coverage.
"""

import statistics

import numpy as np
import pytest

from opendas_encoder.metrics import classification_metrics
from opendas_encoder.metrics.intervals import BOOTSTRAP_METRICS, mean_std, paired_segment_bootstrap

CLASSES = [f"c{i}" for i in range(6)]
BASE, NOVEL = CLASSES[:4], CLASSES[4:]


def test_mean_std_is_the_sample_std():
    values = [71.0, 72.5, 75.0, 69.0]
    mean, std = mean_std(values)
    assert mean == pytest.approx(statistics.mean(values))
    assert std == pytest.approx(statistics.stdev(values)) and std == pytest.approx(np.std(values, ddof=1))
    assert std != pytest.approx(np.std(values))  # not the population std (ddof=0) the tables printed before
    assert mean_std([1.0, None, float("nan"), 3.0]) == (2.0, pytest.approx(statistics.stdev([1.0, 3.0])))
    one = mean_std([4.0])
    assert one[0] == 4.0 and np.isnan(one[1])  # one seed: no spread to report
    assert all(np.isnan(mean_std([])))


def simulate(rng, n, p_method=0.7, p_reference=0.6, p_both=0.5):
    """n segments, true class uniform over 6; each method is right with its probability (right together with
    probability p_both: the predictions are paired), else it names one of the 5 other classes uniformly."""
    truth = rng.integers(0, 6, n)
    u = rng.random(n)
    method_right = (u < p_method)
    reference_right = (u < p_both) | ((u >= p_method) & (u < p_method + p_reference - p_both))
    other = lambda: (truth + rng.integers(1, 6, n)) % 6  # noqa: E731
    method = np.where(method_right, truth, other())
    reference = np.where(reference_right, truth, other())
    return tuple([CLASSES[i] for i in a] for a in (truth, method, reference))


def base_f1_population(p):
    """Weighted F1 (percent) over base-class segments for a method right with probability p (population):
    per base class c, P(t=c) = 1/4, P(p=c, t=c) = p/4, P(p=c | t base) = p/4 + (1-p) * (3/4) / 5."""
    predicted = p / 4 + (1 - p) * (3 / 4) / 5
    return 100 * 2 * (p / 4) / (1 / 4 + predicted)


def test_point_estimate_is_the_mean_over_seeds_of_scikit_learns_differences():
    rng = np.random.default_rng(0)
    groups = [simulate(rng, n) for n in (40, 55, 70)]
    got = paired_segment_bootstrap(groups, CLASSES, BASE, NOVEL, n_resamples=200)
    for m in BOOTSTRAP_METRICS:
        per_seed = [classification_metrics(t, a, BASE, NOVEL, CLASSES)[m] - classification_metrics(t, b, BASE, NOVEL,
                                                                                                    CLASSES)[m]
                    for t, a, b in groups]
        assert got[m]["mean"] == pytest.approx(np.mean(per_seed), abs=1e-9), m
        assert got[m]["low"] <= got[m]["mean"] <= got[m]["high"]
        assert got[m]["n"] == 165 and got[m]["seeds"] == 3
    same = paired_segment_bootstrap([(t, a, a) for t, a, _ in groups], CLASSES, BASE, NOVEL, n_resamples=200)
    assert all(same[m]["low"] == same[m]["mean"] == same[m]["high"] == 0.0 for m in BOOTSTRAP_METRICS)


def test_the_interval_covers_the_true_difference_95_percent_of_the_time():
    """200 simulated suites (3 seeds x 100 test segments, paired predictions) with known population differences:
    Acc +10 points, B-F1 +9.25 (base_f1_population). A 95 % interval must cover them in about 95 % of the
    suites; the interval over 3 seeds it replaces ([min d, max d] of the per-seed differences) covers ~75 %."""
    rng = np.random.default_rng(1)
    truth = {"acc": 10.0, "base_f1": base_f1_population(0.7) - base_f1_population(0.6)}
    covered = {m: 0 for m in truth}
    seed_range = 0
    trials = 200
    for k in range(trials):
        groups = [simulate(rng, 100) for _ in range(3)]
        r = paired_segment_bootstrap(groups, CLASSES, BASE, NOVEL, n_resamples=1000, seed=k)
        for m in truth:
            covered[m] += r[m]["low"] <= truth[m] <= r[m]["high"]
        d = [100 * (np.mean(np.asarray(t) == np.asarray(a)) - np.mean(np.asarray(t) == np.asarray(b)))
             for t, a, b in groups]
        seed_range += min(d) <= truth["acc"] <= max(d)
    for m in truth:
        assert 0.90 <= covered[m] / trials <= 0.99, (m, covered[m] / trials)
    assert seed_range / trials < 0.85  # the old interval over 3 seeds: far from 95 %
