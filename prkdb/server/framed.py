"""`FramedStream`: one owner of a trio stream and its frame decoder (STYLE §8.11).

Reads go through a sans-IO `FrameDecoder`; writes are queued and a single
writer task coalesces everything queued into one `send_all`, so many small
responses (or Raft batches) leave in one syscall. A send that fails marks the
stream broken and closes it.
"""

from __future__ import annotations

from typing import Any

import trio

from prkdb.wire import CLOSED, NEED_DATA, FrameDecoder, encode_message
from prkdb.wire.messages import WireMessage

READ_SIZE = 256 * 1024


class StreamClosed(Exception):
    """The peer closed the connection (cleanly or not)."""


class FramedStream:
    def __init__(self, stream: trio.abc.Stream, max_frame: int, queue: int = 4096) -> None:
        self.stream = stream
        self.decoder = FrameDecoder(max_frame=max_frame)
        self.max_frame = max_frame
        self._out_send, self._out_recv = trio.open_memory_channel[bytes](queue)
        self.broken = False
        self._writer_done = trio.Event()

    async def receive(self) -> Any:
        """The next decoded CBOR item; raises StreamClosed at EOF or on a reset.

        Raises `RemoteProtocolError` for bad bytes (after which the decoder is dead).
        """
        while True:
            item = self.decoder.next_frame()
            if item is CLOSED:
                raise StreamClosed("peer closed the connection")
            if item is not NEED_DATA:
                return item
            try:
                data = await self.stream.receive_some(READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
                raise StreamClosed(str(e)) from None
            self.decoder.receive_data(bytes(data))

    def send_nowait(self, msg: WireMessage) -> bool:
        """Queue `msg` for the writer; False (dropped) if the queue is full or closed."""
        return self.send_bytes_nowait(encode_message(msg, max_frame=self.max_frame))

    def send_bytes_nowait(self, data: bytes) -> bool:
        if self.broken:
            return False
        try:
            self._out_send.send_nowait(data)
            return True
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            return False

    async def send_now(self, msg: WireMessage) -> None:
        """Send directly (used before the writer runs, e.g. for the hello)."""
        await self.stream.send_all(encode_message(msg, max_frame=self.max_frame))

    async def run_writer(self) -> None:
        """Write queued frames, coalescing whatever is queued into one write."""
        try:
            async for first in self._out_recv:
                chunks = [first]
                while len(chunks) < 1024:
                    try:
                        chunks.append(self._out_recv.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                await self.stream.send_all(b"".join(chunks))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self.broken = True
        finally:
            self.broken = True
            self._writer_done.set()

    async def aclose(self, flush_timeout: float = 0.0) -> None:
        """Close; with `flush_timeout`, first let a running writer send what is queued."""
        self._out_send.close()
        if flush_timeout and not self.broken:
            with trio.move_on_after(flush_timeout) as cs:
                cs.shield = True
                await self._writer_done.wait()
        self.broken = True
        with trio.move_on_after(1) as cs:
            cs.shield = True
            await self.stream.aclose()
