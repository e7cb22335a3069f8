"""Agent traces in Dynamo's `dynamo.agent.trace.v1` format (DESIGN.md §6).

    config.py       TraceConfig.from_env: the DYN_AGENT_TRACE* switches
    records.py      AgentContext, RequestEnd (+ RequestClock, ToolCallCollector), tool records
    sinks.py        jsonl, jsonl_gz segments, stderr
    tracer.py       Tracer: non-blocking emit, one writer thread per sink, close() flushes all
    ingress.py      ToolEventIngress: harness tool events over ZMQ PULL
    service.py      open_tracing(config): tracer + ingress, started and closed in order
    reader.py       trace files in (shared by the two CLIs)
    perfetto.py     python -m tracing.perfetto      -> Chrome trace-event JSON
    to_mooncake.py  python -m tracing.to_mooncake   -> Mooncake / agentic Mooncake rows
"""
