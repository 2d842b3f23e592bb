"""Scale: `flywheel train` against the size of the table, an unchanged re-run, the retrain data step.

Each figure is a row function ``(work folder) -> [figure dict]`` in ``ROW_FUNCTIONS``; a new
row (compaction, a distributed refit) is one more function there. What they measure:

* ``flywheel train`` at each size of ``SCALE_ROWS`` (default 200000,500000; the issue's sizes:
  ``SCALE_ROWS=1000000,5000000,10000000``), every run with ``refit_memory_mb`` = ``SCALE_REFIT_MEMORY_MB``
  (default 4000: under the 4 GiB per-process target): wall time, the CLI's peak RSS and each pipeline
  task's peak RSS (VmHWM of every process in the CLI's tree, read from /proc while it lives;
  each task in a new interpreter, ``FLYWHEEL_WARM_TASKS=false``, so its command line names its
  step and its high-water mark is its own, not a forking parent's);
* the largest size again, twice: after the first run's promotion (validate and evaluate key on the
  champion) and unchanged (same data, settings and champion): wall time, peak RSS, and what each
  read of the data (opens of the data file as the kernel reports them, testkit/meters.py);
* the same from S3 (a real S3 server, moto, behind a request counter), the dataset in 5
  objects: bytes of the dataset downloaded by the re-run (target < 1%);
* the retrain dataset step (benchmarks/retrain_data.py) at ``SCALE_RETRAIN_ROWS``;
* a monitoring pass over 20 workers' prediction-log parts before and after compaction
  (benchmarks/scale_compaction.py, ``BENCH_COMPACTION_*``);
* the XGBoost refit in one process against 1 and 2 collective workers (benchmarks/scale_distributed.py;
  ``BENCH_DISTRIBUTED_ROWS``, else the largest ``SCALE_ROWS`` size up to 5,000,000).

``SCALE_ONLY`` (names of row functions, comma-separated, e.g. ``train_at_sizes``) runs a subset.
Runnable as ``python -m benchmarks.scale [out.json]``; ``main(out_json)`` returns the dict.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks import save
from components.proc import peak_rss_kib

ROOT = Path(__file__).resolve().parents[1]
CHUNK = 500_000
S3_OBJECTS = 5


def sizes() -> list[int]:
    return [int(n) for n in (os.environ.get("SCALE_ROWS") or "200000,500000").split(",") if n]


# The target is every process <= 4 GiB (4,295 MB); the chart's default budget is its 8 GiB task limit. Every
# run here (each size alike) gets this budget, so an in-memory refit is planned only when its estimate fits
# under 4 GiB; over it XGBoost and LightGBM stream and other families are refused before the search.
REFIT_MEMORY_MB = 4000


def refit_memory_mb() -> int:
    return int(os.environ.get("SCALE_REFIT_MEMORY_MB") or REFIT_MEMORY_MB)


# --- measuring a process tree -----------------------------------------------------------------

def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def _name(pid: int, root: int) -> str:
    if pid == root:
        return "cli"
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    args = [a.decode(errors="replace") for a in argv]
    if "--function_to_execute" in args:
        return f"task {args[args.index('--function_to_execute') + 1]}"
    if "pipelines.local.kfp_local" in args:
        return "kfp.local runner"
    return Path(args[0]).name if args and args[0] else "?"


class TreePeaks:
    """The peak RSS (VmHWM) of every process under ``root``, sampled every ``every`` seconds while it runs.

    A process's VmHWM only grows, so the last sample before it exits is at most ``every`` seconds
    short of its true peak; the figures are a lower bound of that precision."""

    def __init__(self, root: int, every: float = 0.1) -> None:
        self.root, self.every = root, every
        self.peaks: dict[int, tuple[str, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            tree, todo = _children(), [self.root]
            while todo:
                pid = todo.pop()
                todo += tree.get(pid, [])
                kib = peak_rss_kib(pid)
                if kib:  # 0: the process is gone (or has no memory of its own)
                    name = self.peaks.get(pid, (None, 0))[0] or _name(pid, self.root)
                    self.peaks[pid] = (name, max(kib, self.peaks.get(pid, ("", 0))[1]))
            self._stop.wait(self.every)

    def stop(self) -> dict[str, int]:
        """Peak RSS in MiB per process name (the largest when a name has several processes)."""
        self._stop.set()
        self._thread.join()
        out: dict[str, int] = {}
        for name, kib in self.peaks.values():
            out[name] = max(out.get(name, 0), round(kib / 1024))
        return out


def train_once(data: str, work: Path, env: dict[str, str], extra: list[str] | None = None) -> dict:
    """One `flywheel train` in a new process: wall time, and peak RSS per process of its tree."""
    cmd = [sys.executable, "-m", "pipelines.cli", "train", "--data", data, "--target", "churned",
           "--timestamp", "event_time", "--id-column", "customer_id", *(extra or [])]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peaks = TreePeaks(proc.pid)
    out, _ = proc.communicate()
    seconds = time.perf_counter() - start
    by_process = peaks.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"flywheel train on {data} failed ({proc.returncode}): {out[-600:]}")
    tasks = {k.removeprefix("task "): v for k, v in by_process.items() if k.startswith("task ")}
    return {"seconds": round(seconds, 1), "cli_peak_mib": by_process.get("cli", 0),
            "max_process_peak_mib": max(by_process.values()), "task_peak_mib": tasks,
            "cached": "served from cache" in out}


def _env(work: Path, store: str, **extra: str) -> dict[str, str]:
    from pipelines.local.runner import model_threads

    return {**os.environ, "FLYWHEEL_STORE": store, "FLYWHEEL_PIPELINE_ROOT": str(work / "root"),
            "FLYWHEEL_MODEL": "scale", "FLYWHEEL_WARM_TASKS": "false", "PYTHONPATH": str(ROOT),
            "FLYWHEEL_REFIT_MEMORY_MB": str(refit_memory_mb()),
            **model_threads(), **extra}


def write_table(rows: int, path: Path, parts: int = 1) -> int:
    """The project's churn-like table as ``parts`` Parquet files under ``path`` (written in chunks); bytes written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from components.synthetic import churn

    path.mkdir(parents=True, exist_ok=True)
    per = -(-rows // parts)
    total = 0
    for part in range(parts):
        target, writer = path / f"part-{part:03d}.parquet", None
        for i in range(part * per, min(rows, (part + 1) * per), CHUNK):
            table = pa.Table.from_pandas(churn(min(CHUNK, rows - i, (part + 1) * per - i), seed=i // CHUNK),
                                         preserve_index=False)
            writer = writer or pq.ParquetWriter(target, table.schema)
            writer.write_table(table)
        if writer:
            writer.close()
            total += target.stat().st_size
    return total


VALIDATE = r"""
import json, sys, time
import pyarrow.parquet as pq
from components import validate
from components.data import Schema
schema = Schema.from_json(open(sys.argv[2]).read())
t0 = time.perf_counter()
table = pq.read_table(sys.argv[1], columns=[*schema.feature_names, schema.target])
report = validate.validate(table, schema)
print(json.dumps({"seconds": round(time.perf_counter() - t0, 2), "rows": report.rows}))
"""


def validate_seconds(root: Path) -> float | None:
    """The validate step's stage (read its columns as Arrow, check them) on the newest run's ingested file, alone."""
    datasets = sorted(root.glob("*/ingest/dataset"), key=lambda p: p.stat().st_mtime)
    schemas = sorted(root.glob("*/ingest/executor_output.json"), key=lambda p: p.stat().st_mtime)
    if not datasets or not schemas:
        return None
    schema = json.loads(schemas[-1].read_text())["parameterValues"]["schema"]
    spec = root / "schema.json"
    spec.write_text(schema if isinstance(schema, str) else json.dumps(schema))
    out = subprocess.run([sys.executable, "-c", VALIDATE, str(datasets[-1]), str(spec)], cwd=ROOT, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["seconds"]


# --- the rows ---------------------------------------------------------------------------------

def train_at_sizes(work: Path) -> list[dict]:
    """`flywheel train` at each size, then the largest again with nothing changed (local files)."""
    from testkit.meters import file_opens

    out = []
    for n in sizes():
        folder = work / f"train-{n}"
        data_dir = folder / "data"
        data_bytes = write_table(n, data_dir)
        env = _env(folder, str(folder / "store"))
        first = train_once(str(data_dir), folder, env)
        out.append({"row": "train", "rows": n, "data_bytes": data_bytes, "refit_memory_mb": refit_memory_mb(), **first,
                    "validate_seconds": validate_seconds(folder / "root")})
        if n == max(sizes()):
            # the second run sees the champion the first promoted (validate and evaluate key on it);
            # the third is the unchanged re-run: same data, settings and champion
            for which in ("after-promotion", "unchanged"):
                with file_opens(data_dir) as opens:
                    again = train_once(str(data_dir), folder, env)
                out.append({"row": "rerun-local", "which": which, "rows": n, **again, "data_file_opens": opens["open"],
                            "ratio_to_first": round(again["seconds"] / first["seconds"], 4)})
    return out


def rerun_s3(work: Path) -> list[dict]:
    """The smallest size from S3 (5 objects, the store in the same bucket): bytes of the dataset the re-run downloads."""
    import boto3

    from testkit.meters import MeteredS3Server

    n = min(sizes())
    data_dir = work / "s3-data"
    data_bytes = write_table(n, data_dir, S3_OBJECTS)
    server = MeteredS3Server()
    server.start()
    try:
        creds = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_ENDPOINT_URL": server.endpoint,
                 "AWS_DEFAULT_REGION": "us-east-1"}
        client = boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1",
                              aws_access_key_id="bench", aws_secret_access_key="bench")
        client.create_bucket(Bucket="scale")
        for p in sorted(data_dir.glob("*.parquet")):
            client.upload_file(str(p), "scale", f"data/{p.name}")
        env = _env(work / "s3", "s3://scale/flywheel", **creds)
        first = train_once("s3://scale/data/", work / "s3", env)
        first_bytes = server.traffic.bytes_sent("scale/data/")
        server.traffic.reset()
        again = train_once("s3://scale/data/", work / "s3", env)
        return [{"row": "rerun-s3", "rows": n, "objects": S3_OBJECTS, "data_bytes": data_bytes,
                 "first_run_bytes_downloaded": first_bytes, "first_seconds": first["seconds"], **again,
                 "bytes_downloaded": server.traffic.bytes_sent("scale/data/"),
                 "data_gets": server.traffic.gets("scale/data/")}]
    finally:
        server.stop()


def retrain_data_step(work: Path) -> list[dict]:
    """The retrain's dataset step against the base size (benchmarks/retrain_data.py)."""
    from benchmarks import retrain_data

    rows = [int(n) for n in (os.environ.get("SCALE_RETRAIN_ROWS") or "100000,1000000").split(",") if n]
    return [{"row": "retrain-data", **retrain_data.measure(n)} for n in rows]


def compaction(work: Path) -> list[dict]:
    """A monitoring pass over many workers' log parts before and after compaction (benchmarks/scale_compaction.py)."""
    from benchmarks import scale_compaction

    return [{"row": "compaction", **scale_compaction.scale_compaction()}]


def distributed_refit(work: Path) -> list[dict]:
    """The XGBoost refit in one process against 1 and 2 collective workers (benchmarks/scale_distributed.py;
    rows: ``BENCH_DISTRIBUTED_ROWS``, else the largest ``SCALE_ROWS`` size up to 5,000,000)."""
    from benchmarks import scale_distributed

    return [{"row": "distributed", "runs": scale_distributed.main()["runs"]}]


ROW_FUNCTIONS: list[Callable[[Path], list[dict]]] = [train_at_sizes, rerun_s3, retrain_data_step, compaction,
                                                     distributed_refit]


def selected() -> list[Callable[[Path], list[dict]]]:
    """The row functions ``SCALE_ONLY`` names (all of them when it is unset); an unknown name is an error naming it."""
    names = [n for n in (os.environ.get("SCALE_ONLY") or "").split(",") if n]
    known = {fn.__name__: fn for fn in ROW_FUNCTIONS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"SCALE_ONLY names {', '.join(unknown)}, not a scale row; the rows are {', '.join(known)}")
    return [known[n] for n in names] if names else list(ROW_FUNCTIONS)


def main(out_json: str | None = None) -> dict:
    figures: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="flywheel-scale-") as tmp:
        for fn in selected():
            work = Path(tmp) / fn.__name__
            work.mkdir()
            figures += fn(work)
    result = {"figures": figures}
    return save(out_json, result)


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def rows(r: dict) -> list[tuple[str, str, str]]:
    """(figure, value, target) lines for `make bench`'s table."""
    from benchmarks import retrain_data

    out: list[tuple[str, str, str]] = []
    for f in r["figures"]:
        if f["row"] == "train":
            top = max(f["task_peak_mib"].items(), key=lambda kv: kv[1]) if f["task_peak_mib"] else ("-", 0)
            out.append((f"flywheel train, {f['rows']:,} rows (refit_memory_mb {f.get('refit_memory_mb', '-')}): wall, "
                        "CLI peak, largest task peak", f"{f['seconds']} s, {f['cli_peak_mib']} MiB, {top[1]} MiB ({top[0]})",
                        "every process <= 4096 MiB at 10M"))
            if f.get("validate_seconds") is not None:
                out.append((f"  validate (its stage alone, on the run's ingested file), {f['rows']:,} rows",
                            f"{f['validate_seconds']} s ({f['validate_seconds'] / f['seconds']:.1%} of the run)",
                            "<= 20% of the run at 10M"))
            out.append((f"  each task's peak RSS (MiB), {f['rows']:,} rows",
                        ", ".join(f"{k} {v}" for k, v in sorted(f["task_peak_mib"].items())), ""))
        elif f["row"] == "rerun-local":
            what = "unchanged re-run" if f["which"] == "unchanged" else "re-run after the first promotion"
            out.append((f"{what}, {f['rows']:,} rows, local: wall (of the first), peak, data file opens",
                        f"{f['seconds']} s ({f['ratio_to_first']:.1%}), {f['max_process_peak_mib']} MiB, "
                        f"{f['data_file_opens']}", "<= 3% at 5M, <= 1024 MiB, 0 opens"))
        elif f["row"] == "rerun-s3":
            share = f["bytes_downloaded"] / f["data_bytes"]
            out.append((f"unchanged re-run from S3, {f['rows']:,} rows in {f['objects']} objects: bytes of the dataset downloaded",
                        f"{_mib(f['bytes_downloaded'])} of {_mib(f['data_bytes'])} ({share:.2%}), {f['data_gets']} GETs; "
                        f"first run {_mib(f['first_run_bytes_downloaded'])}; {f['seconds']} s, {f['max_process_peak_mib']} MiB",
                        "< 1%"))
    trains = sorted((f for f in r["figures"] if f["row"] == "train"), key=lambda f: f["rows"])
    for small, large in zip(trains, trains[1:]):
        out.append((f"wall time, {large['rows']:,} rows against {small['rows']:,}",
                    f"{large['seconds'] / small['seconds']:.2f}x", "<= 2.2x (10M against 5M)"))
    retrain = [f for f in r["figures"] if f["row"] == "retrain-data"]
    if retrain:
        out += retrain_data.rows({"sizes": retrain})
    from benchmarks import scale_compaction, scale_distributed

    for f in r["figures"]:
        if f["row"] == "compaction":
            out += scale_compaction.rows(f)
        elif f["row"] == "distributed":
            out += scale_distributed.rows(f)
    return out


if __name__ == "__main__":
    result = main(sys.argv[1] if len(sys.argv) > 1 else None)
    print(json.dumps(result, indent=2))
    for line in rows(result):
        print(" | ".join(line))

