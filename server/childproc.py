"""Child processes driven from the event loop over their stdin/stdout: the online writer
(``server.store.writer``) and the trainer process (``server.models.remote``).

Frames: a 4-byte big-endian length, then a pickle. Both ends are this project's own code, started by the server
itself from its own interpreter: the pickles never come from a client.

>>> import io
>>> buf = io.BytesIO(frame({"rows": 2}))
>>> (n,) = HEADER.unpack(buf.read(HEADER.size)); pickle.loads(buf.read(n))
{'rows': 2}
"""

from __future__ import annotations

import asyncio
import pickle
import struct
from typing import Any

HEADER = struct.Struct(">I")


def frame(obj: Any) -> bytes:
    """``obj`` pickled, with its length in front."""
    body = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(body)) + body


async def read_frame(stream: asyncio.StreamReader) -> Any:
    """The next frame's object (``asyncio.IncompleteReadError`` at the end of the stream)."""
    (n,) = HEADER.unpack(await stream.readexactly(HEADER.size))
    return pickle.loads(await stream.readexactly(n))


async def close_child(proc: asyncio.subprocess.Process, timeout_s: float) -> None:
    """Close the child's input (it exits at the end of its input); kill it if it lingers past ``timeout_s``."""
    if proc.returncode is not None:
        return
    assert proc.stdin is not None
    proc.stdin.close()
    try:
        await asyncio.wait_for(proc.wait(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
