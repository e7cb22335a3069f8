"""File discovery: atomic records, heartbeats, staleness, namespaces."""

import os
import time

import pytest

from router.discovery import FileDiscovery, WorkerRecord, namespace_dir, new_worker_id


def make_record(**overrides) -> WorkerRecord:
    fields = dict(worker_id=new_worker_id(), model="m", model_path="/m", tokenizer_sha256="ab",
                  context_length=4096, kv_block_size=64, total_kv_blocks=100, max_num_seqs=8,
                  max_num_batched_tokens=512, engine="mock", request_endpoint="tcp://127.0.0.1:1",
                  event_endpoint="tcp://127.0.0.1:2", started_at=time.time(), pid=os.getpid())
    fields.update(overrides)
    return WorkerRecord(**fields)


@pytest.fixture
def namespace(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)
    return "test-ns"


def test_worker_ids_are_unsigned_63_bit():
    ids = {new_worker_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(0 < i < 2**63 for i in ids)


def test_publish_scan_remove_round_trip(namespace):
    discovery = FileDiscovery(namespace)
    record = make_record()
    discovery.publish(record)
    assert discovery.scan() == {record.worker_id: record}
    assert not [p for p in discovery.root.iterdir() if p.name.startswith(".tmp")]
    discovery.remove(record.worker_id)
    assert discovery.scan() == {}
    discovery.remove(record.worker_id)  # idempotent


def test_namespaces_do_not_see_each_other(namespace):
    a, b = FileDiscovery(namespace), FileDiscovery(namespace + "-other")
    a.publish(make_record())
    assert b.scan() == {}
    assert namespace_dir(namespace).name == namespace


def test_stale_records_are_ignored_and_heartbeat_revives(namespace):
    discovery = FileDiscovery(namespace, stale_after_s=5.0)
    record = make_record()
    discovery.publish(record)
    path = discovery.root / f"{record.worker_id}.json"
    old = time.time() - 6
    os.utime(path, (old, old))
    assert discovery.scan() == {}
    discovery.publish(record)  # the heartbeat rewrites the file
    assert record.worker_id in discovery.scan()


def test_garbage_files_are_skipped(namespace):
    discovery = FileDiscovery(namespace)
    (discovery.root / "123.json").write_text("{not json")
    (discovery.root / "456.json").write_text('{"worker_id": 456}')
    good = make_record()
    discovery.publish(good)
    assert list(discovery.scan()) == [good.worker_id]


@pytest.mark.parametrize("bad", ["", "../x", ".hidden", "a/b"])
def test_bad_namespace_is_refused(bad):
    with pytest.raises(ValueError, match="--namespace"):
        namespace_dir(bad)
