"""``uvicorn.run()`` called by a program that configured atrace first, lifespan off.

Usage: ``python uvicorn_run.py PORT``. With no lifespan, nothing but the end of the process
can flush atrace: uvicorn restores the SIGTERM handler it found and raises the signal again.
"""

from __future__ import annotations

import sys

import uvicorn
from process_end_app import bare

if __name__ == "__main__":
    uvicorn.run(bare, host="127.0.0.1", port=int(sys.argv[1]), lifespan="off", log_level="warning")
