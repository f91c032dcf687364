"""The PrkDB wire protocol, sans-IO: frames, CBOR codec, message schemas.

Nothing here does I/O or knows about trio: the server's `FramedStream` and
the client SDK feed bytes in and take bytes out (STYLE §8.10). Layers:

- `frames`: 4-byte length + one CBOR item; `FrameDecoder`, `encode_frame`.
- `schema`: field types and `Schema` (type id + fields), which drive decoding,
  encoding, docs, and the generated hot-path encoders (`Schema.compile_encoder`),
  parsers (`Schema.compile_decoder`) and list decoders (`WireType.guard`).
- `messages`: the message dataclasses, their type-id table, `to_wire`/`from_wire`,
  the request kinds (one response; a stream, `STREAM_REQUEST_TYPES`: a Watch
  answered by WatchEvents frames until cancelled or ended by an Error; none,
  `ONE_WAY_REQUEST_TYPES`: WatchCancel),
  the Hello version rules (`check_hello`: clients say 3, peers 2 or 3),
  and fast encoders for the per-operation messages (`encode_put_request`,
  `encode_write_ok`, ... generated from the table; `RaftBatchEncoder`),
  byte-identical to the generic path, and hand-written ones for ScanOk pages
  and WatchEvents; `next_message` reads the per-operation messages with
  parsers generated from the table too.
- `raft_codec`: compact positional arrays for `prkdb.raft.types.Message`.
- `errors`: `RemoteProtocolError` (the peer's fault) / `LocalProtocolError` (ours).

docs/protocol.md is generated from these tables (scripts/gen_protocol_doc.py).
"""

from prkdb.wire.errors import LocalProtocolError, RemoteProtocolError
from prkdb.wire.frames import (
    CLOSED,
    DEFAULT_MAX_FRAME,
    NEED_DATA,
    DecoderState,
    FrameDecoder,
    encode_frame,
    encode_frames,
)
from prkdb.wire.messages import (
    CLIENT_VERSIONS,
    PEER_PROTOCOL_VERSION,
    PEER_VERSIONS,
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    RaftBatchEncoder,
    encode_delete_request,
    encode_get_ok,
    encode_get_request,
    encode_message,
    encode_messages,
    encode_put_request,
    encode_raft_batch,
    encode_write_ok,
    from_wire,
    next_message,
    to_wire,
)

__all__ = [
    "CLIENT_VERSIONS",
    "CLOSED",
    "DEFAULT_MAX_FRAME",
    "NEED_DATA",
    "PEER_PROTOCOL_VERSION",
    "PEER_VERSIONS",
    "PROTOCOL_VERSION",
    "SUPPORTED_VERSIONS",
    "DecoderState",
    "FrameDecoder",
    "LocalProtocolError",
    "RaftBatchEncoder",
    "RemoteProtocolError",
    "encode_delete_request",
    "encode_frame",
    "encode_frames",
    "encode_get_ok",
    "encode_get_request",
    "encode_message",
    "encode_messages",
    "encode_put_request",
    "encode_raft_batch",
    "encode_write_ok",
    "from_wire",
    "next_message",
    "to_wire",
]
