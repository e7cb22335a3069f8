"""The OpenAI protocol: request bodies parsed into typed values, responses and SSE chunks built,
errors shaped (DESIGN.md §3). No I/O here; the handlers and, later, the mock engine's
engine-compatible server both use it.

Unknown top-level fields are accepted and ignored (clients send `store`, `metadata`, ...); fields
Rotor knows are validated and a bad one is a 400 naming it in `param`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from router.sessions import SessionControl
from tracing.records import AgentContext, AgentContextError

# HTTP status -> OpenAI error type
_ERROR_TYPES = {400: "invalid_request_error", 404: "not_found_error", 405: "invalid_request_error",
                413: "invalid_request_error", 499: "client_closed_request",
                500: "internal_server_error", 503: "service_unavailable"}


class OpenAIError(Exception):
    """An error the client should see as OpenAI error JSON with this HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | int | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code if code is not None else status
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": _ERROR_TYPES.get(self.status, "error"),
                          "code": self.code, "param": self.param}}


def invalid(param: str, message: str) -> OpenAIError:
    return OpenAIError(400, message, param=param)


# ---------------------------------------------------------------------------------------------
# Requests


@dataclass(slots=True)
class Sampling:
    max_tokens: int | None
    temperature: float | None
    top_p: float | None
    seed: int | None
    stop: list[str]
    ignore_eos: bool
    stream: bool
    include_usage: bool


@dataclass(slots=True)
class ChatRequest:
    model: str
    messages: list[dict[str, Any]]
    sampling: Sampling
    tools: list[dict[str, Any]] | None = None
    body: dict[str, Any] = field(default_factory=dict)
    raw: bytes = b""                      # the body as sent, forwarded to template-applying engines


@dataclass(slots=True)
class CompletionRequest:
    model: str
    prompt: str | list[int]
    sampling: Sampling
    body: dict[str, Any] = field(default_factory=dict)


def parse_json_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise OpenAIError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise OpenAIError(400, "request body must be a JSON object")
    return body


def parse_chat(raw: bytes) -> ChatRequest:
    body = parse_json_body(raw)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("messages", "'messages' must be a non-empty array")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise invalid(f"messages[{i}]", f"messages[{i}] must be an object with a 'role'")
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise invalid("tools", "'tools' must be an array")
    max_tokens = _optional(body, "max_completion_tokens", int)
    if max_tokens is None:
        max_tokens = _optional(body, "max_tokens", int)
    return ChatRequest(_model(body), messages, _sampling(body, max_tokens), tools or None, body,
                       raw)


def parse_completion(body: dict[str, Any]) -> CompletionRequest:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]                  # a batch of one
    if isinstance(prompt, list):
        if not prompt or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0
                                 for t in prompt):
            raise invalid("prompt", "'prompt' must be a string or a non-empty array of token ids "
                                    "(batches of several prompts are not supported)")
    elif not isinstance(prompt, str) or not prompt:
        raise invalid("prompt", "'prompt' must be a non-empty string or an array of token ids")
    return CompletionRequest(_model(body), prompt, _sampling(body, _optional(body, "max_tokens", int)),
                             body)


@dataclass(slots=True)
class NvExt:
    """Dynamo's request extension `nvext` (DESIGN.md §3), validated."""

    agent_context: AgentContext | None = None      # passive identity (traces, trajectory_final)
    priority: int = 0                              # agent_hints.priority: higher is more urgent
    strict_priority: int = 0                       # agent_hints.strict_priority: queue tier
    osl: int = 0                                   # agent_hints.osl: expected output tokens
    speculative_prefill: bool = False
    session: SessionControl | None = None
    backend_instance_id: int | None = None         # pin to this worker
    extra_fields: frozenset[str] = frozenset()     # response extensions asked for


def parse_nvext(body: dict[str, Any]) -> NvExt:
    raw = body.get("nvext")
    if raw is None:
        return NvExt()
    if not isinstance(raw, dict):
        raise invalid("nvext", "'nvext' must be an object")
    hints = _section(raw, "agent_hints")
    priority = _field(hints, "agent_hints", "priority", int, 0)
    strict = _field(hints, "agent_hints", "strict_priority", int, 0)
    osl = _field(hints, "agent_hints", "osl", int, 0)
    for name, value in (("strict_priority", strict), ("osl", osl)):
        if value < 0:
            raise invalid(f"nvext.agent_hints.{name}", f"'nvext.agent_hints.{name}' must be >= 0")
    session = None
    control = _section(raw, "session_control")
    if control:
        try:
            session = SessionControl(
                session_id=_field(control, "session_control", "session_id", str, ""),
                action=_field(control, "session_control", "action", str, None),
                timeout_s=float(_field(control, "session_control", "timeout", float, 300.0)))
        except ValueError as exc:
            raise invalid("nvext.session_control", str(exc)) from None
    pin = _field(raw, None, "backend_instance_id", int, None)
    fields = raw.get("extra_fields") or []
    if not (isinstance(fields, list) and all(isinstance(f, str) for f in fields)):
        raise invalid("nvext.extra_fields", "'nvext.extra_fields' must be an array of strings")
    context = raw.get("agent_context")
    if context is not None:
        try:
            context = AgentContext.from_mapping(context)
        except AgentContextError as exc:
            raise invalid(exc.param, str(exc)) from None
    return NvExt(context, priority, strict, osl,
                 bool(_field(hints, "agent_hints", "speculative_prefill", bool, False)), session,
                 pin, frozenset(fields))


def _section(raw: dict[str, Any], name: str) -> dict[str, Any]:
    section = raw.get(name)
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise invalid(f"nvext.{name}", f"'nvext.{name}' must be an object")
    return section


def _field(section: dict[str, Any], where: str | None, name: str, kind: type, default: Any) -> Any:
    param = f"nvext.{where}.{name}" if where else f"nvext.{name}"
    try:
        value = _optional(section, name, kind)
    except OpenAIError as exc:
        raise invalid(param, exc.message.replace(f"'{name}'", f"'{param}'")) from None
    return default if value is None else value


def worker_extension(worker_id: int) -> dict[str, Any]:
    """Response `nvext.worker_id`: an aggregated worker fills both the prefill and decode sides."""
    return {"worker_id": {"prefill_worker_id": worker_id, "prefill_dp_rank": 0,
                          "decode_worker_id": worker_id, "decode_dp_rank": 0}}


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("model", "'model' must be a non-empty string")
    return model


def _sampling(body: dict[str, Any], max_tokens: int | None) -> Sampling:
    if max_tokens is not None and max_tokens < 1:
        raise invalid("max_tokens", "'max_tokens' must be at least 1")
    n = _optional(body, "n", int)
    if n is not None and n != 1:
        raise invalid("n", "only n=1 is supported")
    for name in ("logprobs", "top_logprobs"):
        if body.get(name) not in (None, False, 0):
            raise invalid(name, f"'{name}' is not supported")
    temperature = _optional(body, "temperature", float)
    if temperature is not None and not 0 <= temperature <= 2:
        raise invalid("temperature", "'temperature' must be between 0 and 2")
    top_p = _optional(body, "top_p", float)
    if top_p is not None and not 0 < top_p <= 1:
        raise invalid("top_p", "'top_p' must be in (0, 1]")
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    elif not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise invalid("stop", "'stop' must be a string or an array of strings")
    stream = bool(_optional(body, "stream", bool) or False)
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise invalid("stream_options", "'stream_options' must be an object")
    include_usage = bool((options or {}).get("include_usage", False))
    return Sampling(max_tokens, temperature, top_p, _optional(body, "seed", int), stop,
                    bool(_optional(body, "ignore_eos", bool) or False), stream, include_usage)


def _optional(body: dict[str, Any], name: str, kind: type) -> Any:
    value = body.get(name)
    if value is None:
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise invalid(name, f"'{name}' must be {_KIND_NAMES[kind]}")
    if kind is int and not -2**63 <= value < 2**64:      # what travels to workers: 64 bits
        raise invalid(name, f"'{name}' is out of range (64-bit integers)")
    return value


_KIND_NAMES = {int: "an integer", float: "a number", bool: "a boolean", str: "a string"}


# ---------------------------------------------------------------------------------------------
# Responses


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict[str, Any]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


class ResponseShape:
    """Builds the chunks and bodies of one response, chat or text completion."""

    def __init__(self, chat: bool, response_id: str, model: str):
        self.chat = chat
        self.id = response_id
        self.model = model
        self.created = int(time.time())
        self.nvext: dict[str, Any] | None = None    # requested response extensions

    def _extend(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.nvext:
            body["nvext"] = self.nvext
        return body

    def final_chunk(self, finish_reason: str) -> dict[str, Any]:
        return self._extend(self.chunk(None, finish_reason))

    def chunk(self, text: str | None, finish_reason: str | None, first: bool = False,
              tool_call_deltas: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant"} if first else {}
            if text:
                delta["content"] = text
            elif first:
                delta["content"] = ""
            if tool_call_deltas:
                delta["tool_calls"] = tool_call_deltas
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                    "model": self.model, "choices": [choice]}
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        return {"id": self.id, "object": "text_completion", "created": self.created,
                "model": self.model, "choices": [choice]}

    def usage_chunk(self, usage_: dict[str, Any]) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion.chunk" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "choices": [], "usage": usage_}

    def full(self, text: str, finish_reason: str, usage_: dict[str, Any],
             tool_calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        if self.chat:
            message: dict[str, Any] = {"role": "assistant", "content": text or None}
            if tool_calls:
                message["tool_calls"] = tool_calls
            choice = {"index": 0, "message": message, "logprobs": None,
                      "finish_reason": finish_reason}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
            obj = "text_completion"
        return self._extend({"id": self.id, "object": obj, "created": self.created,
                             "model": self.model, "choices": [choice], "usage": usage_})


def sse(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


def sse_error(error: OpenAIError) -> bytes:
    """The frame that ends a failed stream; the openai SDK raises on it."""
    return b"event: error\ndata: " + json.dumps(error.body()).encode() + b"\n\n"
