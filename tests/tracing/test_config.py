"""TraceConfig.from_env: Dynamo's config tests (agents/trace/config.rs) and the parsing rules."""

import logging

import pytest

from tracing.config import TraceConfig, parse_sink_names


def test_disabled_by_default():
    config = TraceConfig.from_env({})
    assert not config.enabled
    assert config.sinks == ()
    assert config.output_path is None
    assert config.tool_events_endpoint is None


def test_master_switch_enables_sinks_and_path_but_not_tool_endpoint():
    config = TraceConfig.from_env({"DYN_AGENT_TRACE": "1"})
    assert config.enabled
    assert config.sinks == ("jsonl_gz",)
    assert config.output_path == "/tmp/dynamo-agent-trace"
    assert config.tool_events_endpoint is None


def test_master_switch_yields_to_per_variable_overrides():
    config = TraceConfig.from_env({
        "DYN_AGENT_TRACE": "1", "DYN_AGENT_TRACE_SINKS": "stderr",
        "DYN_AGENT_TRACE_OUTPUT_PATH": "/tmp/custom",
        "DYN_AGENT_TRACE_TOOL_EVENTS_ZMQ_ENDPOINT": "tcp://127.0.0.1:9999"})
    assert config.sinks == ("stderr",)
    assert config.output_path == "/tmp/custom"
    assert config.tool_events_endpoint == "tcp://127.0.0.1:9999"


@pytest.mark.parametrize("value", ["1", "true", "ON", "Yes", " yes "])
def test_master_switch_truthy_values(value):
    assert TraceConfig.from_env({"DYN_AGENT_TRACE": value}).enabled


@pytest.mark.parametrize("value", ["0", "", "false", "2", "enabled"])
def test_master_switch_other_values_leave_tracing_off(value):
    config = TraceConfig.from_env({"DYN_AGENT_TRACE": value, "DYN_AGENT_TRACE_SINKS": "jsonl",
                                   "DYN_AGENT_TRACE_TOOL_EVENTS_ZMQ_ENDPOINT": "tcp://x:1"})
    assert not config.enabled
    assert config.sinks == ()
    assert config.tool_events_endpoint is None      # bound only when tracing is on


def test_replay_hashes_default_on():
    assert TraceConfig.from_env({"DYN_AGENT_TRACE": "1"}).replay_hashes


@pytest.mark.parametrize("value", ["0", "false", "OFF", "no"])
def test_replay_hashes_disable_with_falsey_env(value):
    assert not TraceConfig.from_env({"DYN_AGENT_TRACE_REPLAY_HASHES": value}).replay_hashes


@pytest.mark.parametrize("value", ["1", "true", "whatever"])
def test_replay_hashes_stay_enabled_with_truthy_env(value):
    assert TraceConfig.from_env({"DYN_AGENT_TRACE_REPLAY_HASHES": value}).replay_hashes


def test_sink_names_are_trimmed_lowercased_and_empty_means_stderr():
    assert parse_sink_names(" jsonl, JSONL_GZ, STDERR ") == ("jsonl", "jsonl_gz", "stderr")
    assert parse_sink_names("") == ("stderr",)
    assert parse_sink_names(" , ") == ("stderr",)
    config = TraceConfig.from_env({"DYN_AGENT_TRACE": "1", "DYN_AGENT_TRACE_SINKS": ""})
    assert config.sinks == ("stderr",)


def test_unknown_sink_is_an_error_naming_the_variable():
    with pytest.raises(ValueError, match="DYN_AGENT_TRACE_SINKS"):
        TraceConfig.from_env({"DYN_AGENT_TRACE": "1", "DYN_AGENT_TRACE_SINKS": "jsonl,kafka"})


def test_blank_output_path_means_the_default():
    config = TraceConfig.from_env({"DYN_AGENT_TRACE": "1", "DYN_AGENT_TRACE_OUTPUT_PATH": "  "})
    assert config.output_path == "/tmp/dynamo-agent-trace"


def test_numeric_defaults_and_overrides():
    config = TraceConfig.from_env({"DYN_AGENT_TRACE": "1"})
    assert (config.capacity, config.buffer_bytes, config.flush_interval_ms) == (1024, 1 << 20, 1000)
    assert (config.gz_roll_bytes, config.gz_roll_lines) == (256 << 20, None)
    config = TraceConfig.from_env({
        "DYN_AGENT_TRACE": "1", "DYN_AGENT_TRACE_CAPACITY": "8",
        "DYN_AGENT_TRACE_JSONL_BUFFER_BYTES": "100",
        "DYN_AGENT_TRACE_JSONL_FLUSH_INTERVAL_MS": "5",
        "DYN_AGENT_TRACE_JSONL_GZ_ROLL_BYTES": "4096",
        "DYN_AGENT_TRACE_JSONL_GZ_ROLL_LINES": "3",
        "DYN_AGENT_TRACE_TOOL_EVENTS_ZMQ_TOPIC": "agent-tool-events"})
    assert (config.capacity, config.buffer_bytes, config.flush_interval_ms) == (8, 100, 5)
    assert (config.gz_roll_bytes, config.gz_roll_lines) == (4096, 3)
    assert config.tool_events_topic == "agent-tool-events"


def test_unparsable_numbers_fall_back_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="tracing.config"):
        config = TraceConfig.from_env({"DYN_AGENT_TRACE": "1",
                                       "DYN_AGENT_TRACE_JSONL_BUFFER_BYTES": "1MiB",
                                       "DYN_AGENT_TRACE_JSONL_FLUSH_INTERVAL_MS": "-5"})
    assert config.buffer_bytes == 1 << 20
    assert config.flush_interval_ms == 1000
    assert "DYN_AGENT_TRACE_JSONL_BUFFER_BYTES" in caplog.text
    assert "DYN_AGENT_TRACE_JSONL_FLUSH_INTERVAL_MS" in caplog.text


def test_zero_roll_bytes_means_default_and_zero_roll_lines_means_unset():
    config = TraceConfig.from_env({"DYN_AGENT_TRACE": "1",
                                   "DYN_AGENT_TRACE_JSONL_GZ_ROLL_BYTES": "0",
                                   "DYN_AGENT_TRACE_JSONL_GZ_ROLL_LINES": "0"})
    assert config.gz_roll_bytes == 256 << 20
    assert config.gz_roll_lines is None
