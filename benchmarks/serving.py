"""Serving benchmark: the Flywheel service against FastAPI+uvicorn, matched, driven by ``wrk``.

The load generator is ``wrk`` (a compiled HTTP load generator; Debian package ``wrk``),
with a Lua script that cycles through real JSON POST bodies. Every figure is measured in
one run on this machine, so the ratios are what count. The sides (benchmarks/serving_sides.py):

    service         the Flywheel service (``flywheel serve``: batching across requests, prediction log on)
    fastapi_logged  FastAPI + uvicorn as a user writes it with the same duties: every record checked
                    by a pydantic model of the schema, every prediction logged to Parquet in the store
    fastapi_plain   FastAPI + uvicorn that only predicts
    ceiling         a bare ASGI app on uvicorn that answers a constant: the generator's ceiling

Every side runs the service's worker count (uvicorn ``--workers``), the same thread caps, the
same ``MALLOC_TOP_PAD_`` and ``gc.freeze()``, and the model sides the same runtime (ONNX where
it serves). What each side runs with is read from its processes and printed in every row; a
run whose sides differ says so and fails its "matched" target.

Two model shapes, each at concurrency 1, 8 and 32, the same request bodies for every side:

    linear     logistic regression on 30 numeric features (breast cancer)
    trees      histogram gradient boosting on mixed numeric and categorical features (churn)

The ceiling must reach at least 3x the fastest model server's throughput at the same
concurrency, or the run says its figures are capped by the generator.

Run it with ``python -m benchmarks.serving [out.json]``; ``main(path)`` returns the figures
and ``rows(figures)`` the lines of the ``make bench`` table.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import save
from benchmarks.serving_sides import (
    BASELINES,
    MALLOC_PAD,
    MODEL_SIDES,
    SHAPES,
    compact_env,
    make_model,
    mismatches,
    runtime_of,
    side_settings,
    start_ceiling,
    start_sides,
)
from services.serving.launch import ServerProcess

CONCURRENCY = (1, 8, 32)
CEILING_FACTOR = 3.0
INSTALL_HINT = "install wrk with `sudo apt-get install -y wrk` (Debian/Ubuntu) or `brew install wrk` (macOS)"
# req/s at c=32 over each baseline (the issue's targets); p99 no worse than either; c=1 p50 within 2 ms
TARGETS = {"throughput_c32": {"fastapi_logged": 1.5, "fastapi_plain": 1.3}, "p99_c32": 1.0, "p50_c1_ms": 2.0}

# Cycles through one prebuilt request per line of the bodies file (args[1]); done() prints
# the figures as one JSON line, which the bench parses (wrk's own text output is for people).
WRK_LUA = r'''
local requests = {}
local n = 0
local i = 0

init = function(args)
  for line in io.lines(args[1]) do
    n = n + 1
    requests[n] = wrk.format("POST", nil, {["Content-Type"] = "application/json"}, line)
  end
  i = math.random(n) - 1
end

request = function()
  i = i % n + 1
  return requests[i]
end

done = function(summary, latency, requests_)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "connect_errors": %d, "read_errors": %d, ' ..
    '"write_errors": %d, "status_errors": %d, "timeouts": %d, "p50_us": %d, "p90_us": %d, ' ..
    '"p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
'''


# --- the generator ----------------------------------------------------------------------------

def generator() -> dict[str, str]:
    """Which load generator this run uses; raises with the one-line install hint when missing."""
    path = shutil.which("wrk")
    if path is None:
        raise RuntimeError(f"the serving benchmark needs wrk: {INSTALL_HINT}")
    out = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
    version = (out.stdout + out.stderr).strip().splitlines()[0] if (out.stdout + out.stderr).strip() else "wrk"
    return {"name": "wrk", "path": path, "version": version.split(" Copyright")[0].strip()}


def wrk(url: str, bodies_file: Path, script: Path, seconds: float, concurrency: int) -> dict[str, Any]:
    """Drive ``url`` with wrk at ``concurrency`` connections; requests/s and latency percentiles."""
    threads = 1 if concurrency == 1 else 2  # two cores: a second wrk thread only at c > 1
    cmd = ["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{seconds:g}s", "--timeout", "10s",
           "-s", str(script), url, "--", str(bodies_file)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120, check=False)
    match = re.search(r"^WRK_JSON (\{.*\})$", out.stdout, re.MULTILINE)
    if out.returncode != 0 or match is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {(out.stderr or out.stdout).strip()[-500:]}")
    raw = json.loads(match.group(1))
    failed = raw["status_errors"] + raw["timeouts"] + raw["connect_errors"] + raw["read_errors"] + raw["write_errors"]
    ok = max(raw["requests"] - raw["status_errors"], 0)
    duration = raw["duration_us"] / 1e6
    return {"rps": ok / duration, "p50_ms": raw["p50_us"] / 1000, "p90_ms": raw["p90_us"] / 1000,
            "p99_ms": raw["p99_us"] / 1000, "max_ms": raw["max_us"] / 1000, "requests": raw["requests"],
            "failures": failed, "seconds": round(duration, 2)}


# --- the run ----------------------------------------------------------------------------------

def _measure(srv: ServerProcess, bodies_file: Path, script: Path, seconds: float, warmup: float,
             concurrency: tuple[int, ...] = CONCURRENCY) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for c in concurrency:
        wrk(f"{srv.url}/predict", bodies_file, script, warmup, c)  # warm caches and the batcher's latency model
        out[str(c)] = wrk(f"{srv.url}/predict", bodies_file, script, seconds, c)
    return out


def _measure_c1_interleaved(servers: dict[str, ServerProcess], bodies_file: Path, script: Path, seconds: float,
                            warmup: float, repeats: int) -> dict[str, dict[str, Any]]:
    """c=1 for each server, ``repeats`` runs taken in turns (A, B, A, B, ...); each server's median-p50 run.

    A one-client p50 moves by a millisecond from one run to the next on a shared machine; runs taken
    in turns see the same drift, and the median of each server's runs is compared.
    """
    for srv in servers.values():
        wrk(f"{srv.url}/predict", bodies_file, script, warmup, 1)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
    for _ in range(repeats):
        for name, srv in servers.items():
            runs[name].append(wrk(f"{srv.url}/predict", bodies_file, script, seconds, 1))
    out = {}
    for name, taken in runs.items():
        ordered = sorted(taken, key=lambda r: r["p50_ms"])
        out[name] = {**ordered[len(ordered) // 2], "p50_runs_ms": [round(r["p50_ms"], 3) for r in taken]}
    return out



def main(out_json_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Run the matrix (shape x concurrency x side); write and return the figures and ratios."""
    from components.settings import load_settings
    from services.serving.launch import service_workers

    seconds = float(os.environ.get("BENCH_SECONDS", "10"))
    warmup = max(2.0, seconds / 5)
    c1_repeats = int(os.environ.get("BENCH_C1_REPEATS", "3"))
    settings = load_settings()
    workers = service_workers(settings)
    results: dict[str, Any] = {"generator": generator(), "seconds_per_cell": seconds, "c1_repeats": c1_repeats,
                               "cpus": os.cpu_count(), "workers": workers, "shapes": {}}
    with tempfile.TemporaryDirectory(prefix="flywheel-bench-serving-") as t:
        tmp = Path(t)
        script = tmp / "post.lua"
        script.write_text(WRK_LUA)
        for shape in SHAPES:
            bodies, runtime = make_model(tmp / "store", shape)
            bodies_file = tmp / f"{shape}.jsonl"
            bodies_file.write_text("\n".join(bodies) + "\n")
            cell: dict[str, Any] = {"runtime": runtime, "requests_bodies": len(bodies)}
            servers = start_sides(tmp, tmp / "store", shape, workers, bodies[0])
            try:  # all up at once: the c=1 runs are taken in turns; the ones not measured idle
                cell["sides"] = {name: side_settings(srv, runtime_of(name, srv, bodies[0]))
                                 for name, srv in servers.items()}
                cell["mismatches"] = mismatches(cell["sides"])
                one = _measure_c1_interleaved(servers, bodies_file, script, seconds, warmup, c1_repeats)
                for name, srv in servers.items():
                    cell[name] = {"1": one[name], **_measure(srv, bodies_file, script, seconds, warmup, CONCURRENCY[1:])}
            finally:
                for srv in servers.values():
                    srv.stop()
            results["shapes"][shape] = cell
        srv = start_ceiling(tmp, workers, settings)
        try:
            results["ceiling_settings"] = side_settings(srv)
            results["ceiling"] = _measure(srv, tmp / f"{SHAPES[-1]}.jsonl", script, seconds, warmup)
        finally:
            srv.stop()
    results["ratios"] = ratios(results)
    return save(out_json_path, results)


def ratios(r: dict[str, Any]) -> dict[str, Any]:
    """Service / each baseline and server / ceiling per cell; the capped flag; the targets."""
    out: dict[str, Any] = {"cells": {}}
    capped = []
    fastest = {c: max(r["shapes"][s][k][c]["rps"] for s in r["shapes"] for k in MODEL_SIDES) for c in map(str, CONCURRENCY)}
    for c in map(str, CONCURRENCY):
        ceiling = r["ceiling"][c]["rps"]
        if ceiling < CEILING_FACTOR * fastest[c]:
            capped.append(c)
        for shape, cell in r["shapes"].items():
            svc = cell["service"][c]
            x: dict[str, Any] = {"service_vs_ceiling": svc["rps"] / ceiling}
            for base in BASELINES:
                b = cell[base][c]
                # None: the baseline answered nothing in the run (a ratio to zero says nothing)
                x[base] = {"throughput": svc["rps"] / b["rps"] if b["rps"] else None,
                           "p99": svc["p99_ms"] / b["p99_ms"] if b["requests"] and b["p99_ms"] else None,
                           "p50_minus_ms": svc["p50_ms"] - b["p50_ms"], "vs_ceiling": b["rps"] / ceiling}
            out["cells"][f"{shape}/c{c}"] = x
    out["ceiling_over_fastest"] = {c: r["ceiling"][c]["rps"] / fastest[c] for c in fastest}
    out["capped"] = capped
    cells, targets = out["cells"], {}
    for shape, cell in r["shapes"].items():
        targets[f"{shape}: sides matched (workers, runtime, thread caps, heap pad, read from the processes)"] = \
            not cell.get("mismatches")
        for base in BASELINES:
            want = TARGETS["throughput_c32"][base]
            c32 = cells[f"{shape}/c32"][base]
            targets[f"{shape}: c=32 throughput >= {want}x {base}"] = c32["throughput"] is not None and c32["throughput"] >= want
            targets[f"{shape}: c=32 p99 no worse than {base}"] = c32["p99"] is not None and c32["p99"] <= TARGETS["p99_c32"]
            targets[f"{shape}: c=1 p50 within {TARGETS['p50_c1_ms']:g} ms of {base}"] = \
                cells[f"{shape}/c1"][base]["p50_minus_ms"] <= TARGETS["p50_c1_ms"]
    targets["generator not capped (ceiling >= 3x fastest server)"] = not capped
    out["targets"] = targets
    return out


def _c1_runs(cell: dict[str, Any]) -> str:
    """The p50 of every c=1 run (taken in turns) when there were several; the row shows the medians."""
    runs = [cell[side]["1"].get("p50_runs_ms", ()) for side in MODEL_SIDES]
    if min(map(len, runs)) < 2:
        return ""
    return "; p50 runs " + " | ".join("/".join(f"{v:.1f}" for v in r) for r in runs) + " ms (medians shown)"


def settings_line(sides: dict[str, dict[str, Any]], problems: list[str]) -> str:
    """Every side's settings as its processes show them (in the sides' order); UNMATCHED when they differ."""
    def each(get: Any) -> str:
        return "|".join(str(get(s)) for s in sides.values())

    line = (f"workers {each(lambda s: s['workers'])}, runtime {each(lambda s: s['runtime'])}, "
            f"threads {each(lambda s: compact_env(s['env'])['threads'])}, "
            f"{MALLOC_PAD} {each(lambda s: compact_env(s['env'])[MALLOC_PAD])}, gc.freeze after load: all")
    return ("UNMATCHED (" + "; ".join(problems) + "): " if problems else "matched: ") + line


def _each(cells: list[dict[str, Any]], key: str, fmt: str = ".1f") -> str:
    return " | ".join(format(cell[key], fmt) for cell in cells)


def _vs(x: dict[str, Any], key: str) -> str:
    return ", ".join(f"{x[b][key]:.2f}x {b}" if x[b][key] is not None else f"n/a {b}" for b in BASELINES)


def rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(figure, value, target) lines for the ``make bench`` table."""
    g = r["generator"]
    sides = " | ".join(MODEL_SIDES)
    out = [("generator", f"{g['name']} ({g['version']}); {r['seconds_per_cell']:g} s per cell, "
            f"the same request bodies for every side", "compiled generator")]
    ratio = r["ratios"]
    ceiling_workers = r.get("ceiling_settings", {}).get("workers")
    for c in map(str, CONCURRENCY):
        ceil = r["ceiling"][c]
        out.append((f"ceiling (constant server, {ceiling_workers} workers) c={c}",
                    f"{ceil['rps']:.0f} req/s, p50 {ceil['p50_ms']:.1f} ms; "
                    f"{ratio['ceiling_over_fastest'][c]:.1f}x the fastest model server",
                    f">= {CEILING_FACTOR:g}x" + ("  CAPPED: figures limited by the generator" if c in ratio["capped"] else "")))
    for shape, cell in r["shapes"].items():
        settings = settings_line(cell["sides"], cell.get("mismatches", []))
        for c in map(str, CONCURRENCY):
            x = ratio["cells"][f"{shape}/c{c}"]
            got = [cell[side][c] for side in MODEL_SIDES]
            target = ""
            if c == "32":
                target = (" / ".join(f">= {TARGETS['throughput_c32'][b]:g}x {b}" for b in BASELINES)
                          + " req/s, p99 ratios <= 1")
            elif c == "1":
                target = f"p50 within {TARGETS['p50_c1_ms']:g} ms of each"
            out.append((f"{shape} ({cell['runtime']}) c={c}: {sides}",
                        f"{_each(got, 'rps', '.0f')} req/s ({_vs(x, 'throughput')}); p50 {_each(got, 'p50_ms')} ms; "
                        f"p99 {_each(got, 'p99_ms')} ms ({_vs(x, 'p99')}); failed {_each(got, 'failures', 'd')}"
                        + (_c1_runs(cell) if c == "1" else "") + f"; {settings}", target))
    met = ratio["targets"]
    out.append(("targets met", f"{sum(met.values())}/{len(met)}", "; ".join(k for k, v in met.items() if not v) or "all"))
    return out


if __name__ == "__main__":
    figures = main(sys.argv[1] if len(sys.argv) > 1 else "bench-results/serving.json")
    for figure, value, target in rows(figures):
        print(f"{figure:<44} {value}   [{target}]")
