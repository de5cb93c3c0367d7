"""A tiny in-memory object server app: the input names an object, the output is its bytes.

Used by the simulator, the core tests and the core benchmark. It shows the app side of the minisocket
API in a dozen lines: answer an input with an output continuation (here simply the object's name)
and the first bytes; answer each fetched range with the bytes at that offset.
"""

from __future__ import annotations

from collections.abc import Mapping

from trickles.minisocket import Minisocket
from trickles.wire import CHUNK_DATA, REGION_SHIFT, UcontKind

NOT_FOUND = 404


class MemoryApp:
    def __init__(self, objects: Mapping[bytes, bytes]) -> None:
        self.objects = dict(objects)
        self.events = 0

    def handle(self, msk: Minisocket) -> None:
        self.events += 1
        objects = self.objects
        for slot, inp in enumerate(msk.inputs):
            if not inp.fin:
                continue  # names are short; a real app would return an input continuation here
            name = inp.ucont + inp.data
            obj = objects.get(name)
            start = inp.region << REGION_SHIFT
            if obj is None:
                msk.send_error(slot, inp.region, NOT_FOUND, b"no such object")
                continue
            msk.set_ucont(
                slot, UcontKind.OUTPUT, inp.region, inp.offset + len(inp.data), start, start + len(obj), name
            )
            room = msk.capacity(slot) - CHUNK_DATA.size
            if room > 0 and obj:
                msk.send_data(slot, start, obj[:room])
        for slot, seg, start, length in msk.fetch_slots():
            obj = objects.get(seg.ucont)
            if obj is None:
                continue
            off = start - ((start >> REGION_SHIFT) << REGION_SHIFT)
            msk.send_data(slot, start, obj[off : off + length])
