"""DESIGN.md's HTTP contract against the real daemon: 404, 405, 401, 413,
400, 200 and 503, signatures (v2, legacy v1, rotation, unsigned sources),
keep-alive, Expect: 100-continue, slow clients and the connection cap."""
import hashlib
import json
import socket
import time
import unittest

import harness
from harness import Brume, sign

ALARM = json.dumps({"topic": "alarms", "events": [{"id": "a1", "type": "x"}]}).encode()


class Contract(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.b = Brume("""
sources = {
  mist = { path = "/mist", secret = "%s", max_body = "4KB" },
  legacy = { path = "/legacy", secret = "old", allow_sha1 = true },
  rotating = { path = "/rotating", secret = { "new-secret", "old-secret" } },
  lab = { path = "/lab", insecure = true },
}
targets = { out = { kind = "file", path = "var/out.jsonl" } }
http = { header_timeout = "1s", body_timeout = "1s", idle_timeout = "3s", max_connections = 12 }
""" % harness.SECRET, rules={"out.lua": """
return { topics = "*", on_event = function(ev, ctx)
  brume.send("out", { source = ctx.source, id = ev.id })
end }"""}, workers=1).start()

    @classmethod
    def tearDownClass(cls):
        cls.b.cleanup()

    def test_routes_and_methods(self):
        r = self.b.request("POST", "/elsewhere", ALARM)
        self.assertEqual((r.status, r.body), (404, "no such path\n"))
        r = self.b.request("GET", "/mist")
        self.assertEqual(r.status, 405)
        self.assertEqual(r.headers["Allow"], "POST")
        r = self.b.request("PUT", "/mist", ALARM)
        self.assertEqual(r.status, 405)
        r = self.b.request("POST", "/mist/", ALARM, {"X-Mist-Signature-v2": sign(ALARM)})
        self.assertEqual(r.status, 404)

    def test_signatures(self):
        self.assertEqual(self.b.post(ALARM).status, 200)
        r = self.b.post(ALARM, secret=None)
        self.assertEqual((r.status, r.body), (401, "missing signature\n"))
        r = self.b.post(ALARM, secret="wrong")
        self.assertEqual((r.status, r.body), (401, "signature missing or wrong\n"))
        upper = sign(ALARM).upper()
        r = self.b.request("POST", "/mist", ALARM, {"X-Mist-Signature-v2": upper})
        self.assertEqual(r.status, 200)
        r = self.b.request("POST", "/mist", ALARM, {"X-Mist-Signature-v2": sign(ALARM)[:40]})
        self.assertEqual(r.status, 401)
        r = self.b.request("POST", "/mist", ALARM, {"X-Mist-Signature-v2": ""})
        self.assertEqual(r.status, 401)
        # The body is signed, not its decoded content: a changed byte fails.
        r = self.b.request("POST", "/mist", ALARM + b" ", {"X-Mist-Signature-v2": sign(ALARM)})
        self.assertEqual(r.status, 401)
        # The legacy SHA-1 header counts only where the source allows it.
        v1 = sign(ALARM, "old", hashlib.sha1)
        r = self.b.request("POST", "/legacy", ALARM, {"X-Mist-Signature": v1})
        self.assertEqual(r.status, 200)
        r = self.b.request("POST", "/mist", ALARM,
                           {"X-Mist-Signature": sign(ALARM, harness.SECRET, hashlib.sha1)})
        self.assertEqual(r.status, 401)
        # When both come, v2 decides.
        r = self.b.request("POST", "/legacy", ALARM,
                           {"X-Mist-Signature": v1, "X-Mist-Signature-v2": sign(ALARM, "bad")})
        self.assertEqual(r.status, 401)
        # During a rotation both secrets sign.
        for secret, status in (("new-secret", 200), ("old-secret", 200), ("other", 401)):
            r = self.b.post(ALARM, path="/rotating", secret=secret)
            self.assertEqual((secret, r.status), (secret, status))
        # An insecure source takes unsigned posts, and said so at start.
        self.assertEqual(self.b.post(ALARM, path="/lab", secret=None).status, 200)
        self.assertIn('msg="source accepts unsigned posts (insecure = true)" source=lab',
                      self.b.log())
        self.assertIn('msg="refused a post: signature missing or wrong" request=',
                      self.b.log())

    def test_oversized_bodies(self):
        big = b'{"topic":"alarms","events":[' + b'{"a":1},' * 1000 + b'{}]}'
        # Refused from Content-Length alone: the body is never sent.
        head = ("POST /mist HTTP/1.1\r\nHost: x\r\nX-Mist-Signature-v2: %s\r\n"
                "Content-Length: %d\r\n\r\n" % (sign(big), len(big))).encode()
        out = self.b.raw(head)
        self.assertTrue(out.startswith(b"HTTP/1.1 413 "), out)
        self.assertIn(b"Connection: close", out)
        self.assertIn(b"body larger than 4096 bytes", out)
        # Chunked: refused once the chunks pass the limit.
        chunked = ("POST /mist HTTP/1.1\r\nX-Mist-Signature-v2: %s\r\n"
                   "Transfer-Encoding: chunked\r\n\r\n" % sign(big)).encode()
        for i in range(0, len(big), 1000):
            part = big[i:i + 1000]
            chunked += b"%x\r\n%s\r\n" % (len(part), part)
        out = self.b.raw(chunked + b"0\r\n\r\n")
        self.assertTrue(out.startswith(b"HTTP/1.1 413 "), out)
        # A chunked body within the limit is fine.
        body = ALARM
        chunked = ("POST /mist HTTP/1.1\r\nX-Mist-Signature-v2: %s\r\n"
                   "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" % sign(body)).encode()
        chunked += b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        self.assertTrue(self.b.raw(chunked).startswith(b"HTTP/1.1 200 OK"))

    def test_refusals_reach_clients_that_send_everything_first(self):
        """A client that writes a whole oversized request before it reads
        gets the answer, not a reset: brume reads and drops the rest before
        it closes."""
        # 8 MB: more than the sockets' buffers hold, so the client is still
        # sending when the answer comes.
        huge = b'{"topic":"alarms","events":[' + b'{"a":1},' * 1000000 + b'{}]}'
        small = b"x" * 4000
        cases = [  # (head, body sent after it, the answer)
            (("POST /mist HTTP/1.1\r\nX-Mist-Signature-v2: %s\r\nContent-Length: %d\r\n\r\n"
              % (sign(huge), len(huge))).encode() + huge, b"", b"413"),
            (("POST /mist HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(small)).encode(),
             small, b"401"),  # answered from the head, before the body comes
            (b"POST /mist HTTP/1.1\r\nX-Junk: " + b"j" * 100000 + b"\r\n\r\n", b"", b"431"),
        ]
        for head, rest, status in cases:
            s = socket.create_connection(("127.0.0.1", self.b.port), timeout=10)
            try:
                s.sendall(head)
                if rest:
                    time.sleep(0.1)
                    s.sendall(rest)  # all of it, before reading anything
                out = harness.recv_all(s, 5)
            finally:
                s.close()
            self.assertTrue(out.startswith(b"HTTP/1.1 " + status), (status, out[:80]))

    def test_bad_bodies(self):
        cases = [
            (b"", "empty body"),
            (b"not json", "body is not a JSON object"),
            (b'{"topic":"alarms","events":[{"id":', "invalid JSON: "),
            (b'{"topic":"alarms","events":[{"id":"x"}]', "invalid JSON: "),
            (b'[{"topic":"alarms"}]', "body is not a JSON object"),
            (b'{"events":[]}', 'no string "topic" in the body'),
            (b'{"topic":"alarms","events":{"a":1}}', '"events" is not an array'),
            (b'{"topic":"alarms","events":"x"}', 'no "events" array in the body'),
            (b'{"topic":"alarms","events":[1]}', "events[1] is not an object"),
            (b'{"topic":"alarms","events":[' + b"[" * 300 + b"]" * 300 + b"]}", "nested"),
            (b'{"topic":"alarms","events":[{"x":"\xff\xfe"}], "y": \xff}', "invalid JSON"),
        ]
        for body, reason in cases:
            r = self.b.post(body)
            self.assertEqual(r.status, 400, (body[:40], r))
            self.assertIn(reason, r.body)
            self.assertEqual(r.body.count("\n"), 1)  # one line
        # Invalid UTF-8 inside a string is kept, not refused.
        r = self.b.post(b'{"topic":"alarms","events":[{"id":"utf8","ssid":"caf\xe9"}]}')
        self.assertEqual(r.status, 200)
        # Huge numbers are numbers.
        r = self.b.post(b'{"topic":"alarms","events":[{"id":"big","n":1e400,'
                        b'"m":123456789012345678901234567890}]}')
        self.assertEqual(r.status, 200)

    def test_keep_alive_and_pipelining(self):
        conn = self.b.connection()
        for i in range(20):
            body = json.dumps({"topic": "ping", "events": [{"id": "k%d" % i}]})
            self.assertEqual(self.b.post(body, conn=conn).status, 200)
        sock = conn.sock
        self.assertIsNotNone(sock)  # the same socket all along
        conn.close()
        reqs = b""
        for i in range(5):
            body = json.dumps({"topic": "ping", "events": [{"id": "p%d" % i}]}).encode()
            reqs += (b"POST /mist HTTP/1.1\r\nX-Mist-Signature-v2: %s\r\nContent-Length: %d\r\n"
                     b"\r\n%s" % (sign(body).encode(), len(body), body))
        out = self.b.raw(reqs + b"GET /mist HTTP/1.1\r\nConnection: close\r\n\r\n")
        self.assertEqual(out.count(b"HTTP/1.1 200 OK"), 5)
        self.assertEqual(out.count(b"HTTP/1.1 405"), 1)

    def test_expect_continue_and_http10(self):
        s = socket.create_connection(("127.0.0.1", self.b.port), timeout=10)
        s.sendall(b"POST /mist HTTP/1.1\r\nX-Mist-Signature-v2: %s\r\nExpect: 100-continue\r\n"
                  b"Content-Length: %d\r\n\r\n" % (sign(ALARM).encode(), len(ALARM)))
        self.assertEqual(s.recv(100), b"HTTP/1.1 100 Continue\r\n\r\n")
        s.sendall(ALARM)
        self.assertTrue(s.recv(1000).startswith(b"HTTP/1.1 200 OK"))
        s.close()
        out = self.b.raw(b"POST /mist HTTP/1.0\r\nX-Mist-Signature-v2: %s\r\nContent-Length: %d"
                         b"\r\n\r\n%s" % (sign(ALARM).encode(), len(ALARM), ALARM))
        self.assertTrue(out.startswith(b"HTTP/1.1 200 OK"))
        self.assertIn(b"Connection: close", out)

    def test_slow_clients(self):
        # A head that never ends: 408 once header_timeout (1s) has passed.
        t0 = time.time()
        out = self.b.raw(b"POST /mist HTTP/1.1\r\nX-Mist-Signature-v2: 00", read_timeout=6)
        self.assertTrue(out.startswith(b"HTTP/1.1 408 "), out)
        self.assertLess(time.time() - t0, 5)
        # Trickling one byte at a time does not extend it.
        s = socket.create_connection(("127.0.0.1", self.b.port), timeout=10)
        t0 = time.time()
        got = b""
        for ch in b"POST /mist HTTP/1.1\r\nX-A: " + b"a" * 40:
            try:
                s.sendall(bytes([ch]))
            except OSError:
                break
            time.sleep(0.1)
            s.setblocking(False)
            try:
                got += s.recv(1000)
            except (BlockingIOError, ConnectionResetError):
                pass
            s.setblocking(True)
            if got:
                break
        got += harness.recv_all(s, 2)
        s.close()
        self.assertTrue(got.startswith(b"HTTP/1.1 408 "), got)
        self.assertLess(time.time() - t0, 4)
        # A body that stops halfway: 408 after body_timeout.
        out = self.b.raw(b"POST /mist HTTP/1.1\r\nX-Mist-Signature-v2: %s\r\nContent-Length: 100"
                         b"\r\n\r\n{\"topic\"" % sign(ALARM).encode(), read_timeout=6)
        self.assertTrue(out.startswith(b"HTTP/1.1 408 "), out)
        # Idle keep-alive connections close quietly after idle_timeout (3s).
        s = socket.create_connection(("127.0.0.1", self.b.port), timeout=10)
        self.assertEqual(harness.recv_all(s, 6), b"")
        s.close()
        # And the daemon still serves.
        self.assertEqual(self.b.post(ALARM).status, 200)

    def test_connection_cap(self):
        held = []
        try:
            for _ in range(12):
                held.append(socket.create_connection(("127.0.0.1", self.b.port), timeout=10))
            time.sleep(0.3)
            out = self.b.raw(b"GET /mist HTTP/1.1\r\n\r\n")
            self.assertTrue(out.startswith(b"HTTP/1.1 503 "), out)
            self.assertIn(b"Retry-After: 1", out)
        finally:
            for s in held:
                s.close()
        time.sleep(0.3)
        self.assertEqual(self.b.post(ALARM).status, 200)


if __name__ == "__main__":
    unittest.main()
