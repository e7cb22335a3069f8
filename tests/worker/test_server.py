"""A real worker process on the request and event planes, driven by raw ZMQ sockets."""

from __future__ import annotations

import contextlib
import time

import msgpack
import pytest
import zmq

from router.discovery import FileDiscovery
from router.events import LoadReport
from worker import protocol
from worker.engine import EngineRequest


@pytest.fixture
def worker(stack_factory):
    with connected_worker(stack_factory()) as connected:
        yield connected


@contextlib.contextmanager
def connected_worker(stack, *flags: str):
    """Start a worker, wait for its discovery record, connect a raw DEALER to it."""
    proc = stack.start_worker(*flags)
    discovery = FileDiscovery(stack.namespace)
    deadline = time.monotonic() + 20
    while not (records := discovery.scan()):
        assert proc.poll() is None and time.monotonic() < deadline, stack.logs()
        time.sleep(0.05)
    (record,) = records.values()
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.setsockopt(zmq.RCVTIMEO, 5000)
    dealer.connect(record.request_endpoint)
    try:
        yield record, dealer, ctx, stack
    finally:
        dealer.close()
        ctx.term()


def request(request_id: str, max_tokens: int = 4, prompt_len: int = 10) -> EngineRequest:
    return EngineRequest(request_id=request_id, token_ids=list(range(1, prompt_len + 1)),
                         max_tokens=max_tokens, received_at=0.0, ignore_eos=True)


def receive_until_finished(dealer, request_ids: set[str]) -> list[list]:
    """Every outputs frame until each request has finished; returns the frames' outputs."""
    frames, open_ids = [], set(request_ids)
    while open_ids:
        message = protocol.unpack(dealer.recv())
        assert message["type"] == "outputs"
        outputs = protocol.outputs_from_message(message)
        frames.append(outputs)
        open_ids -= {o.request_id for o in outputs if o.finish_reason}
    return frames


def test_record_has_every_field(worker):
    record, *_ = worker
    assert record.engine == "mock" and record.model == "rotor-mock"
    assert record.request_endpoint.startswith("tcp://127.0.0.1:")
    assert record.event_endpoint.startswith("tcp://127.0.0.1:")
    assert len(record.tokenizer_sha256) == 64
    assert min(record.kv_block_size, record.total_kv_blocks, record.max_num_seqs,
               record.max_num_batched_tokens, record.context_length) > 0


def test_generate_streams_every_token_once_with_timings(worker):
    record, dealer, *_ = worker
    dealer.send(protocol.generate_message(record.worker_id, request("r1", max_tokens=6)))
    frames = receive_until_finished(dealer, {"r1"})
    outputs = [o for frame in frames for o in frame]
    indices = [o.first_index + k for o in outputs for k in range(len(o.token_ids))]
    assert indices == list(range(6))
    final = outputs[-1]
    assert final.finish_reason == "length" and final.timings is not None
    assert 0 < final.timings.ttft_ms <= final.timings.total_ms


def test_one_frame_per_pass_carries_several_requests(worker):
    record, dealer, *_ = worker
    ids = {f"r{i}" for i in range(4)}
    for rid in sorted(ids):
        dealer.send(protocol.generate_message(record.worker_id, request(rid, max_tokens=8)))
    frames = receive_until_finished(dealer, ids)
    assert max(len({o.request_id for o in frame}) for frame in frames) >= 2
    for frame in frames:  # never two outputs of one request in one pass
        assert len({o.request_id for o in frame}) == len(frame)


def test_wrong_worker_id_is_rejected_as_migratable(worker):
    record, dealer, *_ = worker
    dealer.send(protocol.generate_message(record.worker_id + 1, request("stale")))
    (output,) = protocol.outputs_from_message(protocol.unpack(dealer.recv()))
    assert output.request_id == "stale" and output.finish_reason == "error"
    assert output.error == protocol.ERROR_WRONG_WORKER in protocol.MIGRATABLE_ERRORS


def test_bad_request_fails_cleanly_and_worker_keeps_serving(worker):
    record, dealer, *_ = worker
    dealer.send(b"\xc1 not msgpack")
    dealer.send_multipart([b"two", b"frames"])
    dealer.send(protocol.generate_message(record.worker_id, request("zero", max_tokens=0)))
    (output,) = protocol.outputs_from_message(protocol.unpack(dealer.recv()))
    assert output.request_id == "zero" and output.finish_reason == "error"
    assert "max_tokens" in output.error
    dealer.send(protocol.ping_message(record.worker_id))
    assert protocol.unpack(dealer.recv()) == {"type": "pong", "worker_id": record.worker_id}


def test_cancel_stops_the_request(worker):
    record, dealer, *_ = worker
    dealer.send(protocol.generate_message(record.worker_id, request("long", max_tokens=100000)))
    protocol.unpack(dealer.recv())                     # it started
    dealer.send(protocol.cancel_message(record.worker_id, "long"))
    dealer.send(protocol.generate_message(record.worker_id, request("after", max_tokens=3)))
    seen = set()
    for frame in receive_until_finished(dealer, {"after"}):
        seen |= {o.request_id for o in frame if o.finish_reason}
    assert seen == {"after"}      # the cancelled request never finished and sent no final output


def test_load_reports_on_the_event_plane(worker):
    record, _, ctx, _ = worker
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"load")
    sub.setsockopt(zmq.RCVTIMEO, 5000)
    sub.connect(record.event_endpoint)
    topic, payload = sub.recv_multipart()              # refreshed at least every 2 s
    report = LoadReport.from_wire(msgpack.unpackb(payload))
    assert topic == b"load" and report.worker_id == record.worker_id
    assert report.kv_total_blocks == record.total_kv_blocks
    sub.close()


def test_sigterm_removes_the_record(worker):
    record, _, _, stack = worker
    proc = next(p for p in stack.procs if p.pid == record.pid)
    stack.kill(proc.pid, sig=15)
    proc.wait(timeout=10)
    assert proc.returncode == 0
    assert FileDiscovery(stack.namespace).scan() == {}


def test_a_fast_engine_still_streams_one_token_per_frame(stack_factory):
    """At speedup 1000 passes end faster than the driver wakes; frames stay one per pass."""
    with connected_worker(stack_factory(), "--speedup-ratio", "1000") as (record, dealer, _, _):
        ids = {"a", "b", "c"}
        for rid in sorted(ids):
            dealer.send(protocol.generate_message(record.worker_id, request(rid, max_tokens=40)))
        frames = receive_until_finished(dealer, ids)
    outputs = [o for frame in frames for o in frame]
    assert all(len(o.token_ids) <= 1 for o in outputs)
    for rid in ids:
        assert sum(len(o.token_ids) for o in outputs if o.request_id == rid) == 40
    assert len(frames) >= 40
