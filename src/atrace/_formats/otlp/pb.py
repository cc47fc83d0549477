"""The OTLP protobuf decoder that runs: the compiled ``_pb``, or its upb twin ``_pb_py``.

The collector runs it for protobuf bodies; ``IMPLEMENTATION`` says which one decodes.
"""

import typing

from ... import _speedups

__all__ = ("IMPLEMENTATION", "decode_logs_pb", "decode_traces_pb")

if typing.TYPE_CHECKING:
    # The stub and the twin declare one API; the checker reads the twin's.
    from ._pb_py import decode_logs_pb, decode_traces_pb

    IMPLEMENTATION: typing.Literal["cython", "python"]
else:
    _module, IMPLEMENTATION = _speedups.load(
        "atrace._formats.otlp._pb", "atrace._formats.otlp._pb_py"
    )
    decode_logs_pb = _module.decode_logs_pb
    decode_traces_pb = _module.decode_traces_pb
