"""The profiler process of the service: whylogs runs here, never holding the server's GIL.

It reads length-prefixed pickled (window start, rows) items from stdin, merges them into the window's
profile, rewrites it now and then, and writes it a last time at end of input.

    python -m mlops_nb.serving.profiler SERVING_DIR WORKER
"""
from __future__ import annotations

import os
import pickle
import struct
import sys
import time

from ..data.logs import PROFILES, window_path

WRITE_SECONDS = 60.0      # how often the growing window profile (~0.5 MB) is rewritten
HEADER = struct.Struct("!Q")


def send(stream, item) -> None:
    data = pickle.dumps(item, protocol=5)
    stream.write(HEADER.pack(len(data)) + data)
    stream.flush()


def _items(stream):
    while True:
        header = stream.read(HEADER.size)
        if len(header) < HEADER.size:
            return
        (size,) = HEADER.unpack(header)
        yield pickle.loads(stream.read(size))


def main(folder: str, worker: str) -> int:
    import signal

    from ..data import profiles

    # A stop signal to the server's process group reaches us too: finish on end of input instead, after
    # the server's last rows, which it sends when it stops.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.nice(10)  # background work: when the CPUs are busy, requests go first
    profiles.load()

    profile, window, written = None, None, 0.0

    def write():
        if profile is not None:
            path = window_path(folder, PROFILES, window, worker, ".bin")
            tmp = path.with_name("." + path.name + ".tmp")
            profiles.write(profile, tmp)
            os.replace(tmp, path)

    for start, rows in _items(sys.stdin.buffer):
        if window is not None and start != window:
            write()
            profile = None
        window = start
        profile = profiles.merge(profile, profiles.profile(rows))
        if time.monotonic() - written > WRITE_SECONDS:
            write()
            written = time.monotonic()
    write()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
