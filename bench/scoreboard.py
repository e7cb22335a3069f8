"""Rotor's scoreboard: what routing wins, by offline replay (mocker/replay) on the shared traces.

    .venv/bin/python -m bench.scoreboard [--quick]
        -> bench/results/scoreboard.json, scoreboard.png, scoreboard.md (the README table)

1. ../shared/traces/conversation_trace.jsonl, 8 mock workers, and prefix_groups_10k.jsonl, 2
   workers (default engine: 16384 blocks of 64 tokens; trace block size 512): every router mode
   side by side: prefix reuse against the ceilings counted from the trace (one shared cache that
   never evicts; random routing over the same number of workers, averaged over seeds), TTFT and
   end-to-end p50/p99, throughput, and the replay's wall time.
2. An agentic synthetic workload (mocker/workloads.py) under cache pressure (4 workers of 1536
   blocks, priority scheduling and eviction in the engines): `kv` with no agent inputs, with
   priority, with priority + osl, and with priority + osl + sessions; TTFT p90 per priority
   class (2: interactive coding sessions, 1: research sessions, 0: subagents).

The chart is drawn with numpy and zlib (no plotting dependency): a 5×7 bitmap font, bars, PNG.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mocker.replay import load_trace, replay_trace, trace_from_rows  # noqa: E402
from mocker.replay.trace import Trace  # noqa: E402
from mocker.workloads import agentic_rows  # noqa: E402

TRACES = ROOT.parent / "shared" / "traces"
RESULTS = ROOT / "bench" / "results"
MODES = ("kv", "round-robin", "random", "least-loaded")
PLAIN = (("conversation", TRACES / "conversation_trace.jsonl", 8),
         ("prefix_groups_10k", TRACES / "prefix_groups_10k.jsonl", 2))
AGENTIC_ENGINE = {"num_gpu_blocks": 1536, "scheduling_policy": "priority",
                  "eviction_policy": "priority"}
AGENTIC_WORKLOAD = {"sessions": 80, "session_rate": 2.0, "turns": 10, "seed": 1}
AGENT_ARMS = (("kv", "none"), ("kv + priority", "priority"),
              ("kv + priority + osl", "priority,osl"),
              ("kv + priority + osl + sessions", "all"))


def block_reuse(trace: Trace, worker_of: Callable[[int], int] = lambda _i: 0) -> float:
    """Share of all hash ids that a row finds, leading, on its cache when caches never evict
    (../shared/traces/README.md's count); `worker_of(row index)` picks the row's cache."""
    seen: dict[int, set[int]] = {}
    hit = total = 0
    for r in trace.requests:
        cache = seen.setdefault(worker_of(r.index), set())
        k = 0
        while k < len(r.hash_ids) and r.hash_ids[k] in cache:
            k += 1
        hit += k
        total += len(r.hash_ids)
        cache.update(r.hash_ids)
    return hit / total


def ceilings(trace: Trace, workers: int, seeds: int = 5) -> dict[str, float]:
    """The reuse ceilings: one shared cache, and random routing over `workers` (mean of seeds)."""
    rnd = []
    for seed in range(seeds):
        rng = random.Random(seed)
        rnd.append(block_reuse(trace, lambda _i: rng.randrange(workers)))
    return {"single_cache": round(block_reuse(trace), 4),
            f"random_{workers}_workers": round(float(np.mean(rnd)), 4)}


KEYS = ("prefix_cache_reused_ratio", "median_ttft_ms", "p99_ttft_ms", "median_e2e_latency_ms",
        "p99_e2e_latency_ms", "request_throughput_rps", "output_token_throughput_tps",
        "duration_ms", "wall_time_ms", "completed_requests", "num_requests", "preemptions",
        "queued_requests")


def plain_runs(limit: int | None) -> dict:
    out = {}
    for name, path, workers in PLAIN:
        trace = load_trace([path], "mooncake", 512)
        if limit:
            trace.requests = trace.requests[:limit]
        entry = {"trace": path.name, "rows": len(trace.requests), "workers": workers,
                 "engine": "default (16384 blocks x 64 tokens, budget 8192, 256 seqs)",
                 "ceilings": ceilings(trace, workers), "modes": {}}
        for mode in MODES:
            print(f"  {name}: {mode} x{workers}", file=sys.stderr)
            report = replay_trace(trace, router_mode=mode, num_workers=workers, seed=0,
                                  progress=True)
            entry["modes"][mode] = {k: report[k] for k in KEYS}
        out[name] = entry
    return out


def agentic_runs() -> dict:
    rows = agentic_rows(**AGENTIC_WORKLOAD)
    trace = trace_from_rows(rows, "agentic_mooncake", 512, source="synthetic-agentic")
    entry = {"workload": AGENTIC_WORKLOAD, "rows": len(rows), "workers": 4,
             "engine": AGENTIC_ENGINE, "arms": {}}
    for label, features in AGENT_ARMS:
        print(f"  agentic: {label}", file=sys.stderr)
        report = replay_trace(trace, router_mode="kv", num_workers=4, engine_args=AGENTIC_ENGINE,
                              agent=features, seed=0, progress=True)
        entry["arms"][label] = {
            "agent_features": report["agent_features"],
            "ttft_p90_ms_by_priority": {p: v["p90"] for p, v in
                                        report["ttft_ms_by_priority"].items()},
            **{k: report[k] for k in ("prefix_cache_reused_ratio", "p90_ttft_ms",
                                      "median_ttft_ms", "mean_trajectory_e2e_latency_ms",
                                      "completed_trajectories", "preemptions", "wall_time_ms")}}
    return entry


# -- Markdown ------------------------------------------------------------------------------------


def markdown(board: dict) -> str:
    lines = []
    for name, entry in board["plain"].items():
        ceil = entry["ceilings"]
        ceil_txt = ", ".join(f"{k.replace('_', ' ')} {v:.1%}" for k, v in ceil.items())
        lines += [f"**{entry['trace']}**, {entry['rows']} requests, {entry['workers']} mock "
                  f"workers (ceilings, blocks cached forever: {ceil_txt})", "",
                  "| router | prefix reuse | TTFT p50 / p99 (ms) | e2e p50 / p99 (ms) | "
                  "req/s | output tok/s | replay wall (s) |",
                  "|---|---|---|---|---|---|---|"]
        for mode, m in entry["modes"].items():
            lines.append(f"| {mode} | {m['prefix_cache_reused_ratio']:.3f} | "
                         f"{m['median_ttft_ms']:.0f} / {m['p99_ttft_ms']:.0f} | "
                         f"{m['median_e2e_latency_ms']:.0f} / {m['p99_e2e_latency_ms']:.0f} | "
                         f"{m['request_throughput_rps']:.2f} | "
                         f"{m['output_token_throughput_tps']:.0f} | "
                         f"{m['wall_time_ms'] / 1000:.2f} |")
        lines.append("")
    ag = board.get("agentic")
    if ag:
        prios = sorted({p for a in ag["arms"].values() for p in a["ttft_p90_ms_by_priority"]},
                       key=int, reverse=True)
        lines += [f"**Agentic synthetic workload** ({ag['rows']} requests, "
                  f"{ag['workload']['sessions']} sessions, 4 workers of "
                  f"{ag['engine']['num_gpu_blocks']} blocks: cache pressure)", "",
                  "| router | " + " | ".join(f"TTFT p90 prio {p} (ms)" for p in prios)
                  + " | TTFT p90 all (ms) | prefix reuse | trajectory mean (s) |",
                  "|---|" + "---|" * (len(prios) + 3)]
        for label, a in ag["arms"].items():
            cells = [f"{a['ttft_p90_ms_by_priority'].get(p, float('nan')):.0f}" for p in prios]
            lines.append(f"| {label} | " + " | ".join(cells)
                         + f" | {a['p90_ttft_ms']:.0f} | {a['prefix_cache_reused_ratio']:.3f} | "
                         f"{a['mean_trajectory_e2e_latency_ms'] / 1000:.1f} |")
    return "\n".join(lines) + "\n"


# -- PNG (numpy + zlib) --------------------------------------------------------------------------

# 5x7 glyphs, one hex byte per row (bit 4 = leftmost column)
_FONT = {
    "0": "0e11131519110e", "1": "040c040404040e", "2": "0e11010204081f", "3": "1f02040201110e",
    "4": "02060a121f0202", "5": "1f101e0101110e", "6": "0608101e11110e", "7": "1f010204080808",
    "8": "0e11110e11110e", "9": "0e11110f01020c", "A": "0e11111f111111", "B": "1e11111e11111e",
    "C": "0e11101010110e", "D": "1c12111111121c", "E": "1f10101e10101f", "F": "1f10101e101010",
    "G": "0e11101711110f", "H": "1111111f111111", "I": "0e04040404040e", "J": "0702020202120c",
    "K": "11121418141211", "L": "1010101010101f", "M": "111b1515111111", "N": "11191513111111",
    "O": "0e11111111110e", "P": "1e11111e101010", "Q": "0e11111115120d", "R": "1e11111e141211",
    "S": "0f10100e01011e", "T": "1f040404040404", "U": "1111111111110e", "V": "11111111110a04",
    "W": "11111115151b11", "X": "11110a040a1111", "Y": "11110a04040404", "Z": "1f01020408101f",
    ".": "00000000000c0c", "%": "18190204081303", "-": "00000e00000000", "/": "01010204081010",
    ":": "000c0c000c0c00", "+": "0004041f040400", "(": "02040808080402", ")": "08040202020408",
    " ": "00000000000000", "_": "0000000000001f", ",": "00000000000c08", "=": "00001f001f0000",
}
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]


class Canvas:
    def __init__(self, width: int, height: int):
        self.px = np.full((height, width, 3), 255, dtype=np.uint8)

    def rect(self, x0: float, y0: float, x1: float, y1: float, color) -> None:
        h, w, _ = self.px.shape
        xa, xb = sorted((int(round(x0)), int(round(x1))))
        ya, yb = sorted((int(round(y0)), int(round(y1))))
        self.px[max(ya, 0):min(yb, h), max(xa, 0):min(xb, w)] = color

    def text(self, x: float, y: float, s: str, color=(0, 0, 0), scale: int = 2) -> None:
        x, y = int(round(x)), int(round(y))    # whole pixels, or glyph columns collapse
        for i, ch in enumerate(s.upper()):
            glyph = _FONT.get(ch, _FONT[" "])
            for row in range(7):
                bits = int(glyph[2 * row:2 * row + 2], 16)
                for col in range(5):
                    if bits & (0x10 >> col):
                        px = x + (i * 6 + col) * scale
                        self.rect(px, y + row * scale, px + scale, y + (row + 1) * scale, color)

    def png(self) -> bytes:
        h, w, _ = self.px.shape
        raw = b"".join(b"\x00" + self.px[y].tobytes() for y in range(h))

        def chunk(kind: bytes, data: bytes) -> bytes:
            body = kind + data
            return (len(data).to_bytes(4, "big") + body
                    + zlib.crc32(body).to_bytes(4, "big"))
        header = w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def bar_panel(c: Canvas, x: int, y: int, w: int, h: int, title: str, groups: list[str],
              series: list[tuple[str, list[float]]], lines: list[tuple[str, float]] = (),
              fmt=lambda v: f"{v:.0f}") -> None:
    """Grouped bars in the box (x, y, w, h); `lines` are labelled horizontal reference lines."""
    c.text(x, y, title, scale=2)
    top, bottom, left = y + 40, y + h - 40, x + 10
    vmax = max([v for _, vs in series for v in vs] + [v for _, v in lines] + [1e-9]) * 1.15
    c.rect(left, bottom, x + w - 10, bottom + 2, (0, 0, 0))
    gw = (w - 20) / len(groups)
    bw = gw * 0.8 / len(series)
    for gi, group in enumerate(groups):
        gx = left + gi * gw + gw * 0.1
        for si, (_, values) in enumerate(series):
            v = values[gi]
            bh = (bottom - top) * v / vmax
            c.rect(gx + si * bw, bottom - bh, gx + (si + 1) * bw - 2, bottom,
                   PALETTE[si % len(PALETTE)])
            c.text(gx + si * bw, bottom - bh - 12, fmt(v), scale=1)
        c.text(gx, bottom + 8, group, scale=1)
    for li, (label, v) in enumerate(lines):
        ly = bottom - (bottom - top) * v / vmax
        for sx in range(left, x + w - 10, 8):
            c.rect(sx, ly, sx + 4, ly + 2, (90, 90, 90))
        c.text(x + w - 10 - 6 * len(label) - 150 * li, ly - 10, label, color=(90, 90, 90),
               scale=1)
    for si, (label, _) in enumerate(series):
        lx = x + 10 + si * 150
        c.rect(lx, y + h - 16, lx + 10, y + h - 6, PALETTE[si % len(PALETTE)])
        c.text(lx + 14, y + h - 15, label, scale=1)


def chart(board: dict) -> bytes:
    c = Canvas(1000, 390)
    short = {"kv": "KV", "round-robin": "RR", "random": "RANDOM", "least-loaded": "LEAST"}
    boxes = [(10, 10), (510, 10)]
    for (name, entry), (bx, by) in zip(board["plain"].items(), boxes):
        modes = list(entry["modes"])
        ceil = entry["ceilings"]
        bar_panel(c, bx, by, 480, 170, f"{name} x{entry['workers']}: REUSE %",
                  [short[m] for m in modes],
                  [("prefix reuse %", [100 * entry["modes"][m]["prefix_cache_reused_ratio"]
                                       for m in modes])],
                  [(f"{k.split('_')[0]} cache ceiling" if k == "single_cache" else
                    "random ceiling", 100 * v) for k, v in ceil.items()],
                  fmt=lambda v: f"{v:.1f}")
        bar_panel(c, bx, by + 180, 480, 190, f"{name}: TTFT MS",
                  [short[m] for m in modes],
                  [("p50", [entry["modes"][m]["median_ttft_ms"] for m in modes]),
                   ("p99", [entry["modes"][m]["p99_ttft_ms"] for m in modes])])
    ag = board.get("agentic")
    if ag:
        arms = list(ag["arms"])
        prios = sorted({p for a in ag["arms"].values() for p in a["ttft_p90_ms_by_priority"]},
                       key=int, reverse=True)
        labels = ["KV", "+PRIO", "+PRIO+OSL", "+SESSIONS"][:len(arms)]
        c2 = Canvas(1000, 630)
        c2.px[:390] = c.px
        bar_panel(c2, 10, 400, 980, 220, "AGENTIC, CACHE PRESSURE: TTFT P90 MS BY PRIORITY",
                  labels, [(f"priority {p}", [ag["arms"][a]["ttft_p90_ms_by_priority"].get(p, 0)
                                              for a in arms]) for p in prios])
        c = c2
    return c.png()


def redraw() -> None:
    """Rebuild the PNG and the Markdown from bench/results/scoreboard.json (no replays)."""
    board = json.loads((RESULTS / "scoreboard.json").read_text())
    (RESULTS / "scoreboard.png").write_bytes(chart(board))
    (RESULTS / "scoreboard.md").write_text(markdown(board))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="first 1500 rows of each trace (a smoke run; not the scoreboard)")
    parser.add_argument("--no-agentic", action="store_true",
                        help="skip the agentic workload under cache pressure")
    parser.add_argument("--redraw", action="store_true",
                        help="only redraw the chart and table from scoreboard.json")
    ns = parser.parse_args()
    if ns.redraw:
        redraw()
        print((RESULTS / "scoreboard.md").read_text())
        return
    t0 = time.perf_counter()
    board = {"benchmark": "scoreboard", "generated": time.strftime("%Y-%m-%d %H:%M:%S"),
             "python": platform.python_version(), "plain": plain_runs(1500 if ns.quick else None)}
    if not ns.no_agentic:
        board["agentic"] = agentic_runs()
    board["total_wall_s"] = round(time.perf_counter() - t0, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = ".quick" if ns.quick else ""
    (RESULTS / f"scoreboard{suffix}.json").write_text(json.dumps(board, indent=2) + "\n")
    table = markdown(board)
    (RESULTS / f"scoreboard{suffix}.md").write_text(table)
    (RESULTS / f"scoreboard{suffix}.png").write_bytes(chart(board))
    print(table)


if __name__ == "__main__":
    main()
