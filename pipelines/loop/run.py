"""The closed loop on one machine: `flywheel run` (and `make run`).

    demo world ─► train + promote v1 ─► serve ─► stable traffic + labels ─► monitor: no drift
        ─► drifted traffic + labels ─► monitor: drift ─► retrain (kfp.local) ─► promote ─► swap
        ─► concept-shifted traffic + labels ─► monitor: quality drop ─► retrain ─► promote ─► swap

Everything runs on the embedded default: the store is a local directory, training is the
real KFP pipeline on kfp.local, serving is the real BentoML server on loopback, monitoring is
the same pass the CronJob runs. The loop only plays the world's part: it writes the first
dataset, sends the traffic and the labels that arrive later (to ``/feedback``), and reads the
outcome from the store. Its retrains take the production path, as `flywheel monitor
--include-feedback` does: the champion's recorded source plus the logged predictions joined
with their feedback labels (pipelines/triggers.py), never the generator's frames.

This file is the story; its parts live beside it: loop_guards.py (one run at a time, the
port, the store, the reset), loop_traffic.py (the clients) and loop_store.py (what is read
back from the store); the serving process is services/serving/launch.py's ServerProcess.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from components.data import DatasetSpec
from components.registry import Registry
from components.settings import Settings
from components.store import Store, open_store, write_parquet
from components.synthetic import churn
from pipelines.local.runner import run_training
from pipelines.loop.guards import LoopError, check_reset, check_store_writable, reset_demo, serving_port, single_run
from pipelines.loop.store import count_logged, versions_of, wait_landed
from pipelines.loop.traffic import Traffic, wait_for_version
from pipelines.triggers import LocalTrigger, champion_spec
from services.serving import launch

__all__ = ["LoopError", "LoopResult", "LoopSize", "Period", "check_store_writable", "run_loop", "serving_port", "single_run"]

TARGET, TIMESTAMP = "churned", "event_time"
HISTORY = "datasets/{model}/history/"


@dataclass(frozen=True)
class Period:
    """One period of production traffic: how the world behaves then."""

    name: str
    covariate_shift: float = 0.0
    concept_shift: bool = False


@dataclass(frozen=True)
class LoopSize:
    # A small labelled pilot: a retrain reads it plus every labelled production row, and its
    # time-aware holdout takes the newest rows, so production must outweigh the pilot for the
    # challenger to have learnt from the drifted period at all.
    history_rows: int = 500
    rows_per_period: int = 2000
    records_per_request: int = 20
    concurrency: int = 4
    periods: tuple[Period, ...] = (
        Period("stable"),
        Period("covariate-shift", covariate_shift=1.0),
        Period("concept-shift", covariate_shift=1.0, concept_shift=True),
    )


@dataclass
class LoopResult:
    """What happened, read back from the store and the service."""

    passes: list[dict[str, Any]] = field(default_factory=list)
    served: int = 0
    failed_requests: int = 0
    logged: int = 0  # prediction records this run added to the store
    feedback: int = 0
    swaps: list[dict[str, Any]] = field(default_factory=list)
    versions: list[dict[str, Any]] = field(default_factory=list)
    champion: str | None = None
    seconds: float = 0.0
    store: str = ""


Say = Callable[[str], None]


def run_loop(settings: Settings, say: Say, port: int | None = None, fresh: bool = True,
             size: LoopSize = LoopSize(), force_reset: bool = False) -> LoopResult:
    """Play the whole loop; everything started here is stopped before it returns or raises.

    ``fresh`` resets the model first, which is refused for any model but the demo one in a
    local store unless ``force_reset`` (``--force-reset``) says so.
    """
    from services.monitoring.report import check_at_start_up

    start = time.monotonic()
    store = open_store(settings.store, settings)
    if fresh:
        check_reset(settings, store, force_reset)  # before anything is started or locked
    check_at_start_up(settings)  # the passes' reports: an Evidently that changed fails here
    result = LoopResult(store=store.uri)
    model = settings.model
    reg = Registry(store, model)
    with single_run(settings):
        port = serving_port(port)
        if fresh:
            reset_demo(store, settings, force_reset)
        logged_before = count_logged(store, model)
        feedback_before = count_logged(store, model, "feedback")
        history = HISTORY.format(model=model)
        if reg.champion() is None:
            say(f"[1/6] writing the demo world to {store.uri}/{history}")
            write_parquet(store, f"{history}part-000.parquet",
                          churn(size.history_rows, seed=1, start="2026-01-01", days=59))
            say("[2/6] training the first champion (KFP pipeline on kfp.local)")
            first = run_training(DatasetSpec(history, TARGET, timestamp=TIMESTAMP, name=model), settings)
            say(f"      {first['version']}: {'promoted' if first['promoted'] else 'not promoted'} - {first['reason']}")
            if reg.champion() is None:
                raise LoopError(f"the first model was not promoted: {first['reason']}")
        else:
            say(f"[1-2/6] continuing from the store: champion {reg.champion().version}")
        log_dir = Path(settings.spill_dir).expanduser().resolve().parent
        say(f"[3/6] starting the service on http://127.0.0.1:{port} (log: {log_dir / 'serving.log'})")
        # one worker: /readyz answers from one worker only, and the loop's traffic starts on it
        server = launch.start(settings, port, workers=1, log_path=log_dir / "serving.log")
        try:
            # each connection may land on another worker, which answers /readyz for itself only:
            # twelve fresh connections in a row must find it ready
            try:
                server.wait_ready("/readyz", 180, in_a_row=12, interval=0.5)
            except launch.ServerNotReady as exc:
                raise LoopError(f"the serving process did not start: {exc}") from None
            traffic = Traffic(server.url, size.records_per_request, size.concurrency, (TARGET, TIMESTAMP, "customer_id"))
            day = pd.Timestamp("2026-03-01")
            for i, period in enumerate(size.periods):
                frame = churn(size.rows_per_period, seed=10 + i, start=str(day.date()), days=7,
                              covariate_shift=period.covariate_shift, concept_shift=period.concept_shift)
                day += pd.Timedelta(days=7)
                step = "4/6" if i == 0 else "5/6"
                say(f"[{step}] {period.name}: {len(frame)} records of production traffic, then their labels")
                t_first = time.monotonic()
                answers = traffic.send(frame)
                result.feedback += traffic.label(answers, frame[TARGET])
                # the service logs off the request path; the pass must see this period whole
                wait_landed(store, model, "predictions", logged_before + traffic.served, settings)
                wait_landed(store, model, "feedback", feedback_before + result.feedback, settings)
                champion_before = reg.champion().version
                say(f"      monitoring pass ({sum(a is not None for a in answers)} served so far in this period)")
                with traffic.background(frame):
                    summary = _monitor(settings, store, _trigger(settings, store))
                    champion_after = reg.champion().version
                    swapped_at = None
                    if champion_after != champion_before:
                        swapped_at = wait_for_version(traffic, champion_after)
                result.passes.append(_pass_row(period.name, summary))
                say(f"      {result.passes[-1]['line']}")
                if champion_after != champion_before:
                    result.swaps.append({
                        "period": period.name, "from": champion_before, "to": champion_after,
                        "seconds_from_first_drifted_request": round(swapped_at - t_first, 1) if swapped_at else None,
                    })
                    say(f"      the service now answers with {champion_after} (was {champion_before})")
        except KeyboardInterrupt:
            say("interrupted: stopping the service; what it served is logged and the registry is unchanged by the stop")
            raise
        finally:
            say("[6/6] stopping the service (it flushes its prediction log)")
            server.stop()
            if "traffic" in locals():
                result.served, result.failed_requests = traffic.served, traffic.failed
        result.logged = count_logged(store, model) - logged_before
        result.versions = versions_of(reg)
        champ = reg.champion()
        result.champion = champ.version if champ else None
    result.seconds = round(time.monotonic() - start, 1)
    return result


def _trigger(settings: Settings, store: Store) -> LocalTrigger:
    """What `flywheel monitor --include-feedback` builds without --data: the champion's source
    plus the labelled production rows (built per pass: the champion changes)."""
    spec = champion_spec(store, settings.model)
    if spec is None:
        raise LoopError(f"champion of {settings.model} records no dataset: there is nothing to retrain on")
    return LocalTrigger(settings, spec, include_feedback=True, reuses_champion_data=True)


def _monitor(settings: Settings, store: Store, trigger: LocalTrigger) -> Any:
    from services.monitoring.monitor import run_pass

    return run_pass(settings, store, trigger)


def _pass_row(period: str, s: Any) -> dict[str, Any]:
    drift = s.drift or {}
    quality = s.quality or {}
    run = s.decision.run or {}
    line = (f"status {s.status}; drift share {drift.get('share', 0):.2f}; "
            f"{'RETRAIN: ' if s.decision.retrain else ''}{s.decision.reason}")
    registered = bool(run) and run.get("registered", True) and run.get("status") == "succeeded"
    if run and not registered:
        line += f" -> nothing new registered ({run.get('status')})"
    elif run:
        line += f" -> {run.get('version')} {'promoted' if run.get('promoted') else 'not promoted'}"
    return {
        "period": period, "status": s.status, "rows": s.rows.get("evaluated", 0),
        "drift_share": drift.get("share"), "drift_detected": drift.get("detected"),
        "quality": quality.get("reason"), "retrain": s.decision.retrain, "reason": s.decision.reason,
        "new_version": run.get("version") if registered else None, "promoted": bool(registered and run.get("promoted")),
        "report": (s.outputs or {}).get("report"), "summary": (s.outputs or {}).get("summary"), "line": line,
    }


