"""Which implementation a fresh interpreter selects, with ATRACE_PUREPYTHON set as given."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import atrace

SRC = Path(atrace.__file__).resolve().parent.parent


def selected_in_subprocess(code: str, env_value: str | None, prelude: str = "") -> str:
    """What ``code`` prints in a new interpreter after ``prelude``, the variable set (or not)."""
    env = {k: v for k, v in os.environ.items() if k != "ATRACE_PUREPYTHON"}
    if env_value is not None:
        env["ATRACE_PUREPYTHON"] = env_value
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, "-c", f"{prelude}\n{code}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()
