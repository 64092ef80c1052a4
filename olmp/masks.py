"""Dynamic Network Surgery's mask rule with hysteresis (reference §2).

A kept weight is pruned when |w| <= 0.9 T; a pruned weight is restored (spliced)
when |w| > 1.1 T; in between it keeps its previous mask value. The dead band
stops weights that hover around T from flipping on every update.

Masks are float32 arrays of 0/1 with the blob's shape, because Caffe multiplies
them into the weights. The update runs up to ~10^5 times per run on LeNet-size
blobs, so it is a handful of vectorised passes and can reuse a precomputed |w|.
"""

from __future__ import annotations

import numpy as np

from olmp.errors import OlmpError

PRUNE_FACTOR = 0.9
SPLICE_FACTOR = 1.1


def _floor_in_dtype(bound: float, dtype: np.dtype) -> np.generic:
    """Largest value of `dtype` that is <= `bound` (a float64).

    For any x representable in `dtype`: x <= bound  <=>  x <= floor, and
    x > bound  <=>  x > floor. So comparing float32 blobs against the floor gives
    exactly the float64 comparison DNS's C++ does, without upcasting the blob.
    """
    if not np.issubdtype(dtype, np.floating):
        dtype = np.dtype(np.float64)
    value = dtype.type(bound)
    if float(value) > bound:
        value = np.nextafter(value, dtype.type(-np.inf))
    return value


def keep(absw: np.ndarray, live: np.ndarray, T: float, out: np.ndarray) -> np.ndarray:
    """The rule itself on |w| and the previous mask (bool or 0/1), into the bool array ``out``.

    Three vectorised passes: the candidate loop calls it once per blob and candidate.
    """
    T = float(T)
    prune_at = _floor_in_dtype(PRUNE_FACTOR * T, absw.dtype)
    splice_above = _floor_in_dtype(SPLICE_FACTOR * T, absw.dtype)
    # new = (kept and not pruned) or spliced
    np.greater(absw, prune_at, out=out)
    np.logical_and(out, live, out=out)
    np.logical_or(out, np.greater(absw, splice_above), out=out)
    return out


def update_mask(
    values: np.ndarray,
    mask: np.ndarray,
    T: float,
    out: np.ndarray | None = None,
    absw: np.ndarray | None = None,
) -> np.ndarray:
    """Apply one DNS mask update for threshold T and return the new mask.

    `out` receives the result (it may be `mask` itself, for an in-place update);
    by default a new float32 array is returned. `absw` is |values|, precomputed by
    a caller that evaluates many thresholds on the same weights.
    """
    if absw is None:
        absw = np.abs(values)
    if absw.shape != mask.shape:
        raise OlmpError(f"update_mask: weights shape {absw.shape} != mask shape {mask.shape}")
    if out is None:
        out = np.empty(mask.shape, dtype=np.float32)
    elif out.shape != mask.shape:
        raise OlmpError(f"update_mask: out shape {out.shape} != mask shape {mask.shape}")
    np.copyto(out, keep(absw, mask, T, np.empty(mask.shape, dtype=bool)), casting="unsafe")
    return out
