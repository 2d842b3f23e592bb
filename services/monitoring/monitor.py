"""One monitoring pass: the entry point of ``flywheel monitor`` and of the CronJob.

A pass reads the current window of prediction logs and the served version's reference,
tests drift per feature (drift.py), compares quality on the labelled rows with the
version's holdout quality (quality.py), decides (decision.py: a pure function of those
figures and the trigger records) and carries the decision out (trigger.py: claim, retake,
start). The decision comes first: summary.json and the metrics (metrics.py, pushed to a
Pushgateway when ``pushgateway`` is set) are written as soon as it is made. Evidently's
reports (report.html, quality.html when labels exist) and the workspace snapshot are costly
fixed work (plotly rendering), so they are a second step, rendered after the decision when
``monitor_reports`` asks for them, and the summary is then updated with where they are.

Statuses and exit codes. The status says whether the window was evaluated: ``ok``, ``skipped``
(nothing to evaluate yet: no champion, no logs, too few rows) or ``error`` (the store or the
reference failed; an error never starts a retrain). The exit code is 0; 1 for ``error`` (a
retry of the Job may help); 3 when a retrain failed: the one this pass started, an earlier one
still waiting for its retry time, or one given up (outcomes ``failed``, ``failed_waiting``,
``given_up``). A Job retry cannot help with those (the trigger record says when the retrain is
tried again, and a later scheduled pass does it), so the chart fails the Job at once on exit 3.

Windows. With ``window_minutes`` they are aligned to the clock, so passes in the same slot
evaluate the same window. Otherwise a window runs from the end of the last window whose
decision was carried out to now. A window whose retrain failed stays open
(``last_window.json`` key ``open``): until the retry time every pass evaluates that same window
again (a Job's retry seconds later writes no second window), and the first pass after it
evaluates from the open window's start to now and retries.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import tempfile
import time
from dataclasses import dataclass, field, replace
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
from services.monitoring.compaction import KINDS, compact
from services.monitoring.decision import (
    RETRAIN_FAILED,
    Decision,
    DecisionInput,
    Failure,
    Figures,
    Outcome,
    Signal,
    Thresholds,
    TriggerInfo,
    decide,
    skipped,
)
from services.monitoring.scan import Window, read_feedback, scan_window

log = logging.getLogger(__name__)
STATE = "monitoring/{model}/last_window.json"
EXIT_PASS_FAILED = 1
EXIT_RETRAIN_FAILED = 3  # not 2: that is the CLI's usage error


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
    decision: Decision = field(default_factory=lambda: Decision(Outcome.ERROR, "not decided"))
    alarm: dict[str, Any] | None = None  # drift without new labels: a human is told, no retrain runs
    outputs: dict[str, Any] = field(default_factory=dict)
    retrains: dict[str, Any] = field(default_factory=dict)
    compaction: dict[str, Any] = field(default_factory=dict)  # per log: hours, parts and rows folded in
    metrics: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    started_at: str = ""
    finished_at_unix: float | None = None
    timings: dict[str, float] = field(default_factory=dict)
    duration_s: float = 0.0

    @property
    def exit_code(self) -> int:
        """0, ``EXIT_PASS_FAILED`` or ``EXIT_RETRAIN_FAILED`` (see the module docstring)."""
        if self.status == "error":
            return EXIT_PASS_FAILED
        return EXIT_RETRAIN_FAILED if self.decision.outcome in RETRAIN_FAILED else 0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__) | {"decision": self.decision.to_dict(), "exit_code": self.exit_code}


def current_window(store: Store, settings: Settings, now: dt.datetime, reopen: bool = False) -> Window:
    """The window this pass evaluates.

    With ``window_minutes`` windows are aligned to multiples of it (a pass at 10:07 with 60
    evaluates 09:00-10:00), so passes racing on one window agree on it; otherwise the window
    runs from the end of the last window whose decision was carried out (or the first log) to
    now, or is the open window again when ``reopen`` (its retrain waits for its retry time).
    """
    now = now.astimezone(dt.UTC).replace(microsecond=0)
    if settings.window_minutes:
        step = settings.window_minutes * 60
        end = dt.datetime.fromtimestamp(int(now.timestamp()) // step * step, dt.UTC)
        return Window(end - dt.timedelta(seconds=step), end)
    state = _state(store, settings.model)
    if reopen and state.get("open"):
        return Window.of(state["open"])
    return Window(dt.datetime.fromisoformat(state["end"]) if state.get("end") else None, now)


def _state(store: Store, model: str) -> dict[str, Any]:
    """``last_window.json``: the last window whose decision was carried out, and the open one."""
    try:
        return json.loads(store.read(STATE.format(model=model)))
    except NotFound:
        return {}


def _close(store: Store, settings: Settings, window: Window, decision: Decision, keys_read: list[str]) -> None:
    """Record the evaluated window: done (the next window starts at its end) or open for its retry."""
    key = STATE.format(model=settings.model)
    if decision.done:
        store.write(key, json.dumps(window.to_dict()).encode())
        late_mod.mark_seen(store, settings.model, keys_read)
    else:
        store.write(key, json.dumps({**_state(store, settings.model), "open": window.to_dict()}).encode())


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
        evaluated, facts = _evaluate(settings, store, trigger, now, s)
        s.decision = _carry_out(settings, store, trigger, decide(facts), now)
        if s.decision.alarm:
            s.alarm = {"drift": bool(facts.figures.drift and facts.figures.drift.fired),
                       "quality_degraded": bool(facts.figures.quality and facts.figures.quality.fired),
                       "reason": s.decision.why,
                       "waiting_for": "labelled production data (feedback) or a dataset given with --data"}
        if evaluated is not None:
            _close(store, settings, evaluated.window, s.decision, evaluated.scan.keys_read)
    except (StoreError, RegistryError) as exc:
        s.status, s.message = "error", str(exc)
        s.decision = Decision(Outcome.ERROR, f"no retrain: the pass failed ({exc})")
    s.timings["decision_s"] = round(time.perf_counter() - t0, 3)
    _record(settings, store, s, t0, now)
    log.log(logging.ERROR if s.exit_code else logging.INFO, "%s", verdict(s))
    if evaluated is not None and _wants_reports(settings, s):
        t1 = time.perf_counter()
        _reports(settings, store, evaluated, s)
        s.timings["reports_s"] = round(time.perf_counter() - t1, 3)
        _record(settings, store, s, t0, now)
    if settings.log_compaction and s.status != "error":
        t2 = time.perf_counter()
        _compact(settings, store, now, s)
        s.timings["compaction_s"] = round(time.perf_counter() - t2, 3)
        _write_summary(store, s)
    return s


def _compact(settings: Settings, store: Store, now: dt.datetime, s: Summary) -> None:
    """Fold the log parts of each closed hour into one file (compaction.py), after the decision and reports.

    Prediction parts no pass has read yet stay apart while late logs are looked for
    (``late.Settled``). A failure is a warning naming the hour; the next pass completes it.
    """
    settled = late_mod.Settled(store, settings.model, settings.late_log_days, now)
    for kind in KINDS:
        predictions = kind == "predictions"
        try:
            done = compact(store, f"{kind}/{settings.model}", now.timestamp(), settings.log_compaction_grace_minutes * 60,
                           compactable=settled if predictions else None, before_commit=settled.mark if predictions else None)
        except StoreError as exc:  # the listing failed: nothing was started
            s.warnings.append(f"the {kind} log of {settings.model} was not compacted: {exc}")
            log.warning("%s", s.warnings[-1])
            continue
        s.compaction[kind] = done.to_dict()
        s.warnings += done.errors


@dataclass
class Evaluated:
    """What the report step needs from an evaluated window."""

    reference: pd.DataFrame
    scan: Any
    schema: Any
    window: Window


def _evaluate(settings: Settings, store: Store, trigger: trig.Trigger | None, now: dt.datetime,
              s: Summary) -> tuple[Evaluated | None, DecisionInput]:
    """Read and test the window; returns what the reports need (when evaluated) and what decide() reads."""
    thresholds = Thresholds.of(settings)
    reg = Registry(store, settings.model)
    champion = reg.champion()
    if champion is None:
        s.status, s.message = "skipped", f"model {settings.model} has no champion yet: nothing is served, nothing to monitor"
        return None, DecisionInput(settings.model, None, Figures(None), thresholds, TriggerInfo.of(trigger), (), now)
    version = s.version = champion.version
    refreshed = trig.refresh(store, settings.model, trigger, now, dt.timedelta(minutes=settings.retry_backoff_minutes),
                             settings.retry_max_attempts)

    def facts(figures: Figures, window: Window | None) -> DecisionInput:
        return DecisionInput(settings.model, window, figures, thresholds, TriggerInfo.of(trigger), refreshed.records,
                             now, refreshed.given_up)

    waiting = trig.pending(refreshed.records, version)
    window = current_window(store, settings, now, reopen=trigger is not None and waiting is not None and waiting.waits(now))
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
    figures = Figures(version, logs=bool(scan.rows_in_window or scan.files_read), rows=scan.rows,
                      labelled_rows=scan.labelled_rows)
    skip = skipped(figures, thresholds)
    if skip is Outcome.NO_LOGS:
        s.status = "skipped"
        s.message = (f"no prediction logs under predictions/{settings.model}/ for window {window.key}"
                     + (f" ({len(scan.files_skipped)} unreadable file(s))" if scan.files_skipped else ""))
        return None, facts(figures, window)
    if skip is Outcome.TOO_FEW_ROWS:
        s.status = "skipped"
        others = scan.rows_in_window - scan.rows
        s.message = (f"{scan.rows} rows of version {version} in window {window.key} (< min_rows {settings.min_rows})"
                     + (f"; {others} rows of other versions ignored" if others else ""))
        return None, facts(figures, window)

    kinds = {c.name: c.kind for c in schema.features}
    result = drift_mod.detect_drift(reference, scan.sample, kinds, settings.drift_share_threshold,
                                    prediction_kind="numeric" if schema.task == "regression" else "categorical")
    s.drift = result.to_dict()
    s.quality = quality_mod.compare_quality(
        schema.task, scan.labelled, LABEL, PREDICTION, metrics.get("holdout", {}), metrics.get("primary_metric", ""),
        settings.quality_drop_threshold, scan.labelled_rows, schema.classes)
    figures = replace(figures, drift=Signal(result.detected, result.reason),
                      quality=Signal(bool(s.quality.get("degraded")), str(s.quality.get("reason", ""))))
    return Evaluated(reference, scan, schema, window), facts(figures, window)


def _wants_reports(settings: Settings, s: Summary) -> bool:
    """Whether this pass renders its reports (``monitor_reports``)."""
    if settings.monitor_reports == "never":
        return False
    return settings.monitor_reports == "always" or s.decision.wanted


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


def _carry_out(settings: Settings, store: Store, trigger: trig.Trigger | None, decision: Decision,
               now: dt.datetime) -> Decision:
    """Carry the decision's action out and return the decision as it ended.

    A claim (conditional create) or a retake (conditional replace) lost to another pass ends
    as ``duplicate``; otherwise the retrain is started (``_start``).
    """
    if trigger is None or (decision.request is None and decision.retry_of is None):
        return decision
    if decision.request is not None:
        request = decision.request
        if not trig.claim(store, request, trigger.kind, now):
            return replace(decision, outcome=Outcome.DUPLICATE, request=None, reason=(
                f"retrain wanted ({decision.reason}) but window {request.key} already triggered one (another pass)"))
    else:
        record = trig.retake(store, settings.model, str(decision.retry_of), now)
        if record is None:
            return replace(decision, outcome=Outcome.DUPLICATE, retry_of=None,
                           reason=f"retrain {decision.retry_of} is being retried by another pass")
        request = trig.RetrainRequest(**{f: record[f] for f in ("model", "key", "version", "window", "reason", "run_name")})
    return _start(settings, store, trigger, replace(decision, request=None, retry_of=None), request, now)


def _start(settings: Settings, store: Store, trigger: trig.Trigger, decision: Decision, request: trig.RetrainRequest,
           now: dt.datetime) -> Decision:
    """Start the claimed retrain and record how it went; a failure is recorded with its retry time."""
    base = dt.timedelta(minutes=settings.retry_backoff_minutes)
    try:
        started = trigger.start(request)
    except Exception as exc:  # noqa: BLE001 - whatever went wrong, the record must not claim success
        rec = trig.failed(store, settings.model, request.key, f"{type(exc).__name__}: {exc}", now, base,
                          settings.retry_max_attempts)
        return _failed(settings, decision, rec, f"the {trigger.kind} trigger failed: {exc}")
    if started.get("status") == "failed":
        rec = trig.failed(store, settings.model, request.key, str(started.get("error")), now, base,
                          settings.retry_max_attempts, {k: v for k, v in started.items() if k not in ("status", "error")})
        return _failed(settings, decision, rec, f"the retrain failed: {started.get('error')}")
    rec = trig.update(store, settings.model, request.key, started, now)
    reason = decision.reason
    if rec.get("status") == "succeeded" and not rec.get("registered", True):
        reason += f"; the retrain registered nothing new ({rec.get('promotion_reason') or 'same data'})"
    return replace(decision, reason=reason, run=_run(rec))


def _failed(settings: Settings, decision: Decision, rec: dict[str, Any], why: str) -> Decision:
    """The decision of a pass whose retrain failed: failed (retried after the backoff) or given_up."""
    retry_at = dt.datetime.fromisoformat(rec["retry_at"]) if rec.get("retry_at") else None
    failure = Failure(str(rec["key"]), int(rec.get("attempts", 1)), settings.retry_max_attempts, str(rec.get("error")),
                      retry_at)
    then = f"next attempt at {retry_at.isoformat()}" if retry_at else "given up"
    return replace(decision, outcome=Outcome.FAILED if retry_at else Outcome.GIVEN_UP, failure=failure, run=_run(rec),
                   reason=f"{decision.reason}; {why} ({then})")


def _run(rec: dict[str, Any]) -> dict[str, Any]:
    """The fields of a trigger record a summary shows about its run."""
    return {k: rec.get(k) for k in ("status", "run_id", "version", "registered", "promoted", "error", "retry_at",
                                    "attempts") if k in rec}


def _record(settings: Settings, store: Store, s: Summary, t0: float, now: dt.datetime) -> None:
    """Write summary.json and push the metrics; called after the decision and again after the reports."""
    if not s.retrains and s.decision.outcome is not Outcome.ERROR:  # a failed store cannot be counted
        s.retrains = _retrains(store, s, now)
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


def _retrains(store: Store, s: Summary, now: dt.datetime) -> dict[str, Any]:
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
        outcome = s.decision.outcome.value
        if s.decision.wanted and outcome in monitor_metrics.DECISION_OUTCOMES:
            counts[outcome] = counts.get(outcome, 0) + 1
            store.write(key, json.dumps({"decisions_total": counts}, indent=2).encode())
        recs = trig.records(store, s.model)
    except (StoreError, ValueError) as exc:
        s.warnings.append(f"retrain counters not read: {exc}")
        return {"unavailable": str(exc)}  # not empty: the report step must not count this pass again
    # in flight as the decision counts it: the same rule, at the pass's time
    in_flight = sum(trig.TriggerRecord.of(r).in_flight(now) for r in recs)
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
    lines.append(f"  decision: {'RETRAIN' if s.decision.retrain else 'no retrain'} ({s.decision.outcome}) - {s.decision.reason}")
    for w in s.warnings[:5]:
        lines.append(f"  warning: {w}")
    lines += _metrics_lines(s)
    return "\n".join(lines)


def verdict(s: Summary) -> str:
    """The pass in one sentence: the last line ``flywheel monitor`` prints (the monitor Job's log)."""
    d, f = s.decision, s.decision.failure
    if s.status == "error":
        return f"error: the monitoring pass of model {s.model} failed (exit {s.exit_code}): {_one_line(s.message)}"
    if f is not None:
        head, error = f"error: retrain {f.key} of model {s.model}", _one_line(f.error)
        code = f"(exit {s.exit_code}: a retry of the job cannot help)"
        if d.outcome is Outcome.FAILED_WAITING and f.retry_at:
            return (f"{head} failed (attempt {f.attempts} of {f.max_attempts}: {error}) and waits for its next attempt "
                    f"at {f.retry_at.isoformat(timespec='seconds')}; this pass started nothing {code}")
        if f.retry_at:
            return (f"{head} failed (attempt {f.attempts} of {f.max_attempts}): {error}; next attempt at "
                    f"{f.retry_at.isoformat(timespec='seconds')} {code}")
        return (f"{head} failed on its last attempt ({f.attempts} of {f.max_attempts}): {error}; it is given up and "
                f"version {s.version} keeps serving {code}")
    return f"monitor {s.model}: {s.status}, {d.outcome}: {_one_line(d.reason)}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


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
