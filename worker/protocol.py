"""Request-plane messages (DESIGN.md §2.2): msgpack maps between a frontend's DEALER and a worker's
ROUTER. The worker serves this plane, so the one definition lives here; the frontend imports it.

frontend -> worker, every message names the target `worker_id` (a restarted worker has a new id
and rejects messages meant for its predecessor):
    {"type": "generate", "worker_id", "request": {EngineRequest fields}}
    {"type": "cancel",   "worker_id", "request_id"}
    {"type": "ping",     "worker_id"}
    {"type": "kv_query", "worker_id", "query": {worker_id, start_event_id}}  (None: a full dump)

worker -> frontend, one frame per engine pass with every request of that frontend that advanced:
    {"type": "outputs", "worker_id", "outputs": [[request_id, first_index, token_ids,
                                                   finish_reason, tool_call_deltas, timings, error,
                                                   text]]}
    {"type": "pong",    "worker_id"}
    {"type": "kv_reply", "worker_id", "reply": {kind: range|dump, ...}}  (router/kv_sync.py)
"""

from __future__ import annotations

from typing import Any

import msgpack

from router.kv_sync import KvQuery, KvReply
from worker.engine import EngineRequest, RequestOutput, Timings

# Errors a worker reports in RequestOutput.error. A frontend may migrate requests failed with a
# migratable error to another worker (DESIGN.md §3); the rest are final. Both migratable errors say
# the worker the frontend addressed no longer serves, so the frontend stops routing to it at once.
ERROR_WRONG_WORKER = "wrong_worker"       # message meant for another worker id (stale frontend)
ERROR_SHUTDOWN = "engine_shutdown"        # the worker is stopping
ERROR_INVALID_REQUEST = "invalid_request: "   # prefix: the engine refused the request itself
MIGRATABLE_ERRORS = frozenset({ERROR_WRONG_WORKER, ERROR_SHUTDOWN})

# ZMQ socket options of the request plane. A killed peer is seen at once (its TCP connection
# closes); heartbeats catch a hung or unreachable one. 1 s (DESIGN.md) dropped healthy workers
# while two vLLM engines saturated both cores and starved ZMQ's I/O thread, so the timeout is 5 s.
HEARTBEAT_IVL_MS = 300
HEARTBEAT_TIMEOUT_MS = 5000
SEND_HWM = 100_000    # messages queued per peer before a send waits (backpressure, never a drop)
# How long a stopping worker keeps its request socket open after its last message (such as the
# engine_shutdown failures of its requests). Closing at once lost those failures about one time in
# three on a loaded machine: the frontend saw only "connection lost", never that the worker was
# stopping, and a request's last tokens could go the same way. (Likely cause: a socket closed
# with unread input, such as a heartbeat, resets the connection, and the peer's kernel drops the
# data its ZMQ thread had not read yet.)
SHUTDOWN_DRAIN_S = 0.5

_GENERATE_FIELDS = ("request_id", "token_ids", "max_tokens", "priority", "ignore_eos",
                    "temperature", "top_p", "seed", "stop_token_ids", "x_request_id", "body")


def pack(message: dict[str, Any]) -> bytes:
    return msgpack.packb(message, use_bin_type=True)


def unpack(frame: bytes) -> dict[str, Any]:
    """Decode one message; ValueError when it is not a msgpack map with a `type`."""
    try:
        message = msgpack.unpackb(frame, raw=False, strict_map_key=False)
    except (msgpack.UnpackException, ValueError) as exc:
        raise ValueError(f"undecodable request-plane frame: {exc}") from exc
    if not isinstance(message, dict) or "type" not in message:
        raise ValueError("request-plane message must be a map with a 'type'")
    return message


def generate_message(worker_id: int, request: EngineRequest) -> bytes:
    fields = {name: getattr(request, name) for name in _GENERATE_FIELDS}
    return pack({"type": "generate", "worker_id": worker_id, "request": fields})


def request_from_message(message: dict[str, Any], received_at: float) -> EngineRequest:
    """The EngineRequest of a `generate` message; ValueError naming a missing or mistyped field."""
    fields = message.get("request")
    if not isinstance(fields, dict):
        raise ValueError("generate message has no 'request' map")
    try:
        request = EngineRequest(received_at=received_at,
                                **{name: fields[name] for name in _GENERATE_FIELDS if name in fields})
    except TypeError as exc:
        raise ValueError(f"bad generate message: {exc}") from exc
    if not isinstance(request.request_id, str) or not request.request_id:
        raise ValueError("request_id must be a non-empty string")
    if not isinstance(request.token_ids, list):
        raise ValueError("token_ids must be a list of ints")
    for name in ("max_tokens", "priority"):
        if type(getattr(request, name)) is not int:     # a bool is not a count nor a priority
            raise ValueError(f"{name} must be an int")
    return request


def cancel_message(worker_id: int, request_id: str) -> bytes:
    return pack({"type": "cancel", "worker_id": worker_id, "request_id": request_id})


def kv_query_message(worker_id: int, query: KvQuery) -> bytes:
    return pack({"type": "kv_query", "worker_id": worker_id, "query": query.to_wire()})


def kv_reply_message(worker_id: int, reply: KvReply) -> bytes:
    return pack({"type": "kv_reply", "worker_id": worker_id, "reply": reply.to_wire()})


def ping_message(worker_id: int) -> bytes:
    return pack({"type": "ping", "worker_id": worker_id})


def pong_message(worker_id: int) -> bytes:
    return pack({"type": "pong", "worker_id": worker_id})


def outputs_message(worker_id: int, outputs: list[RequestOutput]) -> bytes:
    return pack({"type": "outputs", "worker_id": worker_id, "outputs": [
        [o.request_id, o.first_index, o.token_ids, o.finish_reason, o.tool_call_deltas,
         o.timings.to_wire() if o.timings else None, o.error, o.text] for o in outputs]})


def outputs_from_message(message: dict[str, Any]) -> list[RequestOutput]:
    return [RequestOutput(request_id, first_index, token_ids, finish_reason, deltas,
                          Timings.from_wire(timings) if timings else None, error, text)
            for request_id, first_index, token_ids, finish_reason, deltas, timings, error, text
            in message["outputs"]]
