#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (tests/fuzz/corpus/<target>/)
from the Mist payloads in tests/fixtures/mist and the example configs, plus
hand-made edge cases. The corpora are committed; run this again only to
rebuild them (it replaces each folder's seed-* files, and leaves the rest).
Inputs are encoded as each target's header comment describes."""
import glob
import hashlib
import hmac
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(os.path.dirname(HERE))
FIXTURES = sorted(glob.glob(os.path.join(SRC, "tests", "fixtures", "mist", "*.json")))


def fixture(i):
    with open(FIXTURES[i % len(FIXTURES)], "rb") as f:
        return f.read()


def write(target, name, data):
    folder = os.path.join(HERE, "corpus", target)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "seed-" + name), "wb") as f:
        f.write(data)


def clear(target):
    for path in glob.glob(os.path.join(HERE, "corpus", target, "seed-*")):
        os.remove(path)


def sign(body, secret=b"s3cret"):
    return hmac.new(secret, body, hashlib.sha256).hexdigest().encode()


def chunked(body, size):
    out = b""
    for i in range(0, len(body), size):
        part = body[i:i + size]
        out += b"%x\r\n%s\r\n" % (len(part), part)
    return out + b"0\r\n\r\n"


def wire():
    for i in range(0, 60, 6):
        body = fixture(i)
        head = (b"POST /mist HTTP/1.1\r\nHost: brume\r\nUser-Agent: Mist-webhook\r\n"
                b"Content-Type: application/json\r\nX-Mist-Signature-v2: " + sign(body) + b"\r\n")
        write("wire", "length-%d" % i,
              head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        write("wire", "chunked-%d" % i,
              head + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(body, 1 + i * 7))
    body = fixture(1)
    one = b"POST /mist HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    write("wire", "pipelined", one + b"\r\n" + one + b"GET /healthz HTTP/1.1\r\n\r\n")
    cases = {
        "bare-lf": b"POST /mist HTTP/1.1\nContent-Length: 2\n\nok",
        "continue": b"POST /mist HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok",
        "http10": b"GET /metrics?x=1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        "cl-te": b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"0\r\n\r\n",
        "two-cl": b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        "fold": b"POST / HTTP/1.1\r\nX-A: 1\r\n folded\r\nContent-Length: 0\r\n\r\n",
        "bare-cr": b"POST / HTTP/1.1\r\nX-A: a\rb\r\nContent-Length: 0\r\n\r\n",
        "nul": b"POST / HTTP/1.1\r\nX-A: a\0b\r\nContent-Length: 0\r\n\r\n",
        "chunk-ext-trailer": b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                             b"5;a=b\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
        "chunk-overflow": b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                          b"ffffffffffffffff\r\n",
        "chunk-bad": b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n",
        "version": b"POST / HTTP/2.0\r\n\r\n",
        "many-fields": b"POST / HTTP/1.1\r\n" + b"".join(b"X-%d: %d\r\n" % (i, i)
                                                       for i in range(70)) + b"\r\n",
    }
    for name, data in cases.items():
        write("wire", name, data)


def verify():
    secrets = [b"", b"s3cret", b"x" * 64, bytes(range(100))]
    for i in range(24):
        body = fixture(i * 2)
        algo = i % 2  # 1: SHA-1
        secret = secrets[i % len(secrets)]
        mode = (i // 2) % 3
        head = bytes([algo | (len(secret) << 1), mode + 3 * (i // 6)]) + secret
        if mode % 3 == 0:
            mac = hmac.new(secret, body, hashlib.sha1 if algo else hashlib.sha256).hexdigest()
            digits = mac.encode() if i % 4 else mac.upper().encode()[:-1]
            head += bytes([len(digits)]) + digits
        write("verify", "%02d" % i, head + body)


def json_bodies():
    for i in range(0, len(FIXTURES), 2):
        write("json", os.path.basename(FIXTURES[i])[:-5], fixture(i))
    cases = {
        "empty": b"",
        "array": b"[]",
        "topic-number": b'{"topic": 1, "events": []}',
        "events-object": b'{"topic": "alarms", "events": {"a": 1}}',
        "event-array": b'{"topic": "alarms", "events": [[1]]}',
        "numbers": b'{"topic":"x","events":[{"a":1e400,"b":-0,"c":9223372036854775807,'
                   b'"d":1.5,"e":-9223372036854775808,"f":12345678901234567890}]}',
        "escapes": b'{"topic":"device_events","events":[{"s":"\\u0000\\ud83d\\ude00\\n"}]}',
        "deep": b'{"topic":"x","events":[' + b'[' * 130 + b']' * 130 + b']}',
        "long-topic": b'{"topic":"' + b"t" * 200 + b'","events":[]}',
        "nul-topic": b'{"topic":"a\\u0000b","events":[]}',
        "trailing": b'{"topic":"x","events":[]} x',
        "nan": b'{"topic":"x","events":[{"a":NaN}]}',
    }
    for name, data in cases.items():
        write("json", name, data)


def configs():
    for path in sorted(glob.glob(os.path.join(SRC, "examples", "*.lua"))):
        with open(path, "rb") as f:
            write("config", os.path.basename(path)[:-4], f.read())
    cases = {
        "full": b"""listen = { '127.0.0.1:8080', '[::1]:8081',
  { addr = ':8443', tls = { cert = 'tls/cert.pem', key = '/etc/k.pem' } } }
admin = { addr = '0.0.0.0:9090', token = 'a-long-enough-token' }
watch = false
workers = 3
limits = { instructions = 5000, memory = '16MB', time = '250ms' }
http = { header_timeout = '2s', body_timeout = 5, idle_timeout = '1m',
         max_connections = 10, max_unverified = '16MB' }
log = { level = 'debug', format = 'json' }
journal = { retention = '2d', max_size = '10MB' }
sources = {
  mist = { path = '/mist', secret = { env('MIST_WEBHOOK_SECRET'), file('secret.txt') },
           allow_sha1 = true, max_body = '2MB', dedupe = '10m' },
  lab = { path = '/lab', insecure = true, durability = 'none' },
}
targets = { out = { kind = 'file', path = 'out.jsonl' },
            hook = { kind = 'webhook', url = 'https://x.example/h', timeout = '5s' } }
""",
        "minimal": b"sources = { mist = { path = '/mist', secret = 's' } }\n",
        "errors": b"listn = 1\nworkers = 'four'\nsources = { m = { path = 'm' } }\n"
                  b"http = { max_unverified = '1KB' }\nadmin = '127.attacker.example:9'\n",
        "syntax": b"sources = { mist = { path = '/mist', secret = 's' }\n",
        "computed": b"local s = {}\nfor i = 1, 3 do s['m' .. i] = { path = '/m' .. i, "
                    b"secret = ('x'):rep(i) } end\nsources = s\n",
        "runtime-error": b"sources = nil .. 1\n",
    }
    for name, data in cases.items():
        write("config", name, data)


def patterns():
    cases = [
        (b"ap-01:aa:bb:cc", b"^(%w+)%-(%d+)"), (b"rogue_ap_detected", b"rogue[_-]ap"),
        (b"site/abc/devices", b"([^/]+)/([^/]+)"), (b"  padded  ", b"^%s*(.-)%s*$"),
        (b"f(a(b)c)d", b"%b()"), (b"THE (quick) fox", b"%f[%a]%a+"), (b"aaa", b"a-b"),
        (b"key=val;k2=v2", b"(%w+)=(%w+)"), (b"hello world", b"o w"), (b"x", b"[a"),
        (b"x", b"%"), (b"abc", b"()b()"), (b"a.b.c", b"%."), (b"aaaa", b"(a)%1"),
        (b"10.0.0.1", b"^(%d+)%.(%d+)%.(%d+)%.(%d+)$"), (b"\0a\0", b"%z"),
        (b"abc", b"[%a-]"), (b"]]", b"[]]"), (b"abc", b"(()"), (b"a" * 60, b".-.-.-b"),
    ]
    repls = [b"x", b"%1", b"<%0>", b"%%", b"%9", b""]
    for i, (s, p) in enumerate(cases):
        kinds = (i % 4) | ((i % 3) << 2) | ((i % 4) << 4) | (0x40 if i % 5 == 0 else 0)
        init = [0, 1, 2, 255, 250, 7][i % 6]
        write("pattern", "%02d" % i, bytes([kinds, init, len(s), len(p)]) + s + p +
              repls[i % len(repls)])


# tests/fuzz/fuzz_api.c's words[], in order.
WORDS = ["out", "hook", "chat", "page", "http", "nope", "alarms", "device_events", "", "90s",
         "15m", "24h", "0s", "-1", "1e309", "nan", "key", "title", "text", "severity", "url",
         "method", "headers", "body", "https://example.com/x", "POST", "GET", "raw", "fields",
         "link", "dedup_key", "critical"]


def word(w):
    return bytes([6, WORDS.index(w)])


def string(s):
    return bytes([5, len(s)]) + s


def table(*pairs):
    out = bytes([8, len(pairs)])
    for k, v in pairs:
        out += bytes([(WORDS.index(k) << 1) if isinstance(k, str) else ((k - 1) << 1) | 1]) + v
    return out


INT = bytes([3]) + struct.pack("<q", 1 << 62)
FLOAT = bytes([4]) + struct.pack("<d", 1e300)
NAN = bytes([4]) + struct.pack("<d", float("nan"))


def api():
    # brume's functions in name order, as the target walks them; print last.
    calls = {
        "base64.decode": [string(b"aGVsbG8="), string(b"!!")],
        "base64.encode": [string(b"\0\xff hello")],
        "emit": [word("alarms"), table(("title", string(b"x")))],
        "hmac_sha256": [string(b"key"), string(b"data")],
        "http": [table(("url", word("https://example.com/x")), ("method", word("POST")),
                       ("body", string(b"{}")), ("headers", table(("title", string(b"v")))))],
        "json.decode": [string(b'{"a":[1,2,{"b":null}]}')],
        "json.encode": [table((1, INT), (2, FLOAT), (3, NAN), ("key", bytes([9])))],
        "log.debug": [string(b"m")],
        "log.error": [string(b"m"), table(("key", word("critical")))],
        "log.info": [string(b"m")],
        "log.warn": [bytes([10])],
        "now": [],
        "once": [word("key"), word("90s")],
        "send": [word("chat"), table(("title", string(b"Rogue AP")), ("text", string(b"t")),
                                     ("severity", word("critical")))],
        "state.get": [word("key")],
        "state.incr": [word("key"), bytes([4]) + struct.pack("<d", 2.5), word("15m")],
        "state.set": [word("key"), table(("text", INT)), word("24h")],
        "throttle": [word("key"), bytes([2, 3]), word("15m")],
        "print": [string(b"hi"), bytes([0]), INT],
    }
    for i, (name, args) in enumerate(calls.items()):
        for scoped in (0, 1):
            how = (len(args) << 1) | (0 if scoped else 1)
            write("api", "%s-%s" % (name, "event" if scoped else "none"),
                  bytes([i, how]) + b"".join(args))


for target, make in (("wire", wire), ("verify", verify), ("json", json_bodies),
                     ("config", configs), ("pattern", patterns), ("api", api)):
    clear(target)
    make()
