"""A 120k-token prompt is tokenized off the event loop: other streams keep flowing meanwhile."""

from __future__ import annotations

import threading
import time

import openai

from frontend.tokenizer import Tokenizer

LONG = "prefill " * 60000          # ~120k tokens


def test_long_prompt_does_not_stall_other_streams(stack_factory):
    stack = stack_factory()
    stack.start_worker()
    stack.start_frontend()
    stack.wait_for_workers(1)
    client = openai.OpenAI(base_url=stack.url + "/v1", api_key="x", max_retries=0, timeout=60)

    started = time.perf_counter()
    Tokenizer.load(None).encode(LONG)
    encode_s = time.perf_counter() - started          # what encoding costs on one core

    arrivals: list[float] = []
    stream = client.chat.completions.create(
        model="rotor-mock", max_tokens=1500, stream=True, extra_body={"ignore_eos": True},
        messages=[{"role": "user", "content": "keep talking"}])

    def read() -> None:
        for _ in stream:
            arrivals.append(time.perf_counter())

    reader = threading.Thread(target=read)
    reader.start()
    while len(arrivals) < 50:
        time.sleep(0.005)
    sent = time.perf_counter()
    try:   # tokenized in full, then refused: max_tokens cannot fit in the context
        client.chat.completions.create(model="rotor-mock", max_tokens=100000,
                                       messages=[{"role": "user", "content": LONG}])
    except openai.BadRequestError as exc:
        assert "context length" in exc.body["message"]
    else:
        raise AssertionError("the long request should not fit")
    answered = time.perf_counter()
    reader.join()
    during = [b - a for a, b in zip(arrivals, arrivals[1:]) if sent <= b <= answered + 0.05]
    assert len(during) >= 3, "the other stream should have advanced meanwhile"
    # encoding on the loop would stall this stream for at least encode_s (measured: 152 ms vs
    # 150 ms); off the loop the largest gap was 12 ms
    assert max(during) < encode_s / 2, (max(during), encode_s)
