"""Build script: compiles the hot path ``fastgw/_core.pyx`` with Cython.

Metadata lives in pyproject.toml. Set ``FASTGW_NO_EXTENSIONS=1`` at build time
to skip the extension (the pure-Python twin ``fastgw/_core_py.py`` is then used).
``FASTGW_CYTHON_ANNOTATE=1`` writes ``fastgw/_core.html`` next to the source.
"""

import os

from setuptools import setup

CYTHON_DIRECTIVES = {
    "language_level": "3",
    "boundscheck": False,
    "wraparound": False,
    "cdivision": True,
    "embedsignature": True,
}


def extensions():
    if os.environ.get("FASTGW_NO_EXTENSIONS", "") not in ("", "0"):
        return []
    from Cython.Build import cythonize
    from setuptools import Extension

    return cythonize(
        [Extension("fastgw._core", ["fastgw/_core.pyx"], extra_compile_args=["-O2"])],
        compiler_directives=CYTHON_DIRECTIVES,
        annotate=os.environ.get("FASTGW_CYTHON_ANNOTATE") == "1",
    )


setup(ext_modules=extensions())
