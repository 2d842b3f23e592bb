"""The serving worker's entry point: what ``bentoml serve`` imports (``launch.SERVICE``, bentofile.yaml).

Importing ``services.serving.service`` changes nothing outside it; what a serving worker needs
changed in BentoML is done here, before BentoML builds the service's app from it (the app's
middleware is fixed then, before any instance of the service exists):

* the request deadline (services/serving/deadline.py) in place of BentoML's timeout
  middleware, unless ``serving_deadline_fix`` is false. A BentoML that no longer builds that
  middleware the way this relies on stops the worker with one sentence (components/compat.py).
* BentoML's access log and request tracing of the API routes, off unless ``serving_access_log``
  / ``serving_tracing`` turn them on: service options (BentoML reads them when it builds the app).
"""

from __future__ import annotations

import logging

from components.settings import load_settings
from services.serving import deadline
from services.serving.service import FlywheelServing, request_telemetry

_settings = load_settings()
FlywheelServing.config.update(request_telemetry(_settings))
if not deadline.install(_settings.serving_deadline_fix):
    logging.getLogger("flywheel.serving").warning(
        "serving_deadline_fix is false: BentoML's own timeout middleware keeps each request's objects for the whole timeout")

__all__ = ["FlywheelServing"]
