"""Hand-computed checks of the crate threshold and the DNS mask rule (reference §2)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from olmp.errors import OlmpError
from olmp.masks import update_mask
from olmp.thresholds import LayerStats, layer_stats, threshold

# --- layer_stats / threshold ------------------------------------------------------


def test_layer_stats_counts_weights_and_biases() -> None:
    weights = np.array([[1.0, -2.0], [3.0, -4.0]], dtype=np.float32)
    bias = np.array([-5.0, 0.0], dtype=np.float32)
    stats = layer_stats(weights, bias)
    # |w| = 1 2 3 4 5 0: mean 2.5, population variance (2.25+.25+.25+2.25+6.25+6.25)/6
    assert stats.mu == 2.5
    assert stats.sigma == pytest.approx(math.sqrt(17.5 / 6), rel=1e-15)
    assert isinstance(stats.mu, float) and isinstance(stats.sigma, float)


def test_layer_stats_without_bias() -> None:
    stats = layer_stats(np.array([1.0, -2.0, 3.0, -4.0]), None)
    assert stats == LayerStats(mu=2.5, sigma=math.sqrt(1.25))


def test_layer_stats_rejects_an_empty_layer() -> None:
    with pytest.raises(OlmpError, match="no parameters"):
        layer_stats(np.zeros((0, 3)), None)


def test_threshold_is_mu_plus_crate_sigma() -> None:
    stats = LayerStats(mu=2.5, sigma=2.0)
    assert threshold(stats, 0.5) == 3.5
    assert threshold(stats, 0.0) == 2.5


def test_threshold_clamps_at_zero_for_a_negative_crate() -> None:
    assert threshold(LayerStats(mu=2.5, sigma=2.0), -2.0) == 0.0  # 2.5 - 4 < 0


# --- update_mask: hysteresis ---------------------------------------------------------


def _band_values(T: float) -> np.ndarray:
    """|w| at exactly 0.9T, just above it, between, exactly 1.1T, just above it."""
    lo, hi = 0.9 * T, 1.1 * T
    return np.array([lo, np.nextafter(lo, np.inf), (lo + hi) / 2, hi, np.nextafter(hi, np.inf)])


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_kept_weights_are_pruned_only_at_or_below_0_9_T(sign: float) -> None:
    values = sign * _band_values(10.0)
    new = update_mask(values, np.ones(5, dtype=np.float32), 10.0)
    assert new.tolist() == [0, 1, 1, 1, 1]


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_pruned_weights_are_spliced_only_above_1_1_T(sign: float) -> None:
    values = sign * _band_values(10.0)
    new = update_mask(values, np.zeros(5, dtype=np.float32), 10.0)
    assert new.tolist() == [0, 0, 0, 0, 1]


def test_mixed_previous_masks_and_shape() -> None:
    values = np.array([[0.5, 0.95], [0.95, 1.5]])  # T = 1: prune <= .9, splice > 1.1
    mask = np.array([[1, 1], [0, 0]], dtype=np.float32)
    new = update_mask(values, mask, 1.0)
    assert new.dtype == np.float32 and new.shape == (2, 2)
    assert new.tolist() == [[0, 1], [0, 1]]
    assert mask.tolist() == [[1, 1], [0, 0]]  # the input mask is untouched


def test_threshold_zero_prunes_exact_zeros_only() -> None:
    values = np.array([0.0, -0.0, 1e-30, -2.0])
    for prev in (0.0, 1.0):
        new = update_mask(values, np.full(4, prev, dtype=np.float32), 0.0)
        assert new.tolist() == [0, 0, 1, 1]


def test_float32_weights_compare_like_dnss_double_arithmetic() -> None:
    # DNS compares |w| (float) with 0.9*T in double. float32(0.9*0.1) rounds UP,
    # so that weight lies above 0.9T and must stay kept; a naive float32
    # comparison would prune it.
    T = 0.1
    w = np.float32(0.9 * T)
    assert float(w) > 0.9 * T
    new = update_mask(np.array([w, np.nextafter(w, np.float32(0))]), np.ones(2, np.float32), T)
    assert new.tolist() == [1, 0]


def test_out_in_place_and_precomputed_abs() -> None:
    values = np.array([-3.0, 0.5, 2.0, -1.0], dtype=np.float32)
    mask = np.array([1, 1, 0, 0], dtype=np.float32)
    expected = update_mask(values, mask, 1.0)
    returned = update_mask(values, mask, 1.0, out=mask, absw=np.abs(values))
    assert returned is mask
    assert mask.tolist() == expected.tolist() == [1, 0, 1, 0]

    out = np.full(4, 7.0, dtype=np.float32)
    assert update_mask(values, np.ones(4, np.float32), 1.0, out=out) is out
    assert out.tolist() == [1, 0, 1, 1]


def test_shape_mismatch_is_an_olmp_error() -> None:
    with pytest.raises(OlmpError, match="shape"):
        update_mask(np.zeros(3), np.zeros(4, np.float32), 1.0)
