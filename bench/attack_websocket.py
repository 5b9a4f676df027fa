"""
The C{/chat} WebSocket classes of L{bench.attack} (issue 21): a real
C{twistd -n inkflow} in proxy mode (default options) whose one webhook
origin is a bare WebSocket sink in this process (it accepts every upgrade,
counts what it reads and never answers), and three attacks from one
address:

 - big message: one 64 MiB text message in one frame; what the server pays
   (its own CPU seconds from C{/proc}, wall time until the sink has it all,
   RSS);
 - upgrade burst: 200 upgrades at once; how many became n8n sockets;
 - ping flood: pings sent as fast as the socket takes them, no pong read;
   how much the server took in before it stopped reading, RSS, and when it
   cut the socket.

    python -m bench.attack --websocket-only
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import socket
import struct
import threading
import time
from pathlib import Path

from bench._common import HOST, Row, inkflow, read_head, running, say, twistd

MB = 1024 * 1024
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TICK = os.sysconf("SC_CLK_TCK")


class Sink(threading.Thread):
    """
    A WebSocket server that accepts every upgrade and reads (and drops)
    everything; counts sockets and bytes.
    """

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.listener = socket.socket()
        self.listener.bind((HOST, 0))
        self.listener.listen(512)
        self.port = self.listener.getsockname()[1]
        self.sockets = 0
        self.bytes = 0
        self._lock = threading.Lock()

    def run(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn:
            data = read_head(conn)
            if b"\r\n\r\n" not in data:
                return
            key = next(
                line.split(b":", 1)[1].strip()
                for line in data.split(b"\r\n")
                if line.lower().startswith(b"sec-websocket-key:")
            )
            accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
            conn.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
            with self._lock:
                self.sockets += 1
            while chunk := conn.recv(1 << 20):
                with self._lock:
                    self.bytes += len(chunk)

    def stop(self) -> None:
        self.listener.close()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def upgrade(port: int, rcvbuf: int | None = None) -> tuple[int, socket.socket]:
    """
    A WebSocket upgrade to C{/chat}; the status and the socket.
    """
    s = socket.socket()
    if rcvbuf is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(10)
    s.connect((HOST, port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        (
            f"GET /chat?executionId=1&token=t HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    data = read_head(s, 4096)
    return int(data.split(b" ", 2)[1] or 0) if data else 0, s


def frame(opcode: int, payload_length: int) -> bytes:
    """
    A masked frame's head (a zero mask: the payload goes as it is).
    """
    if payload_length < 126:
        return bytes([0x80 | opcode, 0x80 | payload_length]) + b"\0\0\0\0"
    return bytes([0x80 | opcode, 0x80 | 127]) + struct.pack("!Q", payload_length) + b"\0\0\0\0"


def big_message(port: int, pid: int, sink: Sink, size: int = 64 * MB, reference: str = "—") -> Row:
    status, s = upgrade(port)
    time.sleep(0.5)
    before_bytes, cpu0, rss0, started = sink.bytes, cpu_seconds(pid), rss_mb(pid), time.monotonic()
    peak = rss0
    sender = threading.Thread(target=lambda: _send_big(s, size), daemon=True)
    sender.start()
    while sink.bytes - before_bytes < size and time.monotonic() - started < 120:
        peak = max(peak, rss_mb(pid))
        time.sleep(0.05)
    wall = time.monotonic() - started
    cpu = cpu_seconds(pid) - cpu0
    relayed = sink.bytes - before_bytes
    s.close()
    return Row(
        "attack",
        f"WebSocket: one {size // MB} MiB message (1 socket)",
        f"{cpu:.2f} CPU-s, {wall:.1f} s, RSS +{peak - rss0:.0f} MB",
        reference,
        "—",
        "seconds and kilobytes per MB",
        status == 101 and relayed >= size and cpu < 5,
        note=f"upgrade {status}; {relayed / MB:.1f} MiB reached n8n; relayed as it arrives, backpressure both ways",
    )


def _send_big(s: socket.socket, size: int) -> None:
    with contextlib.suppress(OSError):
        s.sendall(frame(0x1, size))
        block = b"x" * MB
        for _ in range(size // MB):
            s.sendall(block)


def upgrade_burst(port: int, pid: int, sink: Sink, n: int = 200) -> Row:
    sockets0 = sink.sockets
    statuses: dict[int, int] = {}
    held: list[socket.socket] = []
    started = time.monotonic()
    cpu0 = cpu_seconds(pid)
    for _ in range(n):
        try:
            status, s = upgrade(port)
        except OSError:
            statuses[0] = statuses.get(0, 0) + 1
            continue
        statuses[status] = statuses.get(status, 0) + 1
        held.append(s)
        if status != 101:
            s.close()
    wall = time.monotonic() - started
    time.sleep(0.5)
    opened = sink.sockets - sockets0
    for s in held:
        s.close()
    shown = ", ".join(f"{k or 'no answer'}: {v}" for k, v in sorted(statuses.items()))
    return Row(
        "attack",
        f"WebSocket: {n} upgrades from one address",
        f"{opened} n8n sockets opened; {shown}",
        "upgrades count against --rate-limit (30/min)",
        "—",
        "at most the rate limit reaches n8n",
        opened <= 31,
        note=f"{wall:.1f} s, {cpu_seconds(pid) - cpu0:.2f} CPU-s",
    )


def ping_flood(port: int, pid: int, sink: Sink, seconds: float = 20.0) -> Row:
    status, s = upgrade(port, rcvbuf=4096)
    s.settimeout(1.0)
    ping = frame(0x9, 16) + b"p" * 16
    block = ping * 4096
    sent, rss0, started = 0, rss_mb(pid), time.monotonic()
    blocked_at: float | None = None
    cut_at: float | None = None
    peak = rss0
    while time.monotonic() - started < seconds:
        try:
            n = s.send(block)
            sent += n
            blocked_at = None
        except TimeoutError:
            blocked_at = blocked_at or time.monotonic() - started
        except OSError:
            cut_at = time.monotonic() - started
            break
        peak = max(peak, rss_mb(pid))
    s.close()
    took = f"{sent / MB:.1f} MB of pings went into the socket (kernel buffers included)"
    when = f"cut after {cut_at:.1f} s" if cut_at is not None else f"still open after {seconds:.0f} s"
    return Row(
        "attack",
        "WebSocket: ping flood, pongs never read (1 socket)",
        f"{took}; RSS +{peak - rss0:.0f} MB; {when}",
        "stops reading when the pongs back up; cut after --write-timeout",
        "—",
        "RSS < +8 MB, cut",
        status == 101 and peak - rss0 < 8 and cut_at is not None,
        note=f"upgrade {status}; reading stopped after {blocked_at:.1f} s" if blocked_at else f"upgrade {status}",
    )


def run(cap: float = 45.0) -> list[Row]:
    say("attack: the /chat WebSocket classes (proxy mode, a WebSocket sink as n8n)")
    sink = Sink()
    sink.start()
    rows: list[Row] = []
    from bench._common import logdir

    try:
        with logdir() as logs:
            # The reference: the same bytes through Twisted's bare TCP relay.
            command = [
                twistd(),
                "-n",
                "--pidfile=",
                "portforward",
                "-p",
                f"tcp:0:interface={HOST}",
                "-h",
                HOST,
                "-d",
                str(sink.port),
            ]
            with running("portforward", command, logs) as bare:
                say(" big message through twistd portforward (the reference)")
                ref = big_message(bare.port, bare.pid, sink)
            time.sleep(1)
        with logdir() as logs, inkflow(logs, "--webhook", f"http://{HOST}:{sink.port}/webhook/chat") as server:
            pid = server.pid
            say(" big message")
            rows.append(big_message(server.port, pid, sink, reference=f"twistd portforward: {ref.inkflow}"))
            time.sleep(1)
            say(" ping flood")
            rows.append(ping_flood(server.port, pid, sink, cap))
            time.sleep(1)
            say(" upgrade burst")  # last: it spends the address's rate limit
            rows.append(upgrade_burst(server.port, pid, sink))
            log = server.output()
            rows.append(
                Row(
                    "attack",
                    "WebSocket: tracebacks and unhandled Deferreds in the log",
                    str(log.count("Traceback") + log.count("Unhandled error in Deferred")),
                    "—",
                    "—",
                    "0",
                    "Traceback" not in log and "Unhandled error" not in log,
                )
            )
    finally:
        sink.stop()
    return rows
