"""Intake of a real engine's own KV events (vLLM, SGLang): ZMQ SUB, sequence gaps, replay.

    engine PUB ──[topic, seq u64 BE, payload]──► SUB (this)  ──► pending EngineEventBatches
    engine replay ROUTER ◄──[b"", start seq]──── DEALER (this, on a gap)
                         ──[b"", topic, seq, payload] ... [b"", b"", -1, b""]──►

Socket direction (notes/real-engines.md): vLLM's publisher binds only for `*`, `::`, `ipc://` and
`inproc://` endpoints and connects otherwise, so for a loopback tcp endpoint the *subscriber binds*
(`bind=True`, port 0 picks a free port, `endpoint` tells the engine where to connect). PUB drops
what it sends before the connection is up, and the engine numbers batches from 0 at every start,
so the first batch seen, or any later jump in the sequence, triggers a replay request for the
missing range; duplicates (seq already seen) are dropped.

Decoding is router/events.py's `decode_engine_batch` (maps with `type` and tagged arrays, any
hash type). Filtering to device-medium, full-attention events is the relay's job
(worker/kv_relay.py), so it is done in exactly one place.
"""

from __future__ import annotations

import asyncio
import logging
import struct

import zmq
import zmq.asyncio

from router.events import EngineEventBatch, decode_engine_batch

log = logging.getLogger("rotor.worker.engine_kv")

_SEQ = struct.Struct(">q")        # signed: the replay end marker is -1
REPLAY_TIMEOUT_S = 2.0            # per reply frame; a silent replay socket ends the recovery


class EngineKvIntake:
    """Owns the SUB (and the replay DEALER); `run()` is a background task; `drain()` hands out
    what arrived, in sequence order."""

    def __init__(self, ctx: zmq.asyncio.Context, host: str = "127.0.0.1", bind: bool = True,
                 endpoint: str | None = None, replay_endpoint: str | None = None,
                 ready: asyncio.Event | None = None):
        self._ctx = ctx
        self._sub = ctx.socket(zmq.SUB)
        self._sub.setsockopt(zmq.LINGER, 0)
        self._sub.setsockopt(zmq.SUBSCRIBE, b"")
        if bind:
            self._sub.bind(endpoint or f"tcp://{host}:0")
            self.endpoint = self._sub.getsockopt_string(zmq.LAST_ENDPOINT)
        else:
            if endpoint is None:
                raise ValueError("endpoint is required when the engine binds its publisher")
            self._sub.connect(endpoint)
            self.endpoint = endpoint
        self.replay_endpoint = replay_endpoint
        self.last_seq = -1                    # highest engine sequence number delivered
        self.gaps = 0                         # sequence gaps seen
        self.recovered = 0                    # batches recovered through replay
        self.lost = 0                         # batches neither received nor replayed
        self.malformed = 0
        self._pending: list[EngineEventBatch] = []
        self.ready = ready or asyncio.Event()  # set when a batch arrives; the owner clears it

    def drain(self) -> list[EngineEventBatch]:
        out, self._pending = self._pending, []
        return out

    async def run(self) -> None:
        while True:
            frames = await self._sub.recv_multipart()
            if len(frames) != 3 or len(frames[1]) != 8:
                self.malformed += 1
                log.warning("dropped an engine KV message of %d frames", len(frames))
                continue
            seq = _SEQ.unpack(frames[1])[0]
            if seq <= self.last_seq:
                continue                      # already delivered (replayed before it arrived)
            if seq > self.last_seq + 1:
                self.gaps += 1
                await self._recover(self.last_seq + 1, seq)
            self._deliver(seq, frames[2])

    def close(self) -> None:
        self._sub.close(linger=0)

    # -- internals -------------------------------------------------------------------------------

    def _deliver(self, seq: int, payload: bytes) -> None:
        self.last_seq = max(self.last_seq, seq)
        try:
            batch = decode_engine_batch(payload)
        except ValueError as exc:
            self.malformed += 1
            log.warning("dropped engine KV batch %d: %s", seq, exc)
            return
        self._pending.append(batch)
        self.ready.set()

    async def _recover(self, start: int, upto: int) -> None:
        """Fetch batches [start, upto) from the engine's replay socket."""
        if self.replay_endpoint is None:
            self.lost += upto - start
            log.warning("engine KV events %d..%d lost (no replay endpoint)", start, upto - 1)
            return
        dealer = self._ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(self.replay_endpoint)
        try:
            await dealer.send_multipart([b"", _SEQ.pack(start)])
            while True:
                if not await dealer.poll(REPLAY_TIMEOUT_S * 1000):
                    log.warning("engine KV replay from %d timed out", start)
                    break
                frames = await dealer.recv_multipart()
                if len(frames) != 4 or len(frames[2]) != 8:
                    self.malformed += 1
                    continue
                seq = _SEQ.unpack(frames[2])[0]
                if seq < 0:
                    break                     # end marker
                if self.last_seq < seq < upto:
                    self._deliver(seq, frames[3])
                    self.recovered += 1
        finally:
            dealer.close(linger=0)
        if self.last_seq < upto - 1:
            self.lost += upto - 1 - self.last_seq
            log.warning("engine KV events %d..%d could not be replayed", self.last_seq + 1,
                        upto - 1)
            self.last_seq = upto - 1
