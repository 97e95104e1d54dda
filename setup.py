"""Build the compiled twins from ``_speedups/`` (metadata lives in pyproject.toml).

DESCARTES_FAST_NO_EXTENSIONS=1       build pure Python only
DESCARTES_FAST_REQUIRE_EXTENSIONS=1  a failed compile fails the install
(otherwise a failed compile falls back to the pure twins, with a banner)
DESCARTES_FAST_CYTHON_TRACE=1        line tracing for coverage of compiled code
"""

import runpy
import sys
from pathlib import Path

from setuptools import setup

# The twin table and the flag parser of the package itself (a file that imports only os), so the
# build and the package cannot disagree about which modules are compiled or what a flag means.
_TWINS = runpy.run_path(str(Path(__file__).parent / "descartes_fast" / "_twins.py"))


def _flag(name):
    try:
        return _TWINS["env_flag"](name)
    except ValueError as exc:
        sys.exit(str(exc))


NO_EXT = _flag("DESCARTES_FAST_NO_EXTENSIONS") or sys.implementation.name != "cpython"
REQUIRE = _flag("DESCARTES_FAST_REQUIRE_EXTENSIONS")

#: compiled module -> its Cython source, from the twin table (``_speedups/<path of the module>.pyx``)
SPEEDUPS = {compiled: _TWINS["source_of"](compiled) for _pure, compiled in _TWINS["TWINS"].values()}


def _banner(text):
    line = "*" * 72
    print(f"{line}\n* descartes_fast: {text}\n{line}", file=sys.stderr, flush=True)


def _extensions():
    if NO_EXT:
        _banner("pure-Python build (DESCARTES_FAST_NO_EXTENSIONS or not CPython)")
        return [], {}
    try:
        from Cython.Build import build_ext
        from Cython.Distutils.extension import Extension
    except ImportError:
        if REQUIRE:
            raise
        _banner("Cython is not installed: pure-Python build (much slower)")
        return [], {}

    class LoudBuildExt(build_ext):
        """Say what was built, and say it loudly when an optional build failed."""

        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as exc:
                if REQUIRE:
                    raise
                _banner(f"compiling {ext.name} FAILED ({exc}); falling back to the "
                        "pure-Python twin (much slower)")
                return
            _banner(f"compiled {ext.name}")

    directives = {"language_level": "3", "embedsignature": True}
    macros = []
    if _flag("DESCARTES_FAST_CYTHON_TRACE"):
        directives["linetrace"] = True
        macros.append(("CYTHON_TRACE", "1"))
    exts = [Extension(name, [src], optional=not REQUIRE, cython_directives=directives,
                      define_macros=macros, extra_compile_args=["-O3"])
            for name, src in SPEEDUPS.items()]
    return exts, {"build_ext": LoudBuildExt}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
