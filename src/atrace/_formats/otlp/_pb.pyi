"""Type stub of the compiled OTLP protobuf decoder; its twin is the upb path of ``_otlp_decode``."""

from ..._pipeline.encode import Row

__all__ = ("decode_logs_pb", "decode_traces_pb")

def decode_traces_pb(body: bytes, max_records: int) -> list[Row]: ...
def decode_logs_pb(body: bytes, max_records: int) -> list[Row]: ...
