"""Type stub of the compiled OTLP protobuf decoder; its API is the twin's in ``_pb_py``."""

from ..._records import Row

__all__ = ("decode_logs_pb", "decode_traces_pb")

def decode_traces_pb(
    body: bytes, max_records: int, resources: dict[int, bytes] | None = None
) -> list[Row]: ...
def decode_logs_pb(
    body: bytes, max_records: int, resources: dict[int, bytes] | None = None
) -> list[Row]: ...
