"""Build the compiled ring; ATRACE_PUREPYTHON=1 skips it and atrace runs on the pure-Python twin."""

import os

from setuptools import Extension, setup

ext_modules = []
if not os.environ.get("ATRACE_PUREPYTHON"):
    from Cython.Build import cythonize

    ext_modules = cythonize(
        [Extension("atrace._ring", ["src/atrace/_ring.pyx"])],
        compiler_directives={"language_level": 3, "boundscheck": False, "wraparound": False},
    )

setup(ext_modules=ext_modules)
