#!/usr/bin/env bash
# Agent serving on one machine: the HTTP frontend with KV routing and agent tracing on, the
# harness tool-event ingress on 127.0.0.1:20390, and mock workers. Ctrl-C stops everything and
# flushes the trace. Every DYN_AGENT_TRACE_* variable set in the environment wins.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
export DYN_AGENT_TRACE=1
export DYN_AGENT_TRACE_OUTPUT_PATH="${DYN_AGENT_TRACE_OUTPUT_PATH:-/tmp/rotor-agent-trace}"
export DYN_AGENT_TRACE_TOOL_EVENTS_ZMQ_ENDPOINT="${DYN_AGENT_TRACE_TOOL_EVENTS_ZMQ_ENDPOINT:-tcp://127.0.0.1:20390}"
if [[ "$*" != *-h* ]]; then
  rotor_log "agent trace: ${DYN_AGENT_TRACE_OUTPUT_PATH}.NNNNNN.jsonl.gz (sinks: ${DYN_AGENT_TRACE_SINKS:-jsonl_gz})"
  rotor_log "harness tool events: PUSH to $DYN_AGENT_TRACE_TOOL_EVENTS_ZMQ_ENDPOINT (topic agent-tool-events)"
  rotor_log "view it: $PYTHON -m tracing.perfetto '${DYN_AGENT_TRACE_OUTPUT_PATH}'.*.jsonl.gz -o trace.json," \
    "then open trace.json in ui.perfetto.dev; replay it: $PYTHON -m tracing.to_mooncake" \
    "--input-path '${DYN_AGENT_TRACE_OUTPUT_PATH}'.*.jsonl.gz --output-file agent.jsonl --agentic"
fi
ROTOR_FRONTEND_ARGS=()
rotor_serve_stack agg_agent.sh kv \
  "Starts the Rotor frontend with KV routing and agent tracing (DYN_AGENT_TRACE=1; trace at
\$DYN_AGENT_TRACE_OUTPUT_PATH, default /tmp/rotor-agent-trace; tool-event ingress at
\$DYN_AGENT_TRACE_TOOL_EVENTS_ZMQ_ENDPOINT, default tcp://127.0.0.1:20390) and mock workers." "$@"
