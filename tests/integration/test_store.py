"""The same suite against both store backends: local directory and S3 (moto on loopback)."""

from __future__ import annotations

import threading

import pandas as pd
import pytest

from components.registry import PromotionConflict, Registry, RegistryError
from components.settings import load_settings
from components.store import NotFound, StoreError, open_store, read_parquet, write_parquet


@pytest.fixture(params=["local", "s3"])
def store(request, settings, tmp_path):
    if request.param == "local":
        return open_store(settings.store, settings)
    s3 = request.getfixturevalue("s3_settings")
    return open_store(s3.store, s3)


def test_write_read_list_delete(store):
    store.write("a/b/one.json", b"1")
    store.write("a/b/two.json", b"2")
    store.write("a/c.json", b"3")
    assert store.read("a/b/one.json") == b"1"
    assert store.list("a/b/") == ["a/b/one.json", "a/b/two.json"]
    assert store.list("a") == ["a/b/one.json", "a/b/two.json", "a/c.json"]
    assert store.exists("a/c.json") and not store.exists("a/missing.json")
    store.delete("a/c.json")
    assert not store.exists("a/c.json")
    with pytest.raises(NotFound, match="a/missing.json"):
        store.read("a/missing.json")


def test_create_is_exclusive(store):
    assert store.create("triggers/k.json", b"first") is True
    assert store.create("triggers/k.json", b"second") is False
    assert store.read("triggers/k.json") == b"first"


def test_replace_needs_the_version_read(store):
    assert store.replace("p.json", b"v1", None) is True
    seen = store.read_versioned("p.json")
    assert store.replace("p.json", b"v2", seen.etag) is True
    assert store.replace("p.json", b"v3", seen.etag) is False  # stale etag loses
    assert store.read("p.json") == b"v2"


def test_parquet_roundtrip_and_files(store, tmp_path):
    frame = pd.DataFrame({"x": [1.0, 2.0], "c": ["a", None]})
    write_parquet(store, "d/f.parquet", frame)
    pd.testing.assert_frame_equal(read_parquet(store, "d/f.parquet"), frame)
    src = tmp_path / "big.bin"
    src.write_bytes(b"x" * 1_000_000)
    store.upload_file(src, "blobs/big.bin")
    store.download_file("blobs/big.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == src.read_bytes()


def test_move_file_takes_the_file_in(store, tmp_path):
    src = tmp_path / "part.bin"
    src.write_bytes(b"y" * 300_000)
    store.move_file(src, "logs/part.bin")
    assert store.read("logs/part.bin") == b"y" * 300_000
    assert not src.exists()


def test_move_file_that_fails_leaves_the_file(store, tmp_path):
    with pytest.raises((OSError, StoreError)):
        store.move_file(tmp_path / "missing.bin", "logs/missing.bin")
    assert not store.exists("logs/missing.bin")


def test_local_move_file_across_filesystems_copies(tmp_path, monkeypatch):
    """A spill directory on another filesystem than the store: os.replace fails with EXDEV, the file is copied."""
    import errno
    import os

    from components.store import LocalStore

    store = LocalStore(tmp_path / "store")
    src = tmp_path / "spill" / "part.bin"
    src.parent.mkdir()
    src.write_bytes(b"z" * 5_000_000)
    real_replace = os.replace

    def replace(a, b):
        if str(a) == str(src):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_replace(a, b)

    monkeypatch.setattr(os, "replace", replace)
    store.move_file(src, "logs/part.bin")
    assert store.read("logs/part.bin") == b"z" * 5_000_000
    assert not src.exists()


def _version(reg: Registry) -> str:
    v = reg.claim_version()
    reg.write_version(v, {"model.joblib": b"m"}, {"score": 1})
    return v


def test_registry_versions_and_champion(store):
    reg = Registry(store, "m")
    v1, v2 = _version(reg), _version(reg)
    assert (v1, v2) == ("v1", "v2") and reg.versions() == ["v1", "v2"]
    reg.promote(v1, "first", expected=None)
    with pytest.raises(PromotionConflict):
        reg.promote(v2, "decided against nothing", expected=None)
    reg.promote(v2, "better", expected=v1)
    assert reg.champion().version == "v2" and reg.champion().previous == "v1"
    assert reg.rollback().version == "v1"
    assert [h["version"] for h in reg.history()] == ["v1", "v2", "v1"]
    with pytest.raises(RegistryError, match="immutable"):
        reg.write_version(v1, {"model.joblib": b"other"}, {})
    with pytest.raises(RegistryError, match="no version 'v9'"):
        reg.promote("v9", "missing")


def test_half_written_version_is_invisible(store):
    reg = Registry(store, "m")
    v = reg.claim_version()
    store.write(reg.key(v, "model.joblib"), b"partial")  # a crash before the manifest
    assert reg.versions() == []
    with pytest.raises(RegistryError):
        reg.read(v, "model.joblib")


def test_concurrent_promotions_never_lose_an_update(store):
    reg = Registry(store, "m")
    versions = [_version(reg) for _ in range(8)]
    barrier = threading.Barrier(len(versions))
    errors: list[BaseException] = []

    def promote(v: str) -> None:
        barrier.wait()
        try:
            reg.promote(v, f"promote {v}")
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=promote, args=(v,)) for v in versions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    history = reg.history()
    assert sorted(h["version"] for h in history) == sorted(versions)  # every promotion applied once
    # the chain of predecessors is unbroken: each change saw the one before it
    previous = {h["version"]: h["previous"] for h in history}
    chain, current = [], reg.champion().version
    while current:
        chain.append(current)
        current = previous.get(current)
    assert sorted(chain) == sorted(versions)


def test_bad_store_uris(tmp_path):
    with pytest.raises(Exception, match="store URI"):
        load_settings(store="gs://bucket/x")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        import os

        if os.geteuid() != 0:  # root can write anywhere
            with pytest.raises(StoreError, match="not writable"):
                open_store(str(ro))
    finally:
        ro.chmod(0o700)


def test_unreachable_s3_names_the_store(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    s = load_settings(store="s3://nobucket/p", s3_endpoint_url="http://127.0.0.1:9", s3_max_attempts=1)
    with pytest.raises(StoreError, match="s3://nobucket/p is unreachable"):
        open_store(s.store, s)


def test_missing_bucket(s3_settings):
    s = load_settings(store="s3://does-not-exist-bucket/p", s3_max_attempts=1)
    with pytest.raises(StoreError, match="does-not-exist-bucket"):
        open_store(s.store, s)
