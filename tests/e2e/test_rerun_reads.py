"""Work proportional to what changed, counted at a real S3 server (moto behind a counting layer):
an unchanged re-run fetches no data object, the checks before a run read a bounded sample, and an
object that changes during a run ends it with one sentence naming the object."""

from __future__ import annotations

import io

import boto3
import pytest

from components.data import DatasetSpec, sample
from components.ingest import fingerprint, ingest
from components.registry import Registry
from components.settings import load_settings
from components.sources import resolve
from components.store import Changed, open_store
from components.synthetic import churn
from pipelines.local.runner import run_training
from testkit.meters import MeteredS3Server

BUCKET = "rerun"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = MeteredS3Server()
    server.start()
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                            "AWS_ENDPOINT_URL": server.endpoint, "AWS_DEFAULT_REGION": "us-east-1"}.items():
            mp.setenv(name, value)
        client = boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield server, client, tmp_path_factory.mktemp("rerun")
    server.stop()


def _put_parquet(client, key: str, frame, row_group_size: int | None = None) -> int:
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False, row_group_size=row_group_size)
    client.put_object(Bucket=BUCKET, Key=key, Body=buf.getvalue())
    return len(buf.getvalue())


def test_an_unchanged_rerun_from_s3_fetches_no_data_object(s3):
    server, client, tmp = s3
    frame = churn(1500, seed=3)
    dataset = sum(_put_parquet(client, f"data/part-{i}.parquet", frame.iloc[i::3]) for i in range(3))
    settings = load_settings(store=f"s3://{BUCKET}/flywheel", pipeline_root=str(tmp / "kfp"), model="churn", cv_folds=2)
    spec = DatasetSpec(f"s3://{BUCKET}/data/", "churned", timestamp="event_time")

    first = run_training(spec, settings)
    assert server.traffic.gets(f"{BUCKET}/data/") > 0  # the first run did read the objects
    server.traffic.reset()
    second = run_training(spec, settings)

    assert second["cached"] and second["version"] == first["version"]
    # LIST (and HEAD) only: not one GET of a data object, not one byte of the dataset
    assert server.traffic.gets(f"{BUCKET}/data/") == 0
    assert server.traffic.bytes_sent(f"{BUCKET}/data/") == 0 < dataset


def test_the_checks_before_a_run_read_a_bounded_sample_of_a_large_object(s3):
    server, client, tmp = s3
    frame = churn(60_000, seed=4)
    size = _put_parquet(client, "big/data.parquet", frame, row_group_size=5_000)
    settings = load_settings(store=f"s3://{BUCKET}/flywheel", pipeline_root=str(tmp / "kfp-sample"), model="m")
    server.traffic.reset()
    head = sample(resolve(f"s3://{BUCKET}/big/", settings), settings, rows=1_000)
    assert len(head) == 1_000 and list(head.columns) == list(frame.columns)
    # the footer and the first row group (ranged GETs), not the object
    assert 0 < server.traffic.bytes_sent(f"{BUCKET}/big/") < size / 4


def test_an_object_changed_during_a_run_ends_it_naming_the_object(s3):
    _, client, tmp = s3
    frame = churn(900, seed=5)
    for i in range(3):
        _put_parquet(client, f"moving/part-{i}.parquet", frame.iloc[i::3])
    settings = load_settings(store=f"s3://{BUCKET}/flywheel", pipeline_root=str(tmp / "kfp-moving"), model="moving")
    spec = DatasetSpec(f"s3://{BUCKET}/moving/", "churned")
    _, located = fingerprint(spec, settings)  # the run's one resolution
    _put_parquet(client, "moving/part-1.parquet", frame.iloc[:10])  # a writer replaces it mid-run

    with pytest.raises(Changed) as caught:
        ingest(spec, settings, located)
    message = str(caught.value)
    assert f"s3://{BUCKET}/moving/part-1.parquet changed during the run" in message and message.count(".") <= 3
    assert Registry(open_store(settings.store, settings), "moving").versions() == []
