"""What a reply looks like to clients: stop strings, tool calls, scripted turns, and the
speculative prefill of the next turn. Scripted mock replies make the text deterministic."""

from __future__ import annotations

import json
import time

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from frontend.tokenizer import Tokenizer
from tests.conftest import Stack

BLOCK = 64

SCRIPT = {
    "replies": {
        "stop-me": {"text": "The answer is 42. END of the story, which goes on."},
        "use-tools": {"text": "Let me check.", "tool_calls": [
            {"id": "call_a", "name": "bash", "arguments": {"command": "ls -la"}},
            {"name": "read", "arguments": '{"path":"main.py"}'}]},
    },
    "turns": [{"text": "first turn"}, {"text": "second turn"}],
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    folder = tmp_path_factory.mktemp("generation")
    (folder / "script.json").write_text(json.dumps(SCRIPT))
    stack = Stack(folder)
    try:
        stack.start_worker("--script", str(folder / "script.json"))
        stack.start_frontend()
        stack.wait_for_workers(1)
        yield stack
    finally:
        stack.stop()


def client_for(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.url + "/v1", api_key="x", max_retries=0, timeout=30)


def ask(stack: Stack, request_id: str, **kwargs):
    return client_for(stack).chat.completions.create(
        model="rotor-mock", max_tokens=100, extra_headers={"x-request-id": request_id},
        messages=kwargs.pop("messages", [{"role": "user", "content": "go"}]), **kwargs)


@pytest.mark.parametrize("stream", [False, True])
def test_stop_string_ends_the_reply(stack, stream):
    response = ask(stack, "stop-me", stop=["END", "never"], stream=stream,
                   stream_options={"include_usage": True} if stream else None)
    if stream:
        chunks = list(response)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices
                  and c.choices[0].finish_reason]
        usage = chunks[-1].usage
    else:
        text, finish, usage = (response.choices[0].message.content,
                               [response.choices[0].finish_reason], response.usage)
    assert text == "The answer is 42. "
    assert finish == ["stop"]
    assert 0 < usage.completion_tokens < 20      # the worker stopped early


def test_stop_string_split_across_tokens_is_not_leaked(stack):
    chunks = list(ask(stack, "stop-me", stop=["42. EN"], stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
        "The answer is "


def test_tool_calls_stream_as_openai_deltas(stack):
    chunks = list(ask(stack, "use-tools", stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    deltas = [d for c in chunks if c.choices for d in (c.choices[0].delta.tool_calls or [])]
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text == "Let me check."
    assert finish == ["tool_calls"]
    assert [d.index for d in deltas] == [0, 1]
    assert deltas[0].id == "call_a" and deltas[1].id           # always a non-empty id
    assert [d.function.name for d in deltas] == ["bash", "read"]
    assert json.loads(deltas[0].function.arguments) == {"command": "ls -la"}
    assert json.loads(deltas[1].function.arguments) == {"path": "main.py"}


def test_tool_calls_in_a_unary_reply(stack):
    message = ask(stack, "use-tools").choices[0]
    assert message.finish_reason == "tool_calls"
    assert message.message.content == "Let me check."
    assert [(c.id, c.function.name) for c in message.message.tool_calls][0] == ("call_a", "bash")


def test_turns_are_scripted_by_assistant_message_count(stack):
    first = ask(stack, "no-such-id")
    assert first.choices[0].message.content == "first turn"
    second = ask(stack, "no-such-id-either", messages=[
        {"role": "user", "content": "go"}, {"role": "assistant", "content": "first turn"},
        {"role": "user", "content": "again"}])
    assert second.choices[0].message.content == "second turn"


def speculative_prefills(stack: Stack) -> float:
    families = {f.name: f for f in text_string_to_metric_families(stack.metrics())}
    family = families.get("rotor_frontend_speculative_prefill")
    return sum(s.value for s in family.samples if s.name.endswith("_total")
               and s.labels["status"] == "success") if family else 0.0


@pytest.mark.parametrize("speculative", [False, True])
def test_speculative_prefill_caches_the_next_turn(stack_factory, speculative):
    stack = stack_factory()
    stack.start_worker()                      # generated (unscripted) replies
    stack.start_frontend()
    stack.wait_for_workers(1)
    client = client_for(stack)
    history = [{"role": "system", "content": "You are terse. " * 40},
               {"role": "user", "content": "Tell me something long. " * 20}]
    chunks = list(client.chat.completions.create(
        model="rotor-mock", max_tokens=150, stream=True, stream_options={"include_usage": True},
        messages=history, extra_body={"nvext": {"agent_hints": {
            "speculative_prefill": speculative}}}))
    reply = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    first_prompt = chunks[-1].usage.prompt_tokens
    deadline = time.monotonic() + 10
    while speculative and speculative_prefills(stack) < 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    second = client.chat.completions.create(
        model="rotor-mock", max_tokens=1, messages=[
            *history, {"role": "assistant", "content": reply}, {"role": "user", "content": "ok"}])
    cached = second.usage.prompt_tokens_details.cached_tokens
    # What a speculative prefill computes: history + reply, no generation prompt.
    tokenizer = Tokenizer.load(None)
    warmed = len(tokenizer.encode(tokenizer.apply_chat_template(
        [*history, {"role": "assistant", "content": reply}], add_generation_prompt=False)))
    assert warmed > first_prompt + 2 * BLOCK
    if speculative:      # every full block of history + reply was prefilled in the background
        assert cached >= warmed // BLOCK * BLOCK - BLOCK
    else:                # the first prompt, and at most the decode block that began the reply
        assert first_prompt // BLOCK * BLOCK <= cached <= first_prompt + BLOCK
