"""Scripted replies (`--script FILE`): what a mock worker answers, so agent harnesses can run real tool
loops against mock workers.

    {
      "replies": {                                   keyed by the caller's x-request-id
        "fix-bug-1": {"text": "Let me look.",
                      "tool_calls": [{"name": "read_file", "arguments": {"path": "main.py"}}]}
      },
      "turns": [                                     else by turn: the number of assistant messages
        {"tool_calls": [{"name": "bash", "arguments": {"cmd": "ls"}}]},   already in the chat
        {"text": "All done."}
      ]
    }

A reply holds `text` and/or `tool_calls` (`name`, `arguments` as an object or a JSON string, an
optional `id`). A request matching no entry gets the engine's generated tokens. The engine spends a
token per token of text and of each tool call's JSON, so scripted replies take realistic time; the
text tokens stream as usual and the tool calls reach the client as OpenAI `tool_calls` deltas with the
final output (finish reason `tool_calls`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import xxhash

from worker.engine import EngineRequest

Encode = Callable[[str], list[int]]


@dataclass(slots=True, frozen=True)
class ToolCall:
    name: str
    arguments: str          # JSON text
    id: str | None = None


@dataclass(slots=True, frozen=True)
class Reply:
    text_ids: list[int]
    tool_calls: tuple[ToolCall, ...]
    tool_ids: list[int]     # tokens the engine spends on the tool calls (not streamed as text)

    @property
    def token_ids(self) -> list[int]:
        return self.text_ids + self.tool_ids

    def tool_call_deltas(self, request_id: str) -> list[dict[str, Any]]:
        """The tool calls as OpenAI streaming `tool_calls` deltas."""
        return [{"index": i, "type": "function",
                 "id": call.id or "call_" + xxhash.xxh3_64_hexdigest(f"{request_id}:{i}".encode()),
                 "function": {"name": call.name, "arguments": call.arguments}}
                for i, call in enumerate(self.tool_calls)]


class ScriptBook:
    def __init__(self, by_request_id: dict[str, Reply], turns: Sequence[Reply]):
        self._by_request_id = by_request_id
        self._turns = list(turns)

    @classmethod
    def load(cls, path: str | Path, encode: Encode) -> "ScriptBook":
        try:
            raw = json.loads(Path(path).read_text())
        except OSError as exc:
            raise ValueError(f"--script: cannot read {path}: {exc.strerror}") from exc
        except json.JSONDecodeError as exc:
            raise ValueError(f"--script: {path} is not JSON: {exc}") from exc
        if not isinstance(raw, dict) or not set(raw) <= {"replies", "turns"}:
            raise ValueError('--script: expected an object with "replies" and/or "turns"')
        replies = raw.get("replies", {})
        turns = raw.get("turns", [])
        if not isinstance(replies, dict) or not isinstance(turns, list):
            raise ValueError('--script: "replies" must be an object and "turns" a list')
        return cls({key: _reply(value, encode, f"replies[{key!r}]") for key, value in replies.items()},
                   [_reply(value, encode, f"turns[{i}]") for i, value in enumerate(turns)])

    def reply_for(self, request: EngineRequest) -> Reply | None:
        if request.x_request_id in self._by_request_id:
            return self._by_request_id[request.x_request_id]
        if not self._turns or request.body is None:
            return None
        messages = json.loads(request.body).get("messages") or []
        turn = sum(1 for m in messages if isinstance(m, dict) and m.get("role") == "assistant")
        return self._turns[turn] if turn < len(self._turns) else None


def _reply(raw: Any, encode: Encode, where: str) -> Reply:
    if not isinstance(raw, dict) or not set(raw) <= {"text", "tool_calls"}:
        raise ValueError(f'--script: {where} must be an object with "text" and/or "tool_calls"')
    text = raw.get("text", "")
    calls = raw.get("tool_calls", [])
    if not isinstance(text, str) or not isinstance(calls, list):
        raise ValueError(f'--script: {where}: "text" must be a string and "tool_calls" a list')
    tool_calls = tuple(_tool_call(call, f"{where}.tool_calls[{i}]") for i, call in enumerate(calls))
    tool_ids = [t for call in tool_calls for t in encode(json.dumps(
        {"name": call.name, "arguments": call.arguments}))]
    reply = Reply(encode(text) if text else [], tool_calls, tool_ids)
    if not reply.token_ids:
        raise ValueError(f"--script: {where} is empty")
    return reply


def _tool_call(raw: Any, where: str) -> ToolCall:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str) or not raw["name"]:
        raise ValueError(f'--script: {where} needs a "name"')
    arguments = raw.get("arguments", {})
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments)
    call_id = raw.get("id")
    if call_id is not None and not isinstance(call_id, str):
        raise ValueError(f'--script: {where}: "id" must be a string')
    return ToolCall(raw["name"], arguments, call_id)
