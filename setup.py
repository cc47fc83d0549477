"""Build the compiled ring, emit path, encoders and OTLP decoder; ATRACE_PUREPYTHON=1 skips them."""

import os

from setuptools import Extension, setup

ext_modules = []
if not os.environ.get("ATRACE_PUREPYTHON"):
    from Cython.Build import cythonize

    ext_modules = cythonize(
        [
            Extension("atrace._ring", ["src/atrace/_ring.pyx"]),
            Extension("atrace._emit", ["src/atrace/_emit.pyx"]),
            Extension("atrace._encode", ["src/atrace/_encode.pyx"]),
            Extension("atrace._pgcopy", ["src/atrace/_pgcopy.pyx"]),
            Extension("atrace._otlp_pb", ["src/atrace/_otlp_pb.pyx"]),
        ],
        compiler_directives={"language_level": 3, "boundscheck": False, "wraparound": False},
    )

setup(ext_modules=ext_modules)
