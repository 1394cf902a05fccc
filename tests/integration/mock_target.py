"""A mock target server on 127.0.0.1 for the outbox tests.

Each path answers from a script: a list of responses used in turn (the last
one repeats). A response is a dict: status (default 200), headers, body,
delay (seconds before answering), close (drop the connection without an
answer). Every request is recorded with its time, method, path, query,
headers and body.

    with MockTarget() as m:
        m.script("/slack", [{"status": 429, "headers": {"Retry-After": "2"}}, {"status": 200}])
        ... point a target at m.url("/slack") ...
        m.wait_for(lambda reqs: len(reqs) >= 2, timeout=10)
"""
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


class Request:
    def __init__(self, method, path, query, headers, body):
        self.time = time.time()
        self.method, self.path, self.query = method, path, query
        self.headers = {k.lower(): v for k, v in headers.items()}
        self.body = body

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return "<%s %s %r>" % (self.method, self.path, self.body[:120])


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        # http.server writes the head and the body separately: without this,
        # Nagle and the client's delayed ACK cost 40ms per answer.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, *args):
        pass

    def _serve(self):
        mock = self.server.mock
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        req = Request(self.command, parts.path, parts.query, dict(self.headers),
                      body.decode(errors="replace"))
        response = mock._next(req)
        if response.get("delay"):
            time.sleep(response["delay"])
        if response.get("close"):
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        data = response.get("body", "")
        if not isinstance(data, (bytes, str)):
            data = json.dumps(data)
        if isinstance(data, str):
            data = data.encode()
        try:
            self.send_response(response.get("status", 200))
            for k, v in response.get("headers", {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up first (a timeout test)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve


class MockTarget:
    def __init__(self, port=0):
        self.server = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
        self.server.daemon_threads = True
        self.server.mock = self
        self.port = self.server.server_address[1]
        self.lock = threading.Lock()
        self.requests = []
        self.scripts = {}
        self.used = {}
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def script(self, path, responses):
        """Answers for PATH, in turn; the last repeats. A callable gets the
        Request and returns a response."""
        with self.lock:
            self.scripts[path] = list(responses)
            self.used[path] = 0

    def _next(self, req):
        with self.lock:
            self.requests.append(req)
            script = self.scripts.get(req.path, [{"status": 200, "body": "ok"}])
            i = self.used.get(req.path, 0)
            self.used[req.path] = i + 1
            r = script[min(i, len(script) - 1)]
        return r(req) if callable(r) else r

    def received(self, path=None):
        with self.lock:
            return [r for r in self.requests if path is None or r.path == path]

    def wait_for(self, predicate, timeout=15, path=None):
        """Waits until PREDICATE(requests so far) is true; returns them."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            reqs = self.received(path)
            if predicate(reqs):
                return reqs
            time.sleep(0.05)
        raise AssertionError("mock target: condition not met in %ss; got %r" %
                             (timeout, self.received(path)))
