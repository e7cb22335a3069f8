"""How long a mock engine pass takes (DESIGN.md §5).

A pass lasts its prefill time plus its decode time:

    pass_ms = prefill_ms(t) / speedup_ratio + decode_ms(p) / (speedup_ratio * decode_speedup_ratio)

    t = new prompt tokens computed in the pass (prefix hits are free); no prefill term when t == 0
    p = fraction of the KV blocks in use (active, i.e. referenced by a request) once the pass is
        scheduled; the decode term counts only when some request emits a token at the pass end

Two models: Dynamo's mocker polynomials (the default), or a profile file measured on a real engine,
interpolated linearly (and extrapolated from the end segments).
"""

from __future__ import annotations

import json
import math
from bisect import bisect_right
from pathlib import Path
from typing import Protocol, Sequence


class TimingModel(Protocol):
    def prefill_ms(self, new_tokens: int) -> float:
        """Unscaled time to compute `new_tokens` prompt tokens in one pass, ms."""

    def decode_ms(self, kv_fraction: float) -> float:
        """Unscaled time of one decode step with `kv_fraction` (0..1) of the KV blocks in use, ms."""


class PolynomialTiming:
    """Dynamo's mocker defaults: quadratic prefill in new tokens, quadratic decode in KV usage."""

    def prefill_ms(self, new_tokens: int) -> float:
        t = new_tokens
        return 4.209989e-7 * t * t + 1.518344e-2 * t + 16.50142

    def decode_ms(self, kv_fraction: float) -> float:
        p = kv_fraction
        return max(-25.74 * p * p + 54.01 * p + 5.74, 1.0)


class _Curve:
    """Piecewise-linear y(x) through sorted points, extended linearly past both ends."""

    def __init__(self, xs: Sequence[float], ys: Sequence[float], name: str):
        if len(xs) != len(ys) or len(xs) < 2:
            raise ValueError(f"--profile: {name} needs at least two points and as many x as y values")
        points = sorted(zip(map(float, xs), map(float, ys)))
        if any(not (math.isfinite(x) and math.isfinite(y) and y >= 0) for x, y in points):
            raise ValueError(f"--profile: {name} values must be finite and times non-negative")
        if any(a[0] == b[0] for a, b in zip(points, points[1:])):
            raise ValueError(f"--profile: {name} x values must be distinct")
        self._xs = [x for x, _ in points]
        self._ys = [y for _, y in points]

    def __call__(self, x: float) -> float:
        i = min(max(bisect_right(self._xs, x), 1), len(self._xs) - 1)
        x0, x1, y0, y1 = self._xs[i - 1], self._xs[i], self._ys[i - 1], self._ys[i]
        return max(y0 + (y1 - y0) * (x - x0) / (x1 - x0), 0.0)


class ProfileTiming:
    """Times measured on a real engine, from a JSON file:

        {"prefill": {"tokens": [128, 1024, 8192], "ms": [18.0, 35.5, 160.0]},
         "decode":  {"kv_usage": [0.0, 0.5, 1.0], "ms": [6.0, 20.0, 34.0]}}

    `tokens` are new prompt tokens per pass, `kv_usage` the fraction of KV blocks in use.
    """

    def __init__(self, prefill: _Curve, decode: _Curve):
        self._prefill = prefill
        self._decode = decode

    @classmethod
    def load(cls, path: str | Path) -> "ProfileTiming":
        try:
            raw = json.loads(Path(path).read_text())
            prefill = _Curve(raw["prefill"]["tokens"], raw["prefill"]["ms"], "prefill")
            decode = _Curve(raw["decode"]["kv_usage"], raw["decode"]["ms"], "decode")
        except OSError as exc:
            raise ValueError(f"--profile: cannot read {path}: {exc.strerror}") from exc
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"--profile: {path} is not a timing profile "
                             f"(see `python -m mocker --help`): {exc!r}") from exc
        return cls(prefill, decode)

    def prefill_ms(self, new_tokens: int) -> float:
        return self._prefill(new_tokens)

    def decode_ms(self, kv_fraction: float) -> float:
        return self._decode(kv_fraction)


class PassClock:
    """Pass durations in ms for one engine: a timing model scaled by the speedup ratios."""

    def __init__(self, model: TimingModel, speedup_ratio: float = 1.0,
                 decode_speedup_ratio: float = 1.0):
        self._model = model
        self._prefill_scale = 1.0 / speedup_ratio
        self._decode_scale = 1.0 / (speedup_ratio * decode_speedup_ratio)

    def pass_ms(self, prefill_tokens: int, emits: bool, kv_fraction: float) -> float:
        ms = 0.0
        if prefill_tokens:
            ms += self._model.prefill_ms(prefill_tokens) * self._prefill_scale
        if emits:
            ms += self._model.decode_ms(kv_fraction) * self._decode_scale
        return ms
