"""Register: write an immutable model version, then promote it only if it passes the gate."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from components.data import Schema
from components.package import ModelPackage
from components.registry import PromotionConflict, Registry, utcnow
from components.settings import Settings
from components.tune import LEADERBOARD_ROWS, counts, leaderboard, leaderboard_markdown


@dataclass(frozen=True)
class Decision:
    version: str
    promoted: bool
    reason: str
    challenger_score: float
    champion_version: str | None
    champion_score: float | None


def gate(evaluation: dict[str, Any], champion_version: str | None, settings: Settings) -> tuple[bool, str]:
    """The promotion rule: an absolute floor, then beat the champion by the margin."""
    metric = evaluation["primary_metric"]
    score = evaluation["challenger"][metric]
    floor = settings.min_accuracy if evaluation["task"] == "classification" else settings.min_r2
    if score < floor:
        return False, f"{metric} {score:.4f} is below the floor {floor:.4f}"
    if champion_version is None:
        return True, f"first model: {metric} {score:.4f} passes the floor {floor:.4f}"
    champ = evaluation.get("champion")
    if not champ:  # evaluate fails the run first; a missing comparison never promotes
        return False, f"{metric} {score:.4f} passes the floor but champion {champion_version} was not scored on the holdout"
    if score > champ[metric] + settings.promotion_margin:
        return True, f"{metric} {score:.4f} beats champion {champion_version} ({champ[metric]:.4f}) by more than {settings.promotion_margin}"
    return False, f"{metric} {score:.4f} does not beat champion {champion_version} ({champ[metric]:.4f}) + margin {settings.promotion_margin}"


def model_card(version: str, model_name: str, schema: Schema, evaluation: dict[str, Any], best: dict[str, Any],
               fingerprint: str, run_id: str, decision: str, trials: list[dict[str, Any]] | None = None) -> str:
    m = evaluation["challenger"]
    search = f"\n## Search (best trial: {best['candidate']['id']})\n\n{leaderboard_markdown(trials)}" if trials else ""
    metrics = "\n".join(f"| {k} | {v:.4f} |" for k, v in m.items() if isinstance(v, float))
    return f"""# {model_name} {version}

- Task: {schema.task}; target `{schema.target}`; {len(schema.features)} features
- Data fingerprint: `{fingerprint}`
- Pipeline run: `{run_id}`
- Model: {best['candidate']['family']} {json.dumps(best['candidate']['params'])} (feature selection: {best['candidate'].get('select', False)})
- Cross-validated {best['metric']}: {best['score']:.4f} ± {best['std']:.4f} on {best['rows']} rows
- Created: {utcnow()}
- Promotion decision: {decision}

## Holdout metrics

| metric | value |
|---|---|
{metrics}

{search}
## Columns

{schema.column_markdown()}
"""


def search_summary(trials: list[dict[str, Any]], best: dict[str, Any]) -> dict[str, Any]:
    """What metrics.json says of the search: the best trial, the trial counts and the leaderboard's first rows."""
    return {"best": best["candidate"]["id"], "trials": counts(trials), "leaderboard": leaderboard(trials, top=LEADERBOARD_ROWS)}


def register(
    registry: Registry,
    package: ModelPackage,
    schema: Schema,
    evaluation: dict[str, Any],
    best: dict[str, Any],
    fingerprint: str,
    run_id: str,
    champion_version: str | None,
    settings: Settings,
    dataset: dict[str, Any] | None = None,
) -> Decision:
    """Write the version (manifest last), then apply the promotion gate and record why.

    The same data and the same chosen candidate give no new version: the existing one is
    returned, so a re-run (after the champion changed under the cache) never duplicates it.
    """
    for existing in reversed(registry.versions()):
        m = registry.manifest(existing)
        if m.get("fingerprint") == fingerprint and m.get("candidate") == best["candidate"]:
            champ = registry.champion()
            return Decision(existing, False, f"same data and model as {existing}: nothing new to register",
                            m.get("score", float("nan")), champ.version if champ else None, None)
    version = registry.claim_version()
    promoted, reason = gate(evaluation, champion_version, settings)
    trials = json.loads(package.trials) if package.trials else None
    metrics = {"task": schema.task, "primary_metric": evaluation["primary_metric"], "holdout": evaluation["challenger"],
               "cv": {k: best[k] for k in ("metric", "score", "std", "rows")},
               **({"search": search_summary(trials, best)} if trials else {})}
    files = {
        **package.files(),
        "schema.json": schema.to_json().encode(),
        "metrics.json": json.dumps(metrics, indent=2).encode(),
        "card.md": model_card(version, registry.model, schema, evaluation, best, fingerprint, run_id, reason, trials).encode(),
    }
    registry.write_version(version, files, {
        "fingerprint": fingerprint, "run_id": run_id, "candidate": best["candidate"], "dataset": dataset,
        # how the refit trained: engine and workers (components/refit.py refit_and_package)
        "training": best.get("training", {"engine": "in-process", "workers": 1}),
        "primary_metric": evaluation["primary_metric"],
        "score": evaluation["challenger"][evaluation["primary_metric"]],
    })
    if promoted:
        try:
            registry.promote(version, reason, expected=champion_version)
        except PromotionConflict as exc:
            promoted, reason = False, f"not promoted: {exc}"
    champ = evaluation.get("champion") or {}
    decision = Decision(version, promoted, reason, evaluation["challenger"][evaluation["primary_metric"]],
                        champion_version, champ.get(evaluation["primary_metric"]))
    registry.record_decision(version, {**asdict(decision), "decided_at": utcnow(), "run_id": run_id})
    return decision
