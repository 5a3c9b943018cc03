"""The syslog transports over loopback against minimal Python collectors: framing on the wire,
a closed connection noticed and reopened, refusals raised for the forwarder to retry."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.common.polling import wait_until
from zguard.audit.syslog_transport import SyslogUnavailable, TcpTransport, UdpTransport


class TcpCollector:
    """Accepts connections on loopback and keeps what each one sent."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections: list[socket.socket] = []
        self.data: list[bytearray] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            buffer = bytearray()
            self.connections.append(conn)
            self.data.append(buffer)
            threading.Thread(target=self._read, args=(conn, buffer), daemon=True).start()

    @staticmethod
    def _read(conn: socket.socket, buffer: bytearray) -> None:
        while True:
            try:
                chunk = conn.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buffer.extend(chunk)

    def wait_for(self, connection: int, size: int, timeout: float = 5.0) -> bytes:
        def received() -> bytes | None:
            if len(self.data) > connection and len(self.data[connection]) >= size:
                return bytes(self.data[connection])
            return None

        return wait_until(received, timeout=timeout, interval=0.01, what=f"{size} bytes on connection {connection}")

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() in progress (Linux)
        self.listener.close()
        for conn in self.connections:
            conn.close()
        self._thread.join(5)


@pytest.fixture
def collector() -> Iterator[TcpCollector]:
    server = TcpCollector()
    yield server
    server.close()


def test_tcp_sends_octet_counted_frames(collector: TcpCollector) -> None:
    transport = TcpTransport("127.0.0.1", collector.port, timeout=2)
    transport.send([b"<110>1 one", b"<110>1 two\nstill two"])
    assert collector.wait_for(0, 32) == b"10 <110>1 one20 <110>1 two\nstill two"
    wait_until(transport.delivered, timeout=2, interval=0.01, what="everything sent to be acknowledged")
    transport.close()


def test_a_connection_the_collector_closed_is_noticed_and_reopened(collector: TcpCollector) -> None:
    transport = TcpTransport("127.0.0.1", collector.port, timeout=2)
    transport.send([b"first"])
    collector.wait_for(0, 7)  # "5 first"
    collector.connections[0].shutdown(socket.SHUT_RDWR)  # a FIN, as a collector that stops sends
    deadline = time.monotonic() + 2
    with pytest.raises(SyslogUnavailable, match="closed by the collector"):  # noqa: PT012  polls until noticed
        while time.monotonic() < deadline:
            transport.delivered()
            time.sleep(0.01)
    transport.send([b"second"])  # a new connection
    assert collector.wait_for(1, 8) == b"6 second"
    transport.close()


def test_a_refused_tcp_connection_raises_for_a_retry() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound but not listening: refused
        transport = TcpTransport("127.0.0.1", port, timeout=2)
        with pytest.raises(SyslogUnavailable, match="Connection refused") as caught:
            transport.send([b"x"])
    assert caught.value.target == f"tcp://127.0.0.1:{port}"
    assert caught.value.code == "syslog_unavailable"


def test_udp_sends_one_datagram_per_message() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        server.settimeout(2)
        transport = UdpTransport("127.0.0.1", server.getsockname()[1], timeout=2)
        transport.send([b"<110>1 one", b"<110>1 two"])
        assert [server.recv(65536), server.recv(65536)] == [b"<110>1 one", b"<110>1 two"]
        assert transport.delivered()
        transport.close()


def test_udp_to_a_closed_port_raises_once_the_refusal_comes_back() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    transport = UdpTransport("127.0.0.1", port, timeout=2)
    with pytest.raises(SyslogUnavailable, match="refused"):  # noqa: PT012  the ICMP answer comes after a send
        for _ in range(50):
            transport.send([b"x"])
            time.sleep(0.01)
