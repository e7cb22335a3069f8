"""RouterConfig: DESIGN.md §9 flags and defaults, --router-config overrides, validation."""

import argparse
import json

import pytest

from router.config import RouterConfig


def parse(*argv):
    parser = argparse.ArgumentParser()
    RouterConfig.add_arguments(parser)
    return RouterConfig.from_args(parser.parse_args(list(argv)))


def test_defaults_match_the_design():
    c = parse()
    assert (c.router_mode, c.router_kv_overlap_score_weight, c.router_temperature,
            c.router_kv_events, c.router_ttl_secs, c.router_queue_threshold,
            c.router_queue_policy, c.busy_kv_fraction, c.max_queue_depth,
            c.max_queue_wait_ms) == ("kv", 1.0, 0.0, True, 120.0, 4.0, "fcfs", 0.95, 1024, 30000)


def test_flags_and_json_overrides(tmp_path):
    path = tmp_path / "router.json"
    path.write_text(json.dumps({"router_temperature": 0.5, "max_queue_depth": 3}))
    c = parse("--router-mode", "round_robin", "--no-router-kv-events",
              "--router-queue-threshold", "none", "--router-config", str(path))
    assert (c.router_mode, c.router_kv_events, c.router_queue_threshold,
            c.router_temperature, c.max_queue_depth) == ("round_robin", False, None, 0.5, 3)
    assert parse("--router-config", '{"busy_kv_fraction": 0.5}').busy_kv_fraction == 0.5


@pytest.mark.parametrize("overrides, field", [
    ({"nope": 1}, "nope"), ({"busy_kv_fraction": 1.5}, "busy_kv_fraction"),
    ({"router_mode": "direct"}, "router_mode"), ({"router_ttl_secs": 0}, "router_ttl_secs"),
])
def test_bad_values_name_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        parse("--router-config", json.dumps(overrides))
