"""The serving pod's shutdown: preStop, a grace period longer than the log's close path, a spill that can outlive the pod."""

from __future__ import annotations

import pytest
from k8s_support import find, helm_render, manifests, merge

from components.settings import load_settings
from services.serving.prediction_log import close_path_seconds

ALL_BUILDS = ["kustomize-base", "kustomize-kind", "kustomize-production", "helm-default", "helm-production"]
_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9}


def _bytes(quantity: str) -> float:
    for unit, factor in sorted(_UNITS.items(), key=lambda kv: -len(kv[0])):
        if quantity.endswith(unit):
            return float(quantity[: -len(unit)]) * factor
    return float(quantity)


def _serving(docs: list[dict]) -> tuple[dict, dict]:
    pod = find(docs, "Deployment", "flywheel-serving")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return pod, container


def _settings_of(container: dict):
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e and e["name"].startswith("FLYWHEEL_")}
    names = {"FLYWHEEL_LOG_CLOSE_SECONDS": "log_close_seconds",
             "FLYWHEEL_LOG_WRITE_TIMEOUT_SECONDS": "log_write_timeout_seconds",
             "FLYWHEEL_SPILL_LEASE_SECONDS": "spill_lease_seconds", "FLYWHEEL_SPILL_MAX_MB": "spill_max_mb",
             "FLYWHEEL_LOG_FLUSH_ROWS": "log_flush_rows", "FLYWHEEL_LOG_MAX_BUFFER_ROWS": "log_max_buffer_rows",
             "FLYWHEEL_LOG_APPEND_WAIT_SECONDS": "log_append_wait_seconds"}
    assert set(names) <= set(env), f"missing {set(names) - set(env)}"
    return load_settings(**{field: env[name] for name, field in names.items()})


@pytest.mark.parametrize("build", ALL_BUILDS)
def test_grace_period_outlasts_prestop_and_the_worst_case_close_path(builds, build):
    pod, c = _serving(builds[build])
    settings = _settings_of(c)
    sleep = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert sleep >= 1, "a preStop sleep lets the Service stop routing before SIGTERM"
    worst = sleep + close_path_seconds(settings.log_close_seconds, settings.log_write_timeout_seconds)
    assert pod["terminationGracePeriodSeconds"] > worst, (
        f"{build}: grace {pod['terminationGracePeriodSeconds']} s <= preStop {sleep} s + close path "
        f"{worst - sleep} s: SIGKILL would cut the shutdown flush")


@pytest.mark.parametrize("build", ALL_BUILDS)
def test_spill_limit_stays_below_the_volume_that_would_evict_the_pod(builds, build):
    pod, c = _serving(builds[build])
    settings = _settings_of(c)
    spill = next(v for v in pod["volumes"] if v["name"] == "spill")
    assert set(spill) == {"name", "emptyDir"}, f"{build}: the spill directory is {spill}"
    assert settings.spill_max_mb * 1e6 < _bytes(spill["emptyDir"]["sizeLimit"])


def test_chart_refuses_a_grace_period_shorter_than_the_close_path():
    values = merge(None, {"serving": {"terminationGracePeriodSeconds": 30, "preStopSleepSeconds": 5,
                                      "predictionLog": {"closeSeconds": 15, "writeTimeoutSeconds": 5}}})
    with pytest.raises(Exception, match=r"terminationGracePeriodSeconds \(30\) must be longer .* = 31"):
        helm_render(values)
    longer = merge(values, {"serving": {"terminationGracePeriodSeconds": 32}})
    pod, _ = _serving(manifests(helm_render(longer)))
    assert pod["terminationGracePeriodSeconds"] == 32


def test_chart_settings_reach_the_serving_container():
    values = merge(None, {"serving": {"terminationGracePeriodSeconds": 90, "preStopSleepSeconds": 10,
                                      "predictionLog": {"closeSeconds": 40, "writeTimeoutSeconds": 2.5,
                                                        "flushRows": 250, "spillMaxMB": 100}}})
    pod, c = _serving(manifests(helm_render(values)))
    settings = _settings_of(c)
    assert (settings.log_close_seconds, settings.log_write_timeout_seconds) == (40, 2.5)
    assert (settings.log_flush_rows, settings.spill_max_mb) == (250, 100)
    assert c["lifecycle"]["preStop"]["sleep"]["seconds"] == 10 and pod["terminationGracePeriodSeconds"] == 90


def test_spill_persistence_puts_every_replica_on_one_claim():
    docs = manifests(helm_render(merge(None, {"serving": {"spillPersistence": {"enabled": True}}})))
    pod, c = _serving(docs)
    spill = next(v for v in pod["volumes"] if v["name"] == "spill")
    assert spill == {"name": "spill", "persistentVolumeClaim": {"claimName": "flywheel-serving-spill"}}
    claim = find(docs, "PersistentVolumeClaim", "flywheel-serving-spill")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert {m["mountPath"] for m in c["volumeMounts"] if m["name"] == "spill"} == {env["FLYWHEEL_SPILL_DIR"]}
    existing = manifests(helm_render(merge(None, {"serving": {"spillPersistence": {"enabled": True,
                                                                                  "existingClaim": "mine"}}})))
    pod, _ = _serving(existing)
    assert next(v for v in pod["volumes"] if v["name"] == "spill")["persistentVolumeClaim"]["claimName"] == "mine"
    assert not [d for d in existing if d["kind"] == "PersistentVolumeClaim" and "spill" in d["metadata"]["name"]]
