"""The two retrain triggers the monitor can be handed (``services.monitoring.trigger.Trigger``).

* ``LocalTrigger`` (embedded default): runs the training pipeline on this machine with
  kfp.local and waits for it; the trigger record ends as succeeded/failed with the version.
* ``KFPTrigger`` (cluster): starts a run of the uploaded pipeline version through the KFP
  API (uploading the compiled package first if no version holds it) in a named experiment,
  and records the run id; later passes poll the run's state. Without a package file it
  compiles the pipeline from the code installed beside it (the monitor image's own), for
  the component image the settings name.

Both retrain on "the latest data" through one path (``retrain_spec``): the configured dataset
(by default the champion's own recorded source), plus, when ``include_feedback`` is on, the
labelled production rows (logged predictions joined to their feedback labels) as Parquet
parts beside it (services/monitoring/feedback.py). The pipeline is handed the source and the
parts (the ``additions`` parameter, store keys a cluster's step pods read like the source) and
ingest reads them as one dataset; no row of the source passes through the monitor. Any error
on that path ends the trigger as ``failed`` with one sentence, never as an exception.
"""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from components.data import REQUEST_ID, DataError, DatasetSpec
from components.registry import Registry
from components.runtime import spec_of
from components.settings import ConfigError, Settings
from components.status import sentence
from components.store import Store, StoreError, open_store
from pipelines import kfp_client
from services.monitoring import feedback
from services.monitoring.trigger import RetrainRequest, TriggerError

log = logging.getLogger(__name__)


def champion_spec(store: Store, model: str) -> DatasetSpec | None:
    """The dataset the champion was trained on, as its manifest recorded it (None without a champion)."""
    reg = Registry(store, model)
    champ = reg.champion()
    dataset = reg.manifest(champ.version).get("dataset") if champ else None
    return spec_of(dataset) if dataset else None


def retrain_spec(spec: DatasetSpec, settings: Settings, request: RetrainRequest, include_feedback: bool) -> DatasetSpec:
    """The dataset a retrain reads: ``spec``, or ``spec`` plus parts of labelled production rows.

    The parts are those the decided-against version trained on (its manifest's, and any the
    spec names) plus one new part, ``datasets/<model>-feedback/<run>.parquet``, holding the
    labelled rows none of them holds (by request id, recorded as an id column). The rows are
    in the version's schema types; the source is neither read nor copied.
    """
    if not include_feedback:
        return spec
    store = open_store(settings.store, settings)
    reg = Registry(store, request.model)
    try:
        schema = reg.schema(request.version)
    except (StoreError, ValueError, TypeError, KeyError) as exc:
        raise DataError(f"the schema of {request.model} {request.version} "
                        f"({reg.key(request.version, 'schema.json')}) cannot be read ({sentence(exc)})") from None
    recorded = reg.manifest(request.version).get("dataset") or {}
    earlier = tuple(dict.fromkeys((*spec.additions, *recorded.get("additions", ()))))
    parts = feedback.add_production_rows(store, request.model, schema, spec.timestamp, earlier,
                                         dt.datetime.fromisoformat(request.window["end"]),
                                         feedback.part_key(request.model, request.run_name))
    if not parts:
        return spec
    ids = spec.id_columns if REQUEST_ID in spec.id_columns else (*spec.id_columns, REQUEST_ID)
    return replace(spec, additions=parts, id_columns=ids)


def _prepared(spec: DatasetSpec, settings: Settings, request: RetrainRequest,
              include_feedback: bool) -> tuple[DatasetSpec | None, dict[str, Any] | None]:
    """The retrain's dataset, or the failed record that says in one sentence why there is none."""
    try:
        return retrain_spec(spec, settings, request, include_feedback), None
    except Exception as exc:
        if not isinstance(exc, (DataError, StoreError)):
            log.exception("retrain %s: its data could not be prepared", request.run_name)
        why = sentence(exc) if isinstance(exc, (DataError, StoreError)) else f"{type(exc).__name__}: {sentence(exc)}"
        return None, {"status": "failed", "run_id": None,
                      "error": f"the data of retrain {request.run_name} could not be prepared: {why}"}


class LocalTrigger:
    """Run the training pipeline locally (kfp.local) and wait for it."""

    kind = "local"

    def __init__(self, settings: Settings, spec: DatasetSpec, include_feedback: bool = False,
                 reuses_champion_data: bool = False) -> None:
        self.settings, self.spec, self.include_feedback = settings, spec, include_feedback
        # no --data: the spec is the champion's own training source (the monitor then needs new labels)
        self.reuses_champion_data, self.source = reuses_champion_data, spec.source

    def start(self, request: RetrainRequest) -> dict[str, Any]:
        from pipelines.local.runner import (  # pipelines/ sits above the monitor
            PipelineFailed,
            run_training,
        )

        spec, failed = _prepared(self.spec, self.settings, request, self.include_feedback)
        if spec is None:
            return failed
        data = {"source": spec.source, "additions": list(spec.additions)}
        try:
            result = run_training(spec, self.settings, run_name=request.run_name)
        except Exception as exc:
            if not isinstance(exc, (DataError, StoreError, PipelineFailed)):
                log.exception("retrain run %s failed", request.run_name)
            return {"status": "failed", "error": f"retrain run {request.run_name} failed: {sentence(exc)}",
                    "run_id": request.run_name, **data}
        return {"status": "succeeded", "run_id": result.get("run", request.run_name), "version": result.get("version"),
                "registered": result.get("registered", True), "promoted": bool(result.get("promoted")),
                "promotion_reason": result.get("reason"), **data}

    def poll(self, record: dict[str, Any]) -> dict[str, Any]:
        # A local run is finished when its pass writes the record; an open one belongs to a
        # live pass or a dead one (STALE_AFTER decides).
        return {"status": record.get("status")}


class KFPTrigger:
    """Start a run of the training pipeline on Kubeflow Pipelines."""

    kind = "kfp"

    def __init__(self, settings: Settings, spec: DatasetSpec, package_path: str | Path | None = None,
                 include_feedback: bool = False, token_path: str | None | object = ...,
                 reuses_champion_data: bool = False) -> None:
        self.settings, self.spec = settings, spec
        self.package_path = Path(package_path) if package_path else None
        self.include_feedback, self.token_path = include_feedback, token_path
        self.reuses_champion_data, self.source = reuses_champion_data, spec.source

    def _client(self):
        try:
            return kfp_client.connect(self.settings, self.token_path)
        except kfp_client.KFPError as exc:
            raise TriggerError(str(exc)) from None

    def start(self, request: RetrainRequest) -> dict[str, Any]:
        from pipelines.local.runner import pipeline_arguments

        client = self._client()  # before anything is written: an API that is down changes nothing
        if self.package_path and not self.package_path.is_file():
            raise TriggerError(f"compiled pipeline {self.package_path} does not exist: run `flywheel compile --output {self.package_path}`")
        self._refuse_what_the_run_cannot_apply()
        spec, failed = _prepared(self.spec, self.settings, request, self.include_feedback)
        if spec is None:
            return failed
        try:
            exp = kfp_client.ensure_experiment(client, self.settings.kfp_experiment, self.settings.kfp_namespace)
            ref = self._pipeline_version(client)
            params = pipeline_arguments(spec, self.settings, request.run_name, self.settings.store)
            run_id = kfp_client.start_run(client, exp, ref, request.run_name, params, kfp_client.pipeline_root(self.settings))
        except kfp_client.KFPError as exc:
            raise TriggerError(str(exc)) from None
        return {"status": "running", "run_id": run_id, "experiment_id": exp, "pipeline_id": ref.pipeline_id,
                "pipeline_version_id": ref.version_id, "pipeline_version": ref.version_name, "source": spec.source,
                "additions": list(spec.additions)}

    def _refuse_what_the_run_cannot_apply(self) -> None:
        """Refuse, before anything is written, what the run could not apply: a given package compiled with another
        search parallelism than the setting's, or (compiling here) a setting only the embedded runner takes."""
        from pipelines.settings_routes import check_cluster_compile
        from pipelines.training import compiled_parallelism

        if self.package_path is None:
            try:
                check_cluster_compile(self.settings)
            except ConfigError as exc:
                raise TriggerError(str(exc)) from None
            return
        compiled = compiled_parallelism(self.package_path)
        if compiled is not None and compiled != self.settings.parallelism:
            raise TriggerError(f"compiled pipeline {self.package_path} runs the search with parallelism {compiled} but the "
                               f"parallelism setting is {self.settings.parallelism}: recompile it (`flywheel compile`) or "
                               f"set FLYWHEEL_PARALLELISM={compiled}")

    def _pipeline_version(self, client) -> kfp_client.PipelineRef:
        if self.package_path:
            return kfp_client.ensure_pipeline_version(client, self.package_path, self.settings.kfp_pipeline,
                                                     self.settings.kfp_namespace)
        from pipelines.cluster import cluster_package, component_image

        try:
            image = component_image(self.settings)
        except ConfigError as exc:
            raise TriggerError(str(exc)) from None
        # The scratch folder lives under the temp dir: /tmp is the writable mount in the pod.
        with tempfile.TemporaryDirectory(prefix="flywheel-retrain-") as tmp:
            package = cluster_package(self.settings, image, None, Path(tmp))
            return kfp_client.ensure_pipeline_version(client, package, self.settings.kfp_pipeline, self.settings.kfp_namespace)

    def poll(self, record: dict[str, Any]) -> dict[str, Any]:
        if not record.get("run_id"):
            return {"status": record.get("status")}
        try:
            state = kfp_client.run_state(self._client(), record["run_id"])
        except kfp_client.KFPError as exc:
            raise TriggerError(str(exc)) from None
        return {"status": kfp_client.FINISHED.get(state, "running"), "kfp_state": state}


def make_trigger(settings: Settings, spec: DatasetSpec | None, package_path: str | Path | None = None,
                 include_feedback: bool = False, reuses_champion_data: bool = False):
    """The trigger the settings ask for (``runner``: local or kfp); None when no dataset is configured.

    ``package_path``: a compiled pipeline for KFP; None compiles one from the installed code.
    ``reuses_champion_data``: the spec is the champion's own training source (no ``--data``);
    the monitor then retrains only on new labels and otherwise raises an alarm.
    """
    if spec is None:
        return None
    if settings.runner == "kfp":
        return KFPTrigger(settings, spec, package_path, include_feedback, reuses_champion_data=reuses_champion_data)
    return LocalTrigger(settings, spec, include_feedback, reuses_champion_data)
