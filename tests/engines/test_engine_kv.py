"""KV intake from an engine (no vLLM needed): a real PUB and replay ROUTER on loopback, as vLLM
runs them: the engine connects to the worker's bound SUB; a gap is filled from the replay socket."""

from __future__ import annotations

import asyncio
import struct

import zmq
import zmq.asyncio

from router.events import (AllBlocksCleared, BlockRemoved, BlockStored, EngineEventBatch,
                           encode_engine_batch)
from worker.engine_kv import EngineKvIntake


def _batch(i: int, tagged: bool) -> bytes:
    events = [BlockStored([i * 10 + 1, 2 ** 64 - 1 - i], None if i == 0 else i * 10 - 9,
                          list(range(64)), 32), BlockRemoved([bytes(32)]), AllBlocksCleared()]
    return encode_engine_batch(EngineEventBatch(float(i), events), tagged=tagged)


def test_gap_is_recovered_through_replay_and_duplicates_are_dropped():
    async def run():
        ctx = zmq.asyncio.Context()
        replay = ctx.socket(zmq.ROUTER)
        replay.bind("tcp://127.0.0.1:0")
        intake = EngineKvIntake(ctx, replay_endpoint=replay.getsockopt_string(zmq.LAST_ENDPOINT))
        pub = ctx.socket(zmq.PUB)
        pub.connect(intake.endpoint)                 # the engine connects (non-wildcard tcp)
        payloads = {i: _batch(i, tagged=i % 2 == 1) for i in range(6)}

        async def serve_replay():
            ident, _, start = await replay.recv_multipart()
            for seq in range(struct.unpack(">q", start)[0], 6):
                await replay.send_multipart([ident, b"", b"kv-events", struct.pack(">q", seq),
                                             payloads[seq]])
            await replay.send_multipart([ident, b"", b"", struct.pack(">q", -1), b""])

        server = asyncio.create_task(serve_replay())
        reader = asyncio.create_task(intake.run())
        await asyncio.sleep(0.3)                     # seqs 0..3 were "sent before we connected"
        for seq in (4, 5, 3):                        # 4 reveals the gap, 3 is a late duplicate
            await pub.send_multipart([b"kv-events", struct.pack(">q", seq), payloads[seq]])
        for _ in range(50):
            if intake.last_seq == 5:
                break
            await asyncio.sleep(0.05)
        batches = intake.drain()
        reader.cancel()
        server.cancel()
        await asyncio.gather(reader, server, return_exceptions=True)
        pub.close(0); replay.close(0); intake.close(); ctx.term()
        return intake, batches

    intake, batches = asyncio.run(run())
    assert [b.timestamp for b in batches] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert intake.gaps == 1 and intake.recovered == 4 and intake.lost == 0
    stored = batches[1].events[0]                    # a tagged-array batch decodes the same
    assert isinstance(stored, BlockStored) and stored.block_hashes == [11, 2 ** 64 - 2]
    assert batches[0].events[1].block_hashes == [bytes(32)]
