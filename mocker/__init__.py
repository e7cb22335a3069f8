"""Rotor's mock engine: a simulated GPU engine with a paged prefix cache, continuous batching and a
virtual clock (DESIGN.md §5).

    mocker/config.py      MockEngineArgs: every knob, its flag and its checks
    mocker/core.py        EngineCore: the synchronous scheduler + pass loop (no asyncio)
    mocker/kv_cache.py    BlockPool: paged KV blocks, prefix caching, eviction, KV events
    mocker/scheduling.py  waiting-queue / preemption policies (fcfs, priority)
    mocker/timing.py      pass durations: Dynamo's polynomials or a profile file
    mocker/virtual.py     virtual-clock driver (replay, benchmarks)
    mocker/realtime.py    real-time driver behind `python -m worker --engine mock`
    mocker/script.py      scripted replies (text and tool calls) for agent harness tests
"""
