"""TextStream: what clients see of a request's outputs."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from frontend.pipeline import RequestRun, TextStream
from frontend.protocol import OpenAIError, Sampling
from frontend.tokenizer import Tokenizer
from worker.engine import EngineRequest, RequestOutput

TOKENIZER = Tokenizer.load(None)


class FakeRun:
    """The two things TextStream reads from a RequestRun: its outputs and its model."""

    def __init__(self, batches: list[list[RequestOutput]]):
        self.model = SimpleNamespace(tokenizer=TOKENIZER)
        self.batches = batches
        self.finish_reason = None
        self.cancelled = False

    async def next_outputs(self) -> list[RequestOutput]:
        batch = self.batches.pop(0)
        if batch[-1].finish_reason:
            self.finish_reason = batch[-1].finish_reason
        return batch

    def cancel(self) -> None:
        self.cancelled = True


def sampling(**overrides) -> Sampling:
    fields = dict(max_tokens=10, temperature=None, top_p=None, seed=None, stop=[], ignore_eos=False,
                  stream=True, include_usage=False)
    return Sampling(**{**fields, **overrides})


def read_all(stream: TextStream) -> str:
    async def run() -> str:
        pieces = []
        while stream.finish_reason is None:
            pieces.append((await stream.next())[0])
        return "".join(pieces)
    return asyncio.run(run())


def test_engine_text_replaces_detokenized_tool_call_text():
    """vLLM's tool parser turns the call's tokens into deltas: their text must not stream too."""
    call_ids = TOKENIZER.encode('<tool_call>\n{"name": "bash"}\n</tool_call>')
    run = FakeRun([
        [RequestOutput("r", 0, TOKENIZER.encode("Let me check."), text="Let me check.")],
        [RequestOutput("r", 4, call_ids, text="",
                       tool_call_deltas=[{"index": 0, "id": "c1", "type": "function",
                                          "function": {"name": "bash", "arguments": "{}"}}])],
        [RequestOutput("r", 20, [], finish_reason="tool_calls", text="")],
    ])
    stream = TextStream(run, sampling())
    assert read_all(stream) == "Let me check."
    assert stream.finish_reason == "tool_calls"
    assert stream.message()["tool_calls"][0]["function"]["name"] == "bash"


def test_without_engine_text_the_tokens_are_detokenized():
    ids = TOKENIZER.encode("plain text, from ids")
    run = FakeRun([[RequestOutput("r", 0, ids[:3])], [RequestOutput("r", 3, ids[3:], "length")]])
    assert read_all(TextStream(run, sampling())) == "plain text, from ids"


class StrayCancelStream:
    """A worker stream whose wait ends in a CancelledError nobody asked for, like a socket close
    cancelling a pending receive under the request."""

    async def next_outputs(self) -> list[RequestOutput]:
        waiter = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(waiter.cancel)
        return await waiter


def streaming_run(stream) -> RequestRun:
    """A RequestRun already dispatched to a worker whose stream is `stream`."""
    run = RequestRun(SimpleNamespace(tokenizer=TOKENIZER), EngineRequest("r", [1, 2], 4, 0.0),
                     None, None, 0, None, None)
    run._stream = stream
    return run


def test_a_cancellation_nobody_asked_for_is_an_internal_error_not_a_silent_end(caplog):
    with pytest.raises(OpenAIError) as failed:
        asyncio.run(streaming_run(StrayCancelStream()).next_outputs())
    assert failed.value.status == 500
    assert "request r: internal error: cancelled, but not by its client" in caplog.text


def test_a_client_disconnect_still_cancels():
    """The handler's own task is cancelled (aiohttp's handler_cancellation): that goes through."""
    async def run() -> None:
        task = asyncio.create_task(streaming_run(SimpleNamespace(
            next_outputs=lambda: asyncio.sleep(30))).next_outputs())
        await asyncio.sleep(0.05)
        task.cancel()
        await task

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(run())
