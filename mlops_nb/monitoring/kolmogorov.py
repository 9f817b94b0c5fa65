"""Two-sample Kolmogorov-Smirnov p-values as ``scipy.stats.ks_2samp`` gives them (two-sided, method
'auto'), without importing ``scipy.stats``: its import (0.45-0.7 s) was most of an incremental monitor call.

``two_sample(d, n1, n2)``: up to ``EXACT_ROWS`` rows a side scipy's exact method, the same arithmetic: for
equal sizes its Horner-like sum (ported), else its compiled ``_compute_outer_prob_inside_method``, loaded
from scipy's own extension file (``scipy/stats/_stats_pythran``) without the package around it; when that
file cannot be loaded, or the exact computation fails as scipy's can, ``ks_2samp`` itself is called.
Larger samples: ``sf(round(m * n / (m + n)), d)``, the two-sided Kolmogorov distribution's survival
function ``P(D_n >= d)`` (``scipy.stats.kstwo.sf(d, n)``). For n > 140 this follows
scipy's own algorithm (``scipy/stats/_ksstats.py``, SciPy 1.17, BSD-3-Clause, after Simard and L'Ecuyer
2011): ``2 * smirnov(n, d)`` far in the tail, else one minus the CDF from the Durbin matrix (Marsaglia, Tsang
and Wang 2003) or the Pelz-Good expansion. For n <= 140 (a window of so few rows that its p-value is rough
anyway) scipy.stats itself is called. ``tests/test_drift.py`` checks it against scipy on a grid of n and d.
"""
from __future__ import annotations

import math
import sys

import numpy as np

EXACT_ROWS = 10_000  # ks_2samp's MAX_AUTO_N: up to this many rows a side its p-value is exact
SCIPY_BELOW = 141  # n below this: scipy.stats.kstwo (Pomeranz's recursion, not ported)
_E128 = 128
_EP128 = np.ldexp(np.longdouble(1), _E128)
_EM128 = np.ldexp(np.longdouble(1), -_E128)
_SQRT2PI = math.sqrt(2 * math.pi)
_SQRT3 = math.sqrt(3)
_PI2, _PI4, _PI6 = math.pi ** 2, math.pi ** 4, math.pi ** 6
_MIN_LOG = -708


def two_sample(d: float, n1: int, n2: int) -> tuple[float, float] | None:
    """(statistic, p-value) of ``ks_2samp`` for a statistic ``d`` of samples of n1 and n2 values (the exact
    method rounds d to a multiple of 1 / lcm(n1, n2), as scipy does); None when only ks_2samp itself can
    say (its exact method failed, or its compiled part could not be loaded)."""
    if max(n1, n2) > EXACT_ROWS:
        return d, asymptotic(d, n1, n2)
    g = math.gcd(n1, n2)
    lcm = (n1 // g) * n2
    h = int(np.round(d * lcm))
    d = h * 1.0 / lcm
    if h == 0:
        return d, 1.0
    p = None
    try:
        with np.errstate(invalid="raise", over="raise"):
            if n1 == n2:
                p = _prob_outside_square(n1, h)
            elif (outer := _outer_prob_inside()) is not None:
                p = float(outer(n1, n2, g, h))
    except (FloatingPointError, OverflowError):
        p = None
    if p is None or not 0 <= p <= 1:  # scipy warns, then falls back to its asymptotic p-value: let it
        return None
    return d, p


def asymptotic(d: float, n1: int, n2: int) -> float:
    """ks_2samp's asymptotic p-value (method 'asymp'): also the p-value of a statistic from sketches."""
    m, n = sorted([float(n1), float(n2)], reverse=True)
    return sf(round(m * n / (m + n)), d)


def _prob_outside_square(n: int, h: int) -> float:
    """P(D_{n,n} >= h / n): scipy's ``_compute_prob_outside_square``."""
    total = 0.0
    k = int(np.floor(n / h))
    while k >= 0:
        p1 = 1.0
        for j in range(h):
            p1 = (n - k * h - j) * p1 / (n + k * h + j + 1)
        total = p1 * (1.0 - total)
        k -= 1
    return 2 * total


_OUTER = []


def _outer_prob_inside():
    """scipy's compiled ``_compute_outer_prob_inside_method``, or None when it cannot be had cheaply."""
    if "scipy.stats" in sys.modules:
        from scipy.stats import _stats_py

        return getattr(_stats_py, "_compute_outer_prob_inside_method", None)
    if not _OUTER:
        _OUTER.append(_load_outer())
    return _OUTER[0]


def _load_outer():
    import importlib.util
    from pathlib import Path

    import scipy

    try:
        path = next((Path(scipy.__file__).parent / "stats").glob("_stats_pythran.*"))
        spec = importlib.util.spec_from_file_location("_stats_pythran", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module._compute_outer_prob_inside_method
    except Exception:  # another scipy layout: ks_2samp will be called instead
        return None


def sf(n: int, d: float) -> float:
    """P(D_n >= d) for the two-sided one-sample KS statistic of n points."""
    from scipy import special

    n = int(n)
    if n < SCIPY_BELOW:
        from scipy import stats

        return float(stats.kstwo.sf(d, n))
    if d >= 1.0:
        return 0.0
    if d <= 0.0:
        return 1.0
    t = n * d
    if t <= 1.0:  # Ruben-Gambino
        if t <= 0.5:
            return 1.0
        cdf = math.exp(_log_nfactorial_div_n_pow_n(n) + n * math.log(2 * t - 1))
        return _clip(1.0 - cdf)
    if t >= n - 1:  # Ruben-Gambino
        return _clip(2 * (1.0 - d) ** n)
    nxsquared = t * d
    if d >= 0.5 or nxsquared >= 2.2:
        return 0.0 if nxsquared >= 370.0 and d < 0.5 else _clip(2 * special.smirnov(n, d))
    if n <= 100000 and n * d ** 1.5 <= 1.4:
        cdf = _durbin(n, d)
    else:
        cdf = _pelz_good(n, d)
    return _clip(1.0 - cdf)


def _clip(p) -> float:
    return float(min(max(p, 0.0), 1.0))


def _log_nfactorial_div_n_pow_n(n: int) -> float:
    """log(n! / n^n) by Stirling's series, n log n taken out first (no cancellation)."""
    coeffs = [-2.955065359477124183e-2, 6.4102564102564102564e-3, -1.9175269175269175269e-3,
              8.4175084175084175084e-4, -5.952380952380952381e-4, 7.9365079365079365079e-4,
              -2.7777777777777777778e-3, 8.3333333333333333333e-2]
    rn = 1.0 / n
    return float(np.log(n) / 2 - n + np.log(2 * np.pi) / 2 + rn * np.polyval(coeffs, rn / n))


def _durbin(n: int, d: float) -> float:
    """P(D_n < d) by the Durbin matrix, Marsaglia-Tsang-Wang's scaled powers."""
    nd = n * d
    k = int(np.ceil(nd))
    h = k - nd
    m = 2 * k - 1
    H = np.zeros([m, m])
    intm = np.arange(1, m + 1)
    v = 1.0 - h ** intm
    w = np.empty(m)
    fac = 1.0
    for j in intm:
        w[j - 1] = fac
        fac /= j
        v[j - 1] *= fac
    v[-1] = (1.0 + (max(2 * h - 1.0, 0) ** m - 2 * h ** m)) * fac
    for i in range(1, m):
        H[i - 1:, i] = w[:m - i + 1]
    H[:, 0] = v
    H[-1, :] = np.flip(v, axis=0)
    power = np.eye(m)
    nn, expnt, h_expnt = n, 0, 0
    with np.errstate(over="ignore"):  # as in scipy: entries off the scaled one may overflow unused
        while nn > 0:
            if nn % 2:
                power = np.matmul(power, H)
                expnt += h_expnt
            H = np.matmul(H, H)
            h_expnt *= 2
            if np.abs(H[k - 1, k - 1]) > _EP128:
                H /= _EP128
                h_expnt += _E128
            nn //= 2
    p = power[k - 1, k - 1]
    for i in range(1, n + 1):  # times n! / n^n
        p = i * p / n
        if np.abs(p) < _EM128:
            p *= _EP128
            expnt -= _E128
    if expnt != 0:
        p = np.ldexp(p, expnt)
    return _clip(p)


def _pelz_good(n: int, x: float) -> float:
    """P(D_n < x) by the Pelz-Good expansion (Li-Chien and Korolyuk's, through Jacobi theta functions)."""
    z = np.sqrt(n) * x
    z2, z3, z4, z6 = z ** 2, z ** 3, z ** 4, z ** 6
    qlog = -_PI2 / 8 / z2
    if qlog < _MIN_LOG:
        return 0.0
    q = np.exp(qlog)
    k1a, k1b = -z2, _PI2 / 4
    k2a, k2b, k2c = 6 * z6 + 2 * z4, (2 * z4 - 5 * z2) * _PI2 / 4, _PI4 * (1 - 2 * z2) / 16
    k3d = _PI6 * (5 - 30 * z2) / 64
    k3c = _PI4 * (-60 * z2 + 212 * z4) / 16
    k3b = _PI2 * (135 * z4 - 96 * z6) / 4
    k3a = -30 * z6 - 90 * z ** 8
    terms = np.zeros(4)
    maxk = int(np.ceil(16 * z / np.pi))
    for k in range(maxk, 0, -1):  # Horner: sum c_i q^(i^2) over odd i
        m = 2 * k - 1
        m2, m4, m6 = m ** 2, m ** 4, m ** 6
        terms *= np.power(q, 8 * k)
        terms += np.array([1.0, k1a + k1b * m2, k2a + k2b * m2 + k2c * m4, k3a + k3b * m2 + k3c * m4 + k3d * m6])
    terms *= q
    terms *= _SQRT2PI
    terms /= np.array([z, 6 * z4, 72 * z ** 7, 6480 * z ** 10])
    q = np.exp(-_PI2 / 2 / z2)
    ks = np.arange(maxk, 0, -1)
    ks2 = ks ** 2
    sqrt3z, kspi = _SQRT3 * z, np.pi * ks
    qpowers = q ** ks2
    terms[2] += np.sum(ks2 * qpowers) * (_PI2 * _SQRT2PI / (-36 * z3))
    terms[3] += np.sum((sqrt3z + kspi) * (sqrt3z - kspi) * ks2 * qpowers) * (_PI2 * _SQRT2PI / (216 * z6))
    terms /= np.power(n * 1.0, np.arange(4) / 2.0)
    return float(sum(terms))
