"""WorkerClient: a submit that waits on a worker which then leaves fails migratably."""

from __future__ import annotations

import asyncio

import pytest
import zmq.asyncio

from frontend.workers import WorkerClient, WorkerFailed
from router.discovery import WorkerRecord
from tests.conftest import free_port
from worker import protocol
from worker.engine import EngineRequest, RequestOutput


def _record(request_endpoint: str | None = None) -> WorkerRecord:
    """A worker at `request_endpoint`; by default one that is not listening, so a send to it
    waits (the client's socket queues only to connected peers)."""
    return WorkerRecord(
        worker_id=7, model="m", model_path="", tokenizer_sha256="", context_length=4096,
        kv_block_size=16, total_kv_blocks=64, max_num_seqs=8, max_num_batched_tokens=512,
        engine="mock", request_endpoint=request_endpoint or f"tcp://127.0.0.1:{free_port()}",
        event_endpoint=f"tcp://127.0.0.1:{free_port()}", started_at=0.0, pid=0)


async def _submit_then(stop) -> BaseException | None:
    """Submit while the client still believes the connection is up (its monitor has not seen the
    drop yet), then `stop(client, task)`; what the submit raised."""
    ctx = zmq.asyncio.Context()
    client = WorkerClient(ctx, _record(), lambda c, up: None, lambda c, m: None)
    client._connected.set()
    task = asyncio.create_task(client.submit(EngineRequest("r1", [1, 2, 3], 4, 0.0)))
    await asyncio.sleep(0.2)
    assert not task.done(), "the send should wait for the worker"
    await stop(client, task)
    try:
        await task
    except BaseException as exc:      # noqa: B036 - the test is about which one
        return exc
    finally:
        ctx.term()
    return None


def test_a_send_cancelled_because_the_worker_left_is_a_migratable_failure():
    async def close(client, task):
        await client.close("worker left discovery")

    failure = asyncio.run(_submit_then(close))
    assert isinstance(failure, WorkerFailed) and failure.migratable, repr(failure)


def test_a_cancelled_caller_stays_cancelled_even_if_the_worker_leaves():
    async def cancel_then_close(client, task):
        task.cancel()
        await client.close("worker left discovery")

    assert isinstance(asyncio.run(_submit_then(cancel_then_close)), asyncio.CancelledError)


@pytest.mark.parametrize("error", sorted(protocol.MIGRATABLE_ERRORS))
def test_a_worker_that_no_longer_serves_leaves_routing_before_its_requests_fail(error):
    async def run():
        ctx = zmq.asyncio.Context()
        worker = ctx.socket(zmq.ROUTER)
        endpoint = f"tcp://127.0.0.1:{free_port()}"
        worker.bind(endpoint)
        seen = []
        client = WorkerClient(ctx, _record(endpoint), lambda c, up: seen.append((up, c.stopping)),
                              lambda c, m: None)
        try:
            stream = await asyncio.wait_for(client.submit(EngineRequest("r1", [1], 4, 0.0)), 5)
            assert seen == [(True, False)]              # connected: routable
            _, frame = await asyncio.wait_for(worker.recv_multipart(), 5)
            assert protocol.unpack(frame)["type"] == "generate"
            client._dispatch([RequestOutput("r1", 0, [], "error", error=error)])
            assert seen[-1] == (False, True)            # the pool drops it from its router
            with pytest.raises(WorkerFailed) as failed:
                await stream.next_outputs()
            assert failed.value.migratable
            with pytest.raises(WorkerFailed):          # and nothing new is sent to it
                await client.submit(EngineRequest("r2", [1], 4, 0.0))
        finally:
            await client.close("done")
            worker.close(linger=0)
            ctx.term()

    asyncio.run(run())
