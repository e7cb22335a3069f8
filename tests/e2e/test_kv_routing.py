"""KV-aware routing through the real stack: repeats go where their prefix is cached."""

from __future__ import annotations

import random

import openai

from frontend.tokenizer import Tokenizer

BLOCK = 64


def long_prompt(seed: int) -> str:
    rng = random.Random(seed)
    words = "alpha beta gamma delta river cloud kernel cache token router worker".split()
    return f"document {seed}: " + " ".join(rng.choice(words) for _ in range(1500))


def ask(client: openai.OpenAI, prompt: str):
    response = client.completions.create(
        model="rotor-mock", prompt=prompt, max_tokens=2,
        extra_body={"nvext": {"extra_fields": ["worker_id"]}})
    return response.model_extra["nvext"]["worker_id"]["decode_worker_id"], response.usage


def test_repeats_of_long_prompts_land_where_they_are_cached(stack_factory):
    stack = stack_factory()
    stack.start_worker()
    stack.start_worker()
    stack.start_frontend("--router-mode", "kv")
    stack.wait_for_workers(2)
    client = openai.OpenAI(base_url=stack.url + "/v1", api_key="x", max_retries=0, timeout=30)
    tokenizer = Tokenizer.load(None)
    prompts = [long_prompt(seed) for seed in range(6)]
    home = {}
    for prompt in prompts:
        worker, usage = ask(client, prompt)
        home[prompt] = worker
        assert usage.prompt_tokens_details.cached_tokens == 0
    assert len(set(home.values())) == 2          # load balancing spread the first visits
    for _ in range(2):
        for prompt in prompts:
            worker, usage = ask(client, prompt)
            length = len(tokenizer.encode(prompt, add_special_tokens=True))
            assert worker == home[prompt]
            # every full block but the last is a hit (an engine recomputes a prompt's last token)
            assert usage.prompt_tokens_details.cached_tokens >= (length - 1) // BLOCK * BLOCK
    metrics = stack.metrics()
    assert 'rotor_component_kv_cache_events_applied_total{event_type="stored"' in metrics


def booked_decode_blocks(stack) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in stack.metrics().splitlines()
               if line.startswith("rotor_frontend_worker_active_decode_blocks{"))


def test_osl_estimate_decays_as_the_request_generates(stack_factory):
    stack = stack_factory()
    stack.start_worker()
    stack.start_frontend()
    stack.wait_for_workers(1)
    client = openai.OpenAI(base_url=stack.url + "/v1", api_key="x", max_retries=0, timeout=30)
    stream = iter(client.completions.create(
        model="rotor-mock", prompt="a short prompt", max_tokens=600, stream=True,
        extra_body={"ignore_eos": True, "nvext": {"agent_hints": {"osl": 1000}}}))
    for _ in range(50):
        next(stream)
    early = booked_decode_blocks(stack)
    for _ in range(350):
        next(stream)
    late = booked_decode_blocks(stack)
    list(stream)
    # 1000 expected tokens are ~15.6 blocks of 64; 350 more generated tokens free ~5.5 of them
    assert early - late > 3, (early, late)
    assert booked_decode_blocks(stack) == 0
