"""The optional compiled build (setup.py, ROTOR_MYPYC=1): it builds, every listed module is a C
extension, the tests of the code it compiles pass against it, and it replays exactly as the plain
sources do."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from bench.compiled import build, compiled_modules
from tests.conftest import ROOT

# The build takes ~30 s and the inner run ~40 s here: room beyond the suite's 120 s per test.
pytestmark = pytest.mark.timeout(300)

# Everything that runs the compiled modules in this process (end-to-end tests run the plain
# sources in their own processes, so they add nothing here).
IN_PROCESS_TESTS = ["tests/router", "tests/mocker", "tests/replay", "tests/worker",
                    "tests/frontend", "tests/tracing"]
REPLAY = """
import json
from mocker.replay import replay_trace, trace_from_rows
from tests.replay.replay_factories import make_engine, row
rows = [row(i * 40, [1, 2, 3 + i % 4, *range(100 + 20 * i, 115 + 20 * i)], 100 + 7 * i, 5 + i % 9)
        for i in range(60)]
report = replay_trace(trace_from_rows(rows, trace_block_size=32), router_mode="kv", num_workers=2,
                      engine_args=make_engine(num_gpu_blocks=40))
report.pop("wall_time_ms")
print(json.dumps(report, sort_keys=True))
"""


def _can_compile() -> str | None:
    """Why this machine cannot build C extensions, or None."""
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        return f"no C compiler ({compiler})"
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").exists():
        return "no Python headers (Python.h)"
    return None


@pytest.fixture(scope="module")
def compiled_site(tmp_path_factory):
    reason = _can_compile()
    if reason:
        pytest.skip(f"compiled build not possible here: {reason}")
    site = tmp_path_factory.mktemp("compiled") / "site"
    build(site)
    return site


def _run(args: list[str], site: Path, **env: str) -> subprocess.CompletedProcess:
    # PYTHONPATH puts the build ahead of the checkout, which supplies tests/ and bench/
    return subprocess.run([sys.executable, *args], cwd=site.parent, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{ROOT}", **env},
                          timeout=600)


def test_every_listed_module_is_a_c_extension(compiled_site):
    code = ("import importlib, sys\n"
            f"for name in {compiled_modules()!r}:\n"
            "    print(name, importlib.import_module(name).__file__)")
    proc = _run(["-c", code], compiled_site)
    assert proc.returncode == 0, proc.stderr
    files = dict(line.split() for line in proc.stdout.splitlines())
    assert sorted(files) == sorted(compiled_modules())
    for name, file in files.items():
        assert file.startswith(str(compiled_site)) and file.endswith(".so"), (name, file)


def test_the_in_process_tests_pass_against_the_compiled_modules(compiled_site):
    proc = _run(["-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "--rootdir", str(ROOT),
                 "-c", str(ROOT / "pyproject.toml"), "-o", f"pythonpath={compiled_site} {ROOT}",
                 *(str(ROOT / t) for t in IN_PROCESS_TESTS)],
                compiled_site, ROTOR_EXPECT_COMPILED="1")
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout.splitlines()[-1]


def test_compiled_and_plain_replays_agree_to_the_last_digit(compiled_site, tmp_path):
    reports = []
    for path in (f"{compiled_site}{os.pathsep}{ROOT}", str(ROOT)):
        proc = subprocess.run([sys.executable, "-c", REPLAY], cwd=tmp_path, capture_output=True,
                              text=True, env={**os.environ, "PYTHONPATH": path}, timeout=120)
        assert proc.returncode == 0, proc.stderr
        reports.append(json.loads(proc.stdout))
    assert reports[0] == reports[1]
    assert reports[0]["completed_requests"] == 60 and reports[0]["prefix_cache_reused_ratio"] > 0
