#!/usr/bin/env python3
"""A slow reader of a Server-Sent Events stream: a receive buffer of 4 KiB (set before connecting, so the TCP
window stays small) and at most RATE bytes a second, so the server's sends wait on it as they would on a reader at
the end of a slow link. Prints one line per event as it is read: `E <data>` for an event without a name, `N <name>
<data>` for a named one; `X <bytes>` at the end of the stream.

Usage: slow_sse.py PORT PATH TOKEN RATE
"""
import socket
import sys
import time

port, path, token, rate = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
s.connect(("127.0.0.1", port))
s.sendall(
    f"GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {token}\r\n"
    "accept: text/event-stream\r\nconnection: close\r\n\r\n".encode()
)
total, pending, name = 0, b"", None
start = time.monotonic()
while True:
    data = s.recv(512)
    if not data:
        break
    total += len(data)
    pending += data
    # Chunked transfer framing lines are not SSE fields: only `event:` and `data:` lines are looked at.
    *lines, pending = pending.split(b"\n")
    for line in lines:
        line = line.rstrip(b"\r").decode(errors="replace")
        if line.startswith("event: "):
            name = line[len("event: "):]
        elif line.startswith("data: "):
            body = line[len("data: "):]
            print(f"N {name} {body}" if name else f"E {body}", flush=True)
            name = None
    # The rate: sleep until `total` bytes are due.
    ahead = total / rate - (time.monotonic() - start)
    if ahead > 0:
        time.sleep(ahead)
print(f"X {total}", flush=True)
