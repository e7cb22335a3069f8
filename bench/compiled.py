"""Rotor's optional compiled build (setup.py, ROTOR_MYPYC=1), installed into a directory of its own
so that a benchmark or test can put it first on sys.path beside the plain checkout.

    python -m bench.compiled DIR

The sources are copied to a scratch directory first, so the checkout gets no build/ or egg-info.
When mypyc is importable here (the test extras bring it) the build runs without isolation and
downloads nothing; otherwise pip fetches mypy for it.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _tool(name: str) -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["tool"][name]


def compiled_modules() -> list[str]:
    """Dotted names of the modules the build compiles ([tool.rotor] in pyproject.toml)."""
    return [p.removesuffix(".py").replace("/", ".") for p in _tool("rotor")["compiled"]]


def build(target: Path) -> None:
    """Install Rotor, compiled, into `target` (created; it must not exist yet)."""
    with tempfile.TemporaryDirectory(prefix="rotor-compiled-src-") as scratch:
        src = Path(scratch)
        for name in ("pyproject.toml", "setup.py", "README.md"):
            shutil.copy2(ROOT / name, src / name)
        for pattern in _tool("setuptools")["packages"]["find"]["include"]:   # "router*", ...
            package = pattern.removesuffix("*")
            shutil.copytree(ROOT / package, src / package,
                            ignore=shutil.ignore_patterns("__pycache__", "*.so"))
        isolation = [] if importlib.util.find_spec("mypyc") is None else ["--no-build-isolation"]
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", *isolation,
             "--target", str(target), str(src)],
            env={**os.environ, "ROTOR_MYPYC": "1"}, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-30:])
        raise RuntimeError(f"compiled build failed (exit {proc.returncode}):\n{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compiled", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", type=Path, help="directory to install the compiled build into")
    args = parser.parse_args(argv)
    if args.target.exists():
        parser.error(f"{args.target} exists; give a new directory")
    try:
        build(args.target)
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"compiled build in {args.target}: {', '.join(compiled_modules())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
