"""One monitoring pass: the entry point of ``flywheel monitor`` and of the CronJob.

A pass reads the current window of prediction logs and the served version's reference,
tests drift per feature (drift.py), compares quality on the labelled rows with the
version's holdout quality (quality.py) and decides whether to retrain (trigger.py). The
decision comes first: summary.json and the metrics (metrics.py, pushed to a Pushgateway
when ``pushgateway`` is set) are written as soon as it is made. Evidently's reports
(report.html, quality.html when labels exist) and the workspace snapshot are costly fixed
work (plotly rendering), so they are a second step, rendered after the decision when
``monitor_reports`` asks for them, and the summary is then updated with where they are.

Statuses and exit codes: ``ok`` (the window was evaluated, drift or not) and ``skipped``
(nothing to evaluate yet: no champion, no logs, too few rows) exit 0; ``error`` (the store,
the reference or the trigger failed) exits 1. An error never starts a retrain.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from components.arrow_pool import use_jemalloc
from components.data import LABEL, PREDICTION
from components.registry import Registry, RegistryError
from components.settings import Settings
from components.store import NotFound, Store, StoreError
from services.monitoring import drift as drift_mod
from services.monitoring import late as late_mod
from services.monitoring import metrics as monitor_metrics
from services.monitoring import quality as quality_mod
from services.monitoring import trigger as trig
from services.monitoring.scan import Window, read_feedback, scan_window

log = logging.getLogger(__name__)
STATE = "monitoring/{model}/last_window.json"


@dataclass
class Summary:
    """What a pass found and decided; written as summary.json."""

    model: str
    status: str = "ok"  # ok | skipped | error
    message: str = ""
    version: str | None = None
    window: dict[str, Any] | None = None
    rows: dict[str, Any] = field(default_factory=dict)
    files: dict[str, Any] = field(default_factory=dict)
    drift: dict[str, Any] | None = None
    quality: dict[str, Any] | None = None
    columns: dict[str, Any] = field(default_factory=dict)
    decision: dict[str, Any] = field(default_factory=lambda: {"retrain": False, "reason": ""})
    alarm: dict[str, Any] | None = None  # drift without new labels: a human is told, no retrain runs
    outputs: dict[str, Any] = field(default_factory=dict)
    retrains: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    started_at: str = ""
    finished_at_unix: float | None = None
    timings: dict[str, float] = field(default_factory=dict)
    duration_s: float = 0.0

    @property
    def exit_code(self) -> int:
        return 1 if self.status == "error" else 0

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()} | {"exit_code": self.exit_code}


def current_window(store: Store, settings: Settings, now: dt.datetime) -> Window:
    """The window this pass evaluates.

    With ``window_minutes`` windows are aligned to multiples of it (a pass at 10:07 with 60
    evaluates 09:00-10:00), so passes racing on one window agree on it; otherwise the
    window runs from the end of the last evaluated window (or the first log) to now.
    """
    now = now.astimezone(dt.UTC).replace(microsecond=0)
    if settings.window_minutes:
        step = settings.window_minutes * 60
        end = dt.datetime.fromtimestamp(int(now.timestamp()) // step * step, dt.UTC)
        return Window(end - dt.timedelta(seconds=step), end)
    try:
        last = json.loads(store.read(STATE.format(model=settings.model)))
        start = dt.datetime.fromisoformat(last["end"])
    except NotFound:
        start = None
    return Window(start, now)


def run_pass(settings: Settings, store: Store, trigger: trig.Trigger | None, now: dt.datetime | None = None) -> Summary:
    """Run one monitoring pass; never raises for a failure it can describe (see the module docstring).

    First the decision (recorded in summary.json and pushed as metrics), then the reports.
    """
    use_jemalloc()  # the window is read through pyarrow: see components/arrow_pool.py
    t0 = time.perf_counter()
    now = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    s = Summary(model=settings.model, started_at=now.isoformat())
    evaluated: Evaluated | None = None
    try:
        evaluated = _evaluate(settings, store, trigger, now, s)
        _retry_when_skipped(settings, store, trigger, now, s)
    except (StoreError, RegistryError) as exc:
        s.status, s.message = "error", str(exc)
        s.decision = {"retrain": False, "outcome": "error", "reason": f"no retrain: the pass failed ({exc})"}
    s.timings["decision_s"] = round(time.perf_counter() - t0, 3)
    _record(settings, store, s, t0)
    (log.error if s.status == "error" else log.info)("monitor %s: %s %s", settings.model, s.status, s.decision["reason"] or s.message)
    if evaluated is not None and _wants_reports(settings, s):
        t1 = time.perf_counter()
        _reports(settings, store, evaluated, s)
        s.timings["reports_s"] = round(time.perf_counter() - t1, 3)
        _record(settings, store, s, t0)
    return s


@dataclass
class Evaluated:
    """What the report step needs from an evaluated window."""

    reference: pd.DataFrame
    scan: Any
    schema: Any
    window: Window


def _evaluate(settings: Settings, store: Store, trigger: trig.Trigger | None, now: dt.datetime,
              s: Summary) -> Evaluated | None:
    """Read, test and decide; returns what the reports need when the window was evaluated."""
    reg = Registry(store, settings.model)
    champion = reg.champion()
    if champion is None:
        s.status, s.message = "skipped", f"model {settings.model} has no champion yet: nothing is served, nothing to monitor"
        s.decision.update(outcome="no_champion", reason="no retrain: nothing to compare with")
        return None
    version = s.version = champion.version
    window = current_window(store, settings, now)
    s.window = window.to_dict()
    schema = reg.schema(version)
    try:
        reference = pd.read_parquet(io.BytesIO(reg.read(version, "reference.parquet")))
    except NotFound:
        raise RegistryError(f"version {version} of {settings.model} has no reference.parquet: drift cannot be measured") from None
    missing = [c for c in [*schema.feature_names, PREDICTION] if c not in reference]
    if missing:
        raise RegistryError(f"reference.parquet of {version} lacks column(s) {', '.join(missing)}")
    metrics = reg.metrics(version)
    if len(reference) > settings.sample_size:
        reference = reference.sample(n=settings.sample_size, random_state=settings.seed)

    late = late_mod.late_keys(store, settings.model, window.start, settings.late_log_days)
    feedback, fb_skipped = read_feedback(store, settings.model, window.start, now)
    scan = scan_window(store, settings.model, window, schema, version, reference, settings.sample_size,
                       feedback if feedback.num_rows else None, seed=settings.seed, late=late)
    s.rows = {"in_window": scan.rows_in_window, "evaluated": scan.rows, "by_version": scan.rows_by_version,
              "other_versions": scan.rows_in_window - scan.rows, "sample": len(scan.sample),
              "labelled": scan.labelled_rows, "reference": len(reference), "min_rows": settings.min_rows,
              "late": scan.late_rows}
    s.files = {"read": scan.files_read, "skipped": scan.files_skipped + fb_skipped}
    s.columns = scan.columns
    for f in s.files["skipped"]:
        s.warnings.append(f"skipped {f['key']}: {f['error']}")
    if scan.rows_in_window == 0 and not scan.files_read:
        s.status = "skipped"
        s.message = (f"no prediction logs under predictions/{settings.model}/ for window {window.key}"
                     + (f" ({len(scan.files_skipped)} unreadable file(s))" if scan.files_skipped else ""))
        s.decision.update(outcome="no_logs", reason="no retrain: no prediction logs yet")
        return None
    if scan.rows < settings.min_rows:
        s.status = "skipped"
        others = scan.rows_in_window - scan.rows
        s.message = (f"{scan.rows} rows of version {version} in window {window.key} (< min_rows {settings.min_rows})"
                     + (f"; {others} rows of other versions ignored" if others else ""))
        s.decision.update(outcome="too_few_rows", reason=f"no retrain: too few rows ({scan.rows} < min_rows {settings.min_rows})")
        return None

    kinds = {c.name: c.kind for c in schema.features}
    result = drift_mod.detect_drift(reference, scan.sample, kinds, settings.drift_share_threshold,
                                    prediction_kind="numeric" if schema.task == "regression" else "categorical")
    s.drift = result.to_dict()
    s.quality = quality_mod.compare_quality(
        schema.task, scan.labelled, LABEL, PREDICTION, metrics.get("holdout", {}), metrics.get("primary_metric", ""),
        settings.quality_drop_threshold, scan.labelled_rows, schema.classes)

    _decide(settings, store, trigger, now, window, version, result, s)
    if s.decision.get("done", True):  # a decision not carried out leaves the window to the next pass
        store.write(STATE.format(model=settings.model), json.dumps(window.to_dict()).encode())
        late_mod.mark_seen(store, settings.model, scan.keys_read)
    return Evaluated(reference, scan, schema, window)


def _wants_reports(settings: Settings, s: Summary) -> bool:
    """Whether this pass renders its reports (``monitor_reports``)."""
    if settings.monitor_reports == "never":
        return False
    return settings.monitor_reports == "always" or bool(s.decision.get("wanted"))


def _reports(settings: Settings, store: Store, ev: Evaluated, s: Summary) -> None:
    """Evidently reports into the store and the workspace; a failing report is a warning, not a failed pass."""
    from services.monitoring import report

    reference, scan, schema, window = ev.reference, ev.scan, ev.schema, ev.window
    prefix = f"monitoring/{settings.model}/{window.key}"
    snapshots = []
    try:
        snap = report.drift_report(reference, scan.sample, schema, settings.drift_share_threshold, window.end,
                                   f"drift {window.key}", settings.report_chi2_homogeneity)
        snapshots.append(snap)
        if s.quality and s.quality.get("current") is not None and LABEL in reference:
            snapshots.append(report.quality_report(reference, scan.labelled, schema, window.end, f"quality {window.key}"))
        with tempfile.TemporaryDirectory() as tmp:
            for snap_, name in zip(snapshots, ["report.html", "quality.html"], strict=False):
                path = Path(tmp) / name
                snap_.save_html(str(path))
                store.upload_file(path, f"{prefix}/{name}")
                s.outputs[name.removesuffix(".html")] = f"{prefix}/{name}"
    except StoreError as exc:
        s.warnings.append(f"Evidently report not stored: {exc}")
    except Exception as exc:
        s.warnings.append(f"Evidently report failed: {type(exc).__name__}: {exc}")
        log.exception("Evidently report failed")
    if snapshots and settings.evidently_workspace:
        try:
            s.outputs["evidently_snapshots"] = report.add_to_workspace(settings.evidently_workspace, settings.model, snapshots)
            s.outputs["evidently_workspace"] = settings.evidently_workspace
        except Exception as exc:  # noqa: BLE001 - the UI is a view; the pass stands without it
            s.warnings.append(f"Evidently workspace {settings.evidently_workspace} not updated: {exc}")


def _decide(settings: Settings, store: Store, trigger: trig.Trigger | None, now: dt.datetime, window: Window,
            version: str, result: drift_mod.DriftResult, s: Summary) -> None:
    """Decide, and carry the decision out; ``decision["done"]`` is False when it could not be.

    A failed retrain of an earlier window is retried here when its backoff has passed (even
    if this window is quiet): the earlier decision still stands until it is carried out.
    """
    degraded = bool(s.quality and s.quality.get("degraded"))
    quality_reason = (s.quality or {}).get("reason", "")
    wanted = result.detected or degraded
    why = "; ".join(r for r, on in [(result.reason, result.detected), (f"quality degraded: {quality_reason}", degraded)] if on)
    s.decision = ({"retrain": True, "wanted": True, "outcome": "triggered", "reason": why, "trigger": None} if wanted else
                  {"retrain": False, "outcome": "no_drift", "reason": f"no retrain: {result.reason}; quality: {quality_reason}"})
    if wanted and trigger is None:
        s.decision.update(retrain=False, outcome="no_trigger", reason=f"retrain wanted ({why}) but no trigger is configured")
        return
    if trigger is None:
        return
    if wanted and _no_new_data(trigger, s):
        s.alarm = {"drift": result.detected, "quality_degraded": degraded, "reason": why,
                   "waiting_for": "labelled production data (feedback) or a dataset given with --data"}
        s.decision.update(retrain=False, outcome="alarm", alarm=True, reason=(
            f"ALARM: {why}; no retrain: there is no new labelled data (the retrain would read only "
            f"{getattr(trigger, 'source', 'the champion')}, the champion's own training data, which can only "
            "reproduce it); waiting for labels"))
        wanted = False
    block = _blocking(settings, store, trigger, now)
    if block:
        if wanted:
            s.decision.update(retrain=False, outcome="cooldown" if "cooldown" in block else "in_flight",
                              reason=f"retrain wanted ({why}) but {block}")
        return
    if _retry_pending(settings, store, trigger, now, version, s, wanted) or not wanted:
        return
    key = Window.stamp(window.start)
    request = trig.RetrainRequest(settings.model, key, version, window.to_dict(), why,
                                  f"{settings.model}-retrain-{key.lower()}")
    if not trig.claim(store, request, trigger.kind, now):
        s.decision.update(retrain=False, outcome="duplicate",
                          reason=f"retrain wanted ({why}) but window {key} already triggered one (another pass)")
        s.decision["trigger"] = trig.record_key(settings.model, key)
        return
    _start(settings, store, trigger, request, s, now)


def _blocking(settings: Settings, store: Store, trigger: trig.Trigger, now: dt.datetime) -> str | None:
    return trig.blocking(store, settings.model, trigger, dt.timedelta(minutes=settings.cooldown_minutes), now,
                         dt.timedelta(minutes=settings.retry_backoff_minutes), settings.retry_max_attempts)


def _retry_pending(settings: Settings, store: Store, trigger: trig.Trigger, now: dt.datetime, version: str,
                   s: Summary, wanted: bool) -> bool:
    """Carry out an earlier window's failed retrain when its backoff has passed; True when one is pending.

    The caller has checked that nothing is in flight; ``retake`` is a conditional replace, so
    of passes racing here exactly one starts the retry.
    """
    retry = trig.pending(store, settings.model, version)
    if retry is None:
        return False
    if now < dt.datetime.fromisoformat(retry["retry_at"]):
        note = (f"retrain {retry['key']} failed (attempt {retry.get('attempts', 1)}: {retry.get('error')}); "
                f"next attempt at {retry['retry_at']}")
        s.decision.update(retrain=False, reason=f"{s.decision['reason']}; {note}".lstrip("; "))
        if wanted:
            s.decision.update(outcome="in_flight", done=False)
        return True
    record = trig.retake(store, settings.model, retry["key"], now)
    if record is None:
        s.decision.update(retrain=False, reason=f"retrain {retry['key']} is being retried by another pass")
        if wanted:
            s.decision["outcome"] = "in_flight"
        return True
    request = trig.RetrainRequest(**{f: record[f] for f in ("model", "key", "version", "window", "reason", "run_name")})
    s.decision.update(retrain=True, wanted=True, outcome="triggered", retry=record["attempts"],
                      reason=f"retrying retrain {request.key} (attempt {record['attempts']}: {request.reason})")
    _start(settings, store, trigger, request, s, now)
    return True


def _retry_when_skipped(settings: Settings, store: Store, trigger: trig.Trigger | None, now: dt.datetime, s: Summary) -> None:
    """A pass with nothing to evaluate still carries out an earlier window's pending retry."""
    if trigger is None or s.status != "skipped" or not s.version:
        return
    block = _blocking(settings, store, trigger, now)
    if block is None:
        _retry_pending(settings, store, trigger, now, s.version, s, False)


def _no_new_data(trigger: trig.Trigger, s: Summary) -> bool:
    """True when a retrain would read only what the champion was trained on (no --data, no new labels)."""
    if not getattr(trigger, "reuses_champion_data", False):
        return False
    return not (getattr(trigger, "include_feedback", False) and s.rows.get("labelled", 0) > 0)


def _start(settings: Settings, store: Store, trigger: trig.Trigger, request: trig.RetrainRequest, s: Summary,
           now: dt.datetime) -> None:
    """Start the claimed retrain and record how it went; a failure is recorded with its retry time."""
    s.decision["trigger"] = trig.record_key(settings.model, request.key)
    base = dt.timedelta(minutes=settings.retry_backoff_minutes)
    try:
        started = trigger.start(request)
    except Exception as exc:  # noqa: BLE001 - whatever went wrong, the record must not claim success
        rec = trig.failed(store, settings.model, request.key, f"{type(exc).__name__}: {exc}", now, base,
                          settings.retry_max_attempts)
        s.status, s.message = "error", f"retrain could not be started: {exc}"
        s.decision.update(retrain=False, outcome="failed", done=False,
                          reason=f"{s.decision['reason']}; the {trigger.kind} trigger failed: {exc}"
                          + (f" (next attempt at {rec['retry_at']})" if rec.get("retry_at") else " (given up)"))
        return
    if started.get("status") == "failed":
        rec = trig.failed(store, settings.model, request.key, str(started.get("error")), now, base,
                          settings.retry_max_attempts, {k: v for k, v in started.items() if k not in ("status", "error")})
        s.decision.update(outcome="failed", done=False)
    else:
        rec = trig.update(store, settings.model, request.key, started, now)
    s.decision["run"] = {k: rec.get(k) for k in ("status", "run_id", "version", "registered", "promoted", "error",
                                                  "retry_at", "attempts") if k in rec}
    if rec.get("status") in ("failed", "given_up"):
        s.status, s.message = "error", f"retrain {request.key} failed: {rec.get('error')}"
    elif rec.get("status") == "succeeded" and not rec.get("registered", True):
        s.decision["reason"] += f"; the retrain registered nothing new ({rec.get('promotion_reason') or 'same data'})"


def _record(settings: Settings, store: Store, s: Summary, t0: float) -> None:
    """Write summary.json and push the metrics; called after the decision and again after the reports."""
    if not s.retrains and s.decision.get("outcome") != "error":  # a failed trigger is counted; a failed store cannot be
        s.retrains = _retrains(store, s)
    s.duration_s = round(time.perf_counter() - t0, 3)
    s.finished_at_unix = round(time.time(), 3)
    s.metrics = {f.key: f.value for f in monitor_metrics.figures(s.to_dict())}
    _push(settings, s)
    status = s.status
    _write_summary(store, s)
    if s.status != status:  # summary.json could not be written: the pass failed after all
        _push(settings, s)


def _push(settings: Settings, s: Summary) -> None:
    """Push the metrics when ``pushgateway`` is set; a failed push is a warning (the store has the results)."""
    if not settings.pushgateway:
        return
    try:
        monitor_metrics.push(settings.pushgateway, settings.model, s.to_dict())
        s.outputs["pushgateway"] = settings.pushgateway
    except Exception as exc:  # noqa: BLE001 - the pass's results are in the store; the push is a view
        s.warnings.append(f"metrics not pushed to {settings.pushgateway}: {type(exc).__name__}: {exc}")
        log.warning("metrics not pushed to %s: %s", settings.pushgateway, exc)


COUNTERS = "monitoring/{model}/counters.json"


def _retrains(store: Store, s: Summary) -> dict[str, Any]:
    """The running totals behind the retrain counters: decisions (kept in the store) and trigger records.

    A pass that wanted a retrain adds one to its outcome's count. Passes do not overlap (the
    CronJob forbids it), so a read-modify-write is enough.
    """
    key = COUNTERS.format(model=s.model)
    try:
        try:
            counts = json.loads(store.read(key)).get("decisions_total", {})
        except NotFound:
            counts = {}
        outcome = s.decision.get("outcome")
        if s.decision.get("wanted") and outcome in monitor_metrics.DECISION_OUTCOMES:
            counts[outcome] = counts.get(outcome, 0) + 1
            store.write(key, json.dumps({"decisions_total": counts}, indent=2).encode())
        recs = trig.records(store, s.model)
    except (StoreError, ValueError) as exc:
        s.warnings.append(f"retrain counters not read: {exc}")
        return {"unavailable": str(exc)}  # not empty: the report step must not count this pass again
    now = dt.datetime.now(dt.UTC)
    in_flight = sum(r.get("status") in trig.IN_FLIGHT
                    and now - dt.datetime.fromisoformat(r["created_at"]) <= trig.STALE_AFTER for r in recs)
    by_status: dict[str, int] = {}
    failed_attempts = 0
    for r in recs:
        by_status[str(r.get("status"))] = by_status.get(str(r.get("status")), 0) + 1
        # every attempt of a record failed but the one still running or succeeded: a count that
        # only grows, even when a failed record is retried
        attempts = int(r.get("attempts", 1))
        failed_attempts += attempts if r.get("status") in ("failed", "given_up") else attempts - 1
    return {"decisions_total": {o: counts.get(o, 0) for o in monitor_metrics.DECISION_OUTCOMES},
            "records": {"total": len(recs), "failed": failed_attempts, "in_flight": in_flight,
                        "by_status": by_status}}


def _write_summary(store: Store, s: Summary) -> None:
    if not s.window:
        return
    key = f"monitoring/{s.model}/{s.window['key']}/summary.json"
    s.outputs["summary"] = key
    try:
        store.write(key, json.dumps(s.to_dict(), indent=2, default=str).encode())
    except StoreError as exc:
        s.status, s.message = "error", f"{s.message}; summary not written: {exc}".lstrip("; ")


def table(s: Summary) -> str:
    """A short plain-text table of the pass for the terminal and the job log."""
    lines = [f"model {s.model}  version {s.version or '-'}  window {(s.window or {}).get('key', '-')}  status {s.status}"]
    if s.message:
        lines.append(f"  {s.message}")
    if s.rows:
        lines.append(f"  rows: {s.rows.get('evaluated', 0)} evaluated, {s.rows.get('other_versions', 0)} other versions, "
                     f"{s.rows.get('labelled', 0)} labelled, sample {s.rows.get('sample', 0)}")
    if s.drift:
        lines.append(f"  drift share {s.drift['share']:.2f} (threshold {s.drift['share_threshold']})")
        lines.append(f"  {'column':<24} {'method':<17} {'score':>10} {'p-value':>10}  drift")
        for c in sorted(s.drift["columns"], key=lambda c: c["p_value"])[:10]:
            flag = "yes*" if c["significant"] else ("yes" if c["drifted"] else "")
            lines.append(f"  {c['column'][:24]:<24} {c['method']:<17} {c['statistic']:>10.4f} {c['p_value']:>10.3g}  {flag}")
    if s.quality and s.quality.get("reason"):
        lines.append(f"  quality: {s.quality['reason']}")
    if s.alarm:
        lines.append(f"  ALARM: {s.alarm['reason']} - waiting for {s.alarm['waiting_for']}")
    lines.append(f"  decision: {'RETRAIN' if s.decision.get('retrain') else 'no retrain'} - {s.decision.get('reason', '')}")
    for w in s.warnings[:5]:
        lines.append(f"  warning: {w}")
    lines += _metrics_lines(s)
    return "\n".join(lines)


def _metrics_lines(s: Summary, per_family: int = 10) -> list[str]:
    """The pass's metrics as Prometheus shows them (at most ``per_family`` series of each)."""
    t = s.timings
    lines = [f"  time: decision {t.get('decision_s', 0):.2f} s"
             + (f", reports {t['reports_s']:.2f} s" if "reports_s" in t else ", reports not rendered")
             + f", total {s.duration_s:.2f} s"]
    pushed = s.outputs.get("pushgateway")
    lines.append(f"  metrics{f' (pushed to {pushed})' if pushed else ''}:")
    seen: dict[str, int] = {}
    for key, value in s.metrics.items():
        name = key.split("{")[0]
        seen[name] = seen.get(name, 0) + 1
        if seen[name] <= per_family:
            lines.append(f"    {key} {value:g}")
    hidden = sum(max(0, n - per_family) for n in seen.values())
    if hidden:
        lines.append(f"    ... {hidden} more series in summary.json")
    return lines


def ui_command(settings: Settings, port: int = 8000) -> list[str]:
    """The command that serves the Evidently UI over this workspace (``flywheel monitor --ui``)."""
    return ["evidently", "ui", "--workspace", settings.evidently_workspace, "--port", str(port)]
