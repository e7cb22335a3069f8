"""Tokenization parity between Rotor and a real engine (DESIGN.md §8).

The frontend routes with its own token ids, so they must equal what the engine computes. At
start-up a worker hosting a real engine renders and encodes a fixed set of requests with Rotor's
one tokenization path (frontend/tokenizer.py) and asks the engine's `/tokenize` for the same
requests; every difference is logged loudly and reported (the worker's discovery record, the
frontend's /health and metrics).

    CASES                        the fixed requests: chat (array content parts, system, tools,
                                 assistant tool calls, tool results, several turns) and completions
                                 (with the tokenizer's special tokens, e.g. BOS)
    rotor_token_ids(tok, case)   Rotor's ids for one case
    ConformanceReport            {passed, cases, mismatches: [{case, first_diff, rotor, engine}]}

The engine side is a callable `tokenize(case, rotor_text) -> ids`, so the same check serves vLLM and SGLang.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from frontend.tokenizer import Tokenizer

_WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {"type": "object",
                       "properties": {"city": {"type": "string"},
                                      "unit": {"type": "string", "enum": ["c", "f"]}},
                       "required": ["city"]},
    },
}
_SEARCH_TOOL = {
    "type": "function",
    "function": {"name": "search", "description": "Search the repository.",
                 "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}},
}


@dataclass(frozen=True)
class ConformanceCase:
    name: str
    kind: str                                  # "chat" | "completion"
    messages: list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    prompt: str | None = None                  # completion: text; special tokens are added


CASES: tuple[ConformanceCase, ...] = (
    ConformanceCase("user_only", "chat", [{"role": "user", "content": "Hello there! How are you?"}]),
    ConformanceCase("system_user", "chat", [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "List three prime numbers."}]),
    ConformanceCase("array_content_parts", "chat", [
        {"role": "system", "content": [{"type": "text", "text": "Be helpful. "},
                                       {"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "text", "text": "First part, "},
                                     {"type": "text", "text": "second part."}]}]),
    ConformanceCase("several_turns", "chat", [
        {"role": "system", "content": "You answer in French."},
        {"role": "user", "content": "Good morning"},
        {"role": "assistant", "content": "Bonjour !"},
        {"role": "user", "content": "How do I say 'thank you'?"},
        {"role": "assistant", "content": "Merci."},
        {"role": "user", "content": "And 'see you tomorrow'? Ünïcödé ✓ 日本語"}]),
    ConformanceCase("tools", "chat", [
        {"role": "user", "content": "What's the weather in Paris?"}],
        tools=[_WEATHER_TOOL, _SEARCH_TOOL]),
    ConformanceCase("tool_calls_and_results", "chat", [
        {"role": "system", "content": "You are a coding agent."},
        {"role": "user", "content": "Weather in Paris and Oslo, please."},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
            {"id": "call_2", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\", \"unit\": \"c\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "4 C, rain"},
        {"role": "assistant", "content": "Paris is sunny; Oslo is rainy."},
        {"role": "user", "content": "Thanks!"}],
        tools=[_WEATHER_TOOL]),
    ConformanceCase("completion_plain", "completion", prompt="def fibonacci(n):\n    return"),
    ConformanceCase("completion_with_bos", "completion",
                    prompt="<|endoftext|>Once upon a time, in a land far away,"),
)


@dataclass
class ConformanceReport:
    """Result of the start-up check; `to_dict()` goes into the discovery record and /health."""

    passed: bool
    cases: int
    mismatches: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None             # the check could not run (engine has no /tokenize, ...)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"passed": self.passed, "cases": self.cases,
                               "mismatches": self.mismatches}
        if self.error is not None:
            out["error"] = self.error
        return out


def rotor_text(tokenizer: Tokenizer, case: ConformanceCase) -> str:
    """The prompt text Rotor encodes: the rendered chat template, or the completion prompt."""
    if case.kind == "chat":
        return tokenizer.apply_chat_template(case.messages or [], tools=case.tools,
                                             add_generation_prompt=True)
    assert case.prompt is not None
    return case.prompt


def rotor_token_ids(tokenizer: Tokenizer, case: ConformanceCase) -> list[int]:
    """Rotor's ids, exactly as the frontend computes them for the same request."""
    return tokenizer.encode(rotor_text(tokenizer, case), add_special_tokens=case.kind != "chat")


def first_difference(a: list[int], b: list[int]) -> int | None:
    """Index of the first position where the lists differ (or the shorter length), None if equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


async def check(tokenizer: Tokenizer,
                engine_tokenize: Callable[[ConformanceCase, str], Awaitable[list[int]]],
                cases: tuple[ConformanceCase, ...] = CASES) -> ConformanceReport:
    """Compare Rotor's ids with the engine's for every case. Engine errors become the report's
    `error` (the check failed to run, which is not a pass). `engine_tokenize(case, text)` gets
    Rotor's prompt text too, for engines that can only tokenize text (no chat form)."""
    mismatches = []
    for case in cases:
        ours = rotor_token_ids(tokenizer, case)
        try:
            theirs = await engine_tokenize(case, rotor_text(tokenizer, case))
        except Exception as exc:  # noqa: BLE001 - any transport failure ends the check, reported
            return ConformanceReport(False, len(cases), mismatches,
                                     error=f"{case.name}: engine tokenize failed: {exc}")
        at = first_difference(ours, theirs)
        if at is not None:
            mismatches.append({
                "case": case.name, "first_diff": at, "rotor_len": len(ours),
                "engine_len": len(theirs), "rotor": ours[max(at - 3, 0):at + 8],
                "engine": theirs[max(at - 3, 0):at + 8],
                "rotor_text": tokenizer.decode(ours[at:at + 8], skip_special_tokens=False),
                "engine_text": tokenizer.decode(theirs[at:at + 8], skip_special_tokens=False)})
    return ConformanceReport(not mismatches, len(cases), mismatches)
