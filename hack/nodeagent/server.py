"""The part of the kubelet's HTTPS API that `kubectl logs` uses: GET /containerLogs/NS/POD/NAME.

The API server reaches it at the Node's InternalIP and status.daemonEndpoints.kubeletEndpoint
port, with its kubelet client certificate (--kubelet-client-certificate); this server accepts
only certificates of the cluster CA with that identity, and presents a serving certificate the
API server verifies (--kubelet-certificate-authority). exec, attach and port-forward are not
served (they need SPDY/WebSocket streams).
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .agent import Agent

log = logging.getLogger("nodeagent.server")

# The client certificate's CN the API server uses for the kubelet (hack/cluster.py issues it).
APISERVER_CLIENT = "kube-apiserver-kubelet-client"


def tail_lines(data: bytes, n: int) -> bytes:
    """The last n lines of data (a final line without newline counts)."""
    if n <= 0:
        return b""
    lines = data.splitlines(keepends=True)
    return b"".join(lines[-n:])


class _Handler(BaseHTTPRequestHandler):
    server: KubeletServer

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _allowed(self) -> bool:
        cert = self.connection.getpeercert() if isinstance(self.connection, ssl.SSLSocket) else None
        subject: Any = (cert or {}).get("subject", ())
        names = [value for rdn in subject for key, value in rdn if key == "commonName"]
        return names == [APISERVER_CLIENT]

    def _fail(self, code: int, message: str) -> None:
        body = message.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if not self._allowed():
            self._fail(403, "forbidden: only the API server's kubelet client may call the node")
            return
        url = urllib.parse.urlsplit(self.path)
        parts = [urllib.parse.unquote(p) for p in url.path.strip("/").split("/")]
        if parts == ["healthz"]:
            self._fail(200, "ok")
            return
        if len(parts) != 4 or parts[0] != "containerLogs":
            self._fail(404, f"not served by the local node agent: {url.path}")
            return
        q = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
        self._logs(parts[1], parts[2], parts[3], q)

    def _logs(self, ns: str, pod: str, container: str, q: dict[str, str]) -> None:
        agent = self.server.agent
        found = agent.find_container(ns, pod, container)
        if found is None:
            self._fail(404, f'container "{container}" in pod "{pod}" is not known to this node')
            return
        worker, c = found
        path = worker.dir / f"{container}.log"
        previous = q.get("previous") in ("true", "1")
        if previous:
            if c.prev_log is None:
                self._fail(
                    400,
                    f'previous terminated container "{container}" in pod "{pod}" not found',
                )
                return
            start, end = c.prev_log
        else:
            if not c.ever_ran:
                reason = c.state.get("waiting", {}).get("reason", "ContainerCreating")
                self._fail(
                    400, f'container "{container}" in pod "{pod}" is waiting to start: {reason}'
                )
                return
            start, end = c.log_start, None
        raw = _read_range(path, start, end)
        data = raw
        if "tailLines" in q:
            data = tail_lines(data, int(q["tailLines"]))
        if "limitBytes" in q:
            data = data[: int(q["limitBytes"])]
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()  # HTTP/1.0: the body ends when the connection closes
        try:
            self.wfile.write(data)
            self.wfile.flush()
            if q.get("follow") not in ("true", "1") or previous:
                return
            pos = start + len(raw)
            pid = c.pid
            while not agent.stop.is_set():
                chunk = _read_range(path, pos, None)
                if chunk:
                    self.wfile.write(chunk)
                    self.wfile.flush()
                    pos += len(chunk)
                elif c.pid != pid or not c.running:
                    return  # this instance of the container ended and all it wrote is sent
                else:
                    time.sleep(0.2)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            return


def _read_range(path: Path, start: int, end: int | None) -> bytes:
    try:
        with path.open("rb") as f:
            f.seek(start)
            return f.read() if end is None else f.read(max(end - start, 0))
    except FileNotFoundError:
        return b""


class KubeletServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, agent: Agent, *, ca: str, cert: str, key: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.agent = agent
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        ctx.load_verify_locations(ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
        # The handshake happens on the handler's thread (first read), not in accept().
        self.socket = ctx.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start(self) -> None:
        threading.Thread(target=self.serve_forever, name="kubelet-api", daemon=True).start()
