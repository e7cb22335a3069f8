"""Rotor's optional compiled build: the replay's hot path as C extensions.

    ROTOR_MYPYC=1 pip install .

compiles the modules listed under [tool.rotor] `compiled` in pyproject.toml with mypyc, the
compiler mypy and black build their own releases with: the same sources, type-checked and turned
into C, about 1.5x faster offline replay (bench/README.md). pip fetches mypy for the build by
itself; a C compiler and Python's headers must be there. Without ROTOR_MYPYC (the default) Rotor is
plain Python. Editable installs stay plain: compiled modules would hide later edits of the sources.
Everything else about the package is in pyproject.toml.
"""

import os
import sys
import tomllib

from setuptools import setup


def build_options() -> dict:
    if os.environ.get("ROTOR_MYPYC") != "1":
        return {}
    if "editable_wheel" in sys.argv:
        sys.exit("ROTOR_MYPYC=1 does not apply to editable installs: the compiled modules would "
                 "hide every later edit of their sources. Use `ROTOR_MYPYC=1 pip install .`.")
    try:
        from mypyc.build import mypycify
    except ImportError:      # pip's first pass asks what the build needs, then runs us again
        return {"setup_requires": ["mypy>=1.11"]}
    with open("pyproject.toml", "rb") as f:
        modules = tomllib.load(f)["tool"]["rotor"]["compiled"]
    return {"ext_modules": mypycify(["--ignore-missing-imports", *modules], opt_level="3")}


setup(**build_options())
