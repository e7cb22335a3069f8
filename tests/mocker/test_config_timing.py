"""Engine knobs (flags, --extra-engine-args, validation) and the timing models."""

from __future__ import annotations

import argparse
import json

import pytest

from mocker.config import MockEngineArgs
from mocker.timing import PassClock, PolynomialTiming, ProfileTiming


def parse(*argv: str) -> MockEngineArgs:
    parser = argparse.ArgumentParser()
    MockEngineArgs.add_arguments(parser)
    return MockEngineArgs.from_args(parser.parse_args(list(argv)))


def test_defaults_are_dynamos():
    args = parse()
    assert (args.num_gpu_blocks, args.block_size, args.max_num_seqs, args.max_num_batched_tokens,
            args.speedup_ratio, args.decode_speedup_ratio, args.enable_prefix_caching,
            args.enable_chunked_prefill, args.scheduling_policy, args.eviction_policy) == (
        16384, 64, 256, 8192, 1.0, 1.0, True, True, "fcfs", "lru")


def test_flags_and_extra_engine_args_inline_or_from_a_file(tmp_path):
    args = parse("--num-gpu-blocks-override", "100", "--no-enable-prefix-caching",
                 "--extra-engine-args", '{"block_size": 16, "speedup_ratio": 10}')
    assert (args.num_gpu_blocks, args.enable_prefix_caching, args.block_size,
            args.speedup_ratio) == (100, False, 16, 10.0)
    path = tmp_path / "extra.json"
    path.write_text(json.dumps({"num_gpu_blocks": 7, "scheduling_policy": "priority"}))
    args = parse("--num-gpu-blocks-override", "100", "--extra-engine-args", str(path))
    assert (args.num_gpu_blocks, args.scheduling_policy) == (7, "priority")


def test_to_argv_round_trips():
    args = parse("--block-size", "16", "--no-enable-chunked-prefill", "--speedup-ratio", "2.5",
                 "--eviction-policy", "priority")
    assert parse(*args.to_argv()) == args


@pytest.mark.parametrize("extra, message", [
    ('{"bogus": 1}', "unknown key 'bogus'"),
    ('{"block_size": "64"}', "block_size must be int"),
    ('{"enable_prefix_caching": 1}', "enable_prefix_caching must be bool"),
    ("[1, 2]", "must be a JSON object"),
    ("/no/such/file.json", "not a JSON object and not a readable file"),
])
def test_bad_extra_engine_args_are_named(extra, message):
    with pytest.raises(ValueError, match=message):
        parse("--extra-engine-args", extra)


@pytest.mark.parametrize("overrides, flag", [
    ({"num_gpu_blocks": 0}, "--num-gpu-blocks-override"),
    ({"block_size": 10_000}, "--block-size"),
    ({"max_num_seqs": 0}, "--max-num-seqs"),
    ({"max_num_batched_tokens": 8, "max_num_seqs": 16}, "--max-num-batched-tokens"),
    ({"speedup_ratio": 0.0}, "--speedup-ratio"),
    ({"decode_speedup_ratio": float("nan")}, "--decode-speedup-ratio"),
    ({"eviction_policy": "mru"}, "--eviction-policy"),
    ({"profile": "/no/such/profile.json"}, "--profile"),
])
def test_absurd_values_are_refused_naming_the_flag(overrides, flag):
    with pytest.raises(ValueError, match=flag):
        MockEngineArgs(**overrides).validate()


def test_polynomial_timing_is_dynamos():
    model = PolynomialTiming()
    assert model.prefill_ms(1000) == pytest.approx(4.209989e-7 * 1e6 + 15.18344 + 16.50142)
    assert model.decode_ms(0.5) == pytest.approx(-25.74 / 4 + 27.005 + 5.74)
    assert model.decode_ms(5.0) == 1.0                  # floored at 1 ms


def test_a_pass_is_prefill_plus_decode_each_scaled():
    clock = PassClock(PolynomialTiming(), speedup_ratio=2.0, decode_speedup_ratio=4.0)
    model = PolynomialTiming()
    assert clock.pass_ms(100, True, 0.25) == pytest.approx(
        model.prefill_ms(100) / 2 + model.decode_ms(0.25) / 8)
    assert clock.pass_ms(100, False, 0.25) == pytest.approx(model.prefill_ms(100) / 2)
    assert clock.pass_ms(0, True, 0.25) == pytest.approx(model.decode_ms(0.25) / 8)


def test_profile_timing_interpolates_and_extrapolates(tmp_path):
    path = tmp_path / "profile.json"
    path.write_text(json.dumps({"prefill": {"tokens": [1000, 100], "ms": [50.0, 10.0]},
                                "decode": {"kv_usage": [0.0, 1.0], "ms": [5.0, 25.0]}}))
    model = ProfileTiming.load(path)
    assert model.prefill_ms(550) == pytest.approx(30.0)
    assert model.prefill_ms(2000) == pytest.approx(50.0 + 40.0 / 900 * 1000)
    assert model.prefill_ms(0) == pytest.approx(10.0 - 100 * 40.0 / 900)
    assert model.decode_ms(0.25) == pytest.approx(10.0)
    path.write_text('{"prefill": {"tokens": [1], "ms": [1]}, "decode": {}}')
    with pytest.raises(ValueError, match="--profile"):
        ProfileTiming.load(path)
