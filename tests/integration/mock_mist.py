"""A mock of Mist's API on 127.0.0.1: the delivery log of webhooks, as
GET /api/v1/{orgs/ORG|sites/SITE}/webhooks/WEBHOOK/events/search serves it.

Deliveries are added with add(); a search answers those of the path's
webhook (and org or site) whose time is in [start, end), of the status and
topic asked for, oldest first with sort=timestamp, at most limit of them
(and at most max_limit, when set: a Mist whose pages are smaller than
asked), as {"results": [...], "start", "end", "limit", "total"}. A request without
"Authorization: Token T" for a token T it knows gets 401. Answers can be
forced: fault() queues responses that the next searches get instead
(status, headers, body) in place of the answer of a given search, and
slow() delays the next one. Every request is recorded.

    with MockMist(tokens={"tok"}) as m:
        m.add(webhook="wh1", org="org1", topic="alarms", ts=time.time(), body=text)
        ... sources.NAME.mist = { api = m.url, token = "tok", org_id = "org1", webhook_id = "wh1" }
"""
import json
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


class Request:
    def __init__(self, path, query, headers):
        self.time = time.time()
        self.path, self.query = path, query
        self.params = {k: v[0] for k, v in parse_qs(query).items()}
        self.headers = {k.lower(): v for k, v in headers.items()}

    def __repr__(self):
        return "<GET %s?%s>" % (self.path, self.query)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, *args):
        pass

    def do_GET(self):
        parts = urlsplit(self.path)
        req = Request(parts.path, parts.query, dict(self.headers))
        status, headers, body, delay = self.server.mock._answer(req)
        if delay:
            time.sleep(delay)
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        try:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass


class MockMist:
    def __init__(self, tokens=("mist-test-token-8f2c",)):
        self.tokens = set(tokens)
        self.deliveries = []
        self.requests = []
        self.faults = []
        self.delays = []
        self.max_limit = None  # a page's size at most, whatever was asked
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.mock = self
        self.port = self.server.server_address[1]
        self.url = "http://127.0.0.1:%d" % self.port
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def add(self, webhook, topic, ts, body, org=None, site=None, status="failure"):
        """A delivery Mist tried: BODY (bytes or str) is its req_payload."""
        if isinstance(body, bytes):
            body = body.decode()
        d = {"id": str(uuid.uuid4()), "webhook_id": webhook, "org_id": org, "site_id": site,
             "topic": topic, "timestamp": ts, "status": status,
             "status_code": 503 if status == "failure" else 200,
             "error": "connection refused" if status == "failure" else "",
             "req_payload": body, "req_headers": "{\"User-Agent\":[\"Mist-webhook\"]}"}
        with self.lock:
            self.deliveries.append(d)
        return d

    def fault(self, status, headers=None, body=None, at=None):
        """A search gets this answer instead: the one numbered AT (0 is the
        first this mock gets), the first that AT (a function of the Request)
        is true of, or the next that has no fault of its own."""
        with self.lock:
            self.faults.append((at, (status, headers or {},
                                     body if body is not None else {"detail": "forced"}, 0)))

    def slow(self, seconds):
        """The next search is answered, as usual, after SECONDS."""
        with self.lock:
            self.delays.append(seconds)

    def searches(self):
        with self.lock:
            return list(self.requests)

    def _answer(self, req):
        with self.lock:
            self.requests.append(req)
            auth = req.headers.get("authorization", "")
            if not (auth.startswith("Token ") and auth[6:] in self.tokens):
                return 401, {}, {"detail": "Invalid token."}, 0
            n = len(self.requests) - 1
            for i, (at, answer) in enumerate(self.faults):
                if at is None or (at(req) if callable(at) else at == n):
                    del self.faults[i]
                    return answer
            delay = self.delays.pop(0) if self.delays else 0
            p = req.path.strip("/").split("/")
            # api v1 {orgs|sites} ID webhooks WEBHOOK events search
            if len(p) != 8 or p[:2] != ["api", "v1"] or p[2] not in ("orgs", "sites") or \
                    p[4] != "webhooks" or p[6:] != ["events", "search"]:
                return 404, {}, {"detail": "Not found."}, 0
            scope, owner, webhook = p[2], p[3], p[5]
            q = req.params
            start, end = float(q.get("start", 0)), float(q.get("end", 1e12))
            limit = int(q.get("limit", 100))
            if self.max_limit:
                limit = min(limit, self.max_limit)
            found = [d for d in self.deliveries
                     if d["webhook_id"] == webhook
                     and (d["org_id"] if scope == "orgs" else d["site_id"]) == owner
                     and start <= d["timestamp"] < end
                     and ("status" not in q or d["status"] == q["status"])
                     and ("topic" not in q or d["topic"] == q["topic"])]
            if q.get("sort") == "timestamp":
                found.sort(key=lambda d: d["timestamp"])
            elif q.get("sort") == "-timestamp":
                found.sort(key=lambda d: -d["timestamp"])
            return 200, {}, {"results": found[:limit], "start": int(start), "end": int(end),
                             "limit": limit, "total": len(found)}, delay
