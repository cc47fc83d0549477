"""Build the compiled ring, emit path, encoders and OTLP decoder; ATRACE_PUREPYTHON=1 skips them."""

import os

from setuptools import Extension, setup

# setup.py cannot import atrace, so it repeats the rule of atrace.config.purepython().
TRUE, FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")
switch = os.environ.get("ATRACE_PUREPYTHON", "")
if switch.strip().lower() not in TRUE + FALSE:
    raise SystemExit(f"ATRACE_PUREPYTHON={switch!r}: expected one of {', '.join(TRUE + FALSE[1:])}")

ext_modules = []
if switch.strip().lower() not in TRUE:
    from Cython.Build import cythonize

    ext_modules = cythonize(
        [
            Extension("atrace._ring", ["src/atrace/_ring.pyx"]),
            Extension("atrace._emit._hot", ["src/atrace/_emit/_hot.pyx"]),
            Extension("atrace._pipeline._encode", ["src/atrace/_pipeline/_encode.pyx"]),
            Extension("atrace._formats._pgcopy", ["src/atrace/_formats/_pgcopy.pyx"]),
            Extension("atrace._formats.otlp._pb", ["src/atrace/_formats/otlp/_pb.pyx"]),
        ],
        compiler_directives={"language_level": 3, "boundscheck": False, "wraparound": False},
    )

setup(ext_modules=ext_modules)
