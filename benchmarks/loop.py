"""The loop's own figure: time from the first drifted request to the new champion answering.

It runs the real loop (`flywheel run`, default size) once and reads the swap it measured:
from the first request of the drifted period, through its labels, the monitoring pass, the
retrain on kfp.local and the promotion, to the first answer from the new version.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from benchmarks import save
from components.settings import load_settings
from pipelines.loop.run import LoopSize, Period, run_loop


def main(out_json: str | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="fw-bench-loop-") as tmp:
        root = Path(tmp)
        s = load_settings(store=str(root / "store"), pipeline_root=str(root / "kfp"), spill_dir=str(root / "spill"),
                          evidently_workspace=str(root / "evidently"), model="demo", cooldown_minutes=0, min_rows=500,
                          serving_poll_seconds=1.0)
        size = LoopSize(periods=(Period("stable"), Period("covariate-shift", covariate_shift=1.0)))
        result = run_loop(s, lambda line: None, size=size)
    swap = result.swaps[0] if result.swaps else {}
    out = {
        "first_drifted_request_to_new_champion_seconds": swap.get("seconds_from_first_drifted_request"),
        "swap": swap, "loop_seconds": result.seconds, "served": result.served, "logged": result.logged,
        "failed_requests": result.failed_requests,
    }
    return save(out_json, out)


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1] if len(sys.argv) > 1 else "bench-results/loop.json"), indent=2))
