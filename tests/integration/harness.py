"""Runs the real brume binary on 127.0.0.1 and speaks HTTP to it.

Each Brume() gets its own folder with a config, rules and a data folder,
binds port 0 (the port is read from brume's "listening" log line), and is
stopped by its pid when the test is done. Only the Python standard library.
"""
import base64
import glob
import hashlib
import hmac
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.environ.get("BRUME_SRC", os.path.dirname(os.path.dirname(HERE)))
BRUME = os.path.abspath(os.environ.get("BRUME", os.path.join(SRC, "build", "brume")))
FIXTURES = os.path.join(SRC, "tests", "fixtures", "mist")
SECRET = "it-secret"
# Sanitizer builds start and run slower: generous, bounded waits.
START_TIMEOUT = 30
REQUEST_TIMEOUT = 20

FAULT_LIB = os.environ.get("BRUME_FAULT_LIB",
                           os.path.join(os.path.dirname(BRUME), "tests", "libbrume_fault.so"))

_running = []


def fault_env(flag):
    """Environment in which brume's store fails (EROFS) while file FLAG
    exists (tests/integration/fault.c)."""
    asan = os.environ.get("ASAN_OPTIONS", "")
    return {"LD_PRELOAD": FAULT_LIB, "BRUME_FAULT_FLAG": flag,
            "ASAN_OPTIONS": (asan + ":" if asan else "") + "verify_asan_link_order=0"}


def sign(body, secret=SECRET, algo=hashlib.sha256):
    if isinstance(body, str):
        body = body.encode()
    return hmac.new(secret.encode(), body, algo).hexdigest()


def _run_length(src, i, n):
    """An LZ4 length's continuation bytes after N (15) at SRC[I]: (length, next I)."""
    while True:
        b = src[i]
        i += 1
        n += b
        if b != 255:
            return n, i


def lz4_unpack(src, size):
    """The SIZE bytes an LZ4 block SRC unpacks to: brume stores a body packed
    when that saves a quarter of it (core/store.c). The tests read the store
    with SQLite directly, and so check the format from its specification, not
    through brume's own reading of it."""
    out = bytearray()
    i, n = 0, len(src)
    while i < n:
        token = src[i]
        i += 1
        literals = token >> 4
        if literals == 15:
            literals, i = _run_length(src, i, 15)
        out += src[i:i + literals]
        i += literals
        if i >= n:  # the last sequence has literals only
            break
        offset = src[i] | src[i + 1] << 8
        i += 2
        match = token & 15
        if match == 15:
            match, i = _run_length(src, i, 15)
        match += 4
        if offset == 0 or offset > len(out):
            raise ValueError("an LZ4 match before the start of its block")
        start = len(out) - offset
        if offset >= match:
            out += out[start:start + match]
        else:  # the match overlaps what it writes
            for k in range(match):
                out.append(out[start + k])
    if len(out) != size:
        raise ValueError("an LZ4 block of %d bytes, not %d" % (len(out), size))
    return bytes(out)


def noise(n):
    """N characters that LZ4 cannot pack: a test that fills the store by the
    byte gets the bytes it posts."""
    return base64.b64encode(os.urandom(n))[:n].decode()


def journal_bodies(db):
    """(id, bytes as they came) of each body in the journal, by id, read
    with SQLite connection DB."""
    rows = db.execute("SELECT id, CAST(body AS BLOB), size FROM bodies ORDER BY id")
    return [(i, body if size is None else lz4_unpack(body, size)) for i, body, size in rows]


def fixtures():
    return sorted(glob.glob(os.path.join(FIXTURES, "*.json")))


def read(path):
    with open(path, "rb") as f:
        return f.read()


class Response:
    def __init__(self, status, body, headers):
        self.status, self.body, self.headers = status, body, headers

    def __repr__(self):
        return "<%d %r>" % (self.status, self.body[:200])


class Brume:
    """A brume daemon for one test class.

    config: Lua text placed after the harness's own settings (listen,
    admin, data_dir, rules), so it may set sources, targets, limits, http.
    rules: {"name.lua": "lua text"}.
    """

    def __init__(self, config, rules=None, workers=2, env=None):
        self.dir = tempfile.mkdtemp(prefix="brume-it-")
        os.makedirs(os.path.join(self.dir, "rules"))
        for name, text in (rules or {}).items():
            self.write_rule(name, text)
        self.config_path = os.path.join(self.dir, "brume.lua")
        with open(self.config_path, "w") as f:
            f.write('listen = "127.0.0.1:0"\nadmin = "127.0.0.1:0"\nworkers = %d\n'
                    'data_dir = "var"\nrules = "rules"\nwatch = false\n%s\n' % (workers, config))
        self.env = dict(os.environ, **(env or {}))
        self.proc = None
        self.port = self.admin_port = None
        self.log_path = os.path.join(self.dir, "brume.log")

    def write_rule(self, name, text):
        with open(os.path.join(self.dir, "rules", name), "w") as f:
            f.write(text)

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    # ---- life -------------------------------------------------------------

    def start(self, expect_ready=True):
        """Starts (or starts again) the daemon; waits until it is ready and
        reads its ports from what it logged since."""
        self._since = os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0
        if getattr(self, "_log", None) and not self._log.closed:
            self._log.close()  # after a kill -9 that stop() did not see
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([BRUME, "run", "-c", self.config_path], cwd=self.dir,
                                     stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, env=self.env)
        _running.append(self)
        if not expect_ready:
            return self
        self.wait_log(r"msg=\"brume ready\"", START_TIMEOUT)
        m = re.search(r'msg=listening addr=[^\s]*:(\d+)', self.log()[self._since:])
        self.port = int(m.group(1))
        m = re.search(r'msg="admin listening" addr=[^\s]*:(\d+)', self.log()[self._since:])
        self.admin_port = int(m.group(1)) if m else None
        return self

    def send_signal(self, sig):
        os.kill(self.proc.pid, sig)

    def stop(self, sig=signal.SIGTERM, timeout=30):
        """Stops the daemon by its pid; returns its exit status."""
        if not self.proc:
            return None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()
        if self in _running:
            _running.remove(self)
        return self.proc.returncode

    def wait_exit(self, timeout=30):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def cleanup(self):
        if os.environ.get("BRUME_KEEP_LOG"):
            shutil.copy(self.log_path, "/tmp/brume-last.log")
        """Stops the daemon as an operator would (SIGTERM) and insists on a
        clean exit: under the sanitizers a leak or a bad free shows here."""
        running = self.proc is not None and self.proc.poll() is None
        code = self.stop(signal.SIGTERM)
        log = self.log() if os.path.exists(self.log_path) else ""
        shutil.rmtree(self.dir, ignore_errors=True)
        if running and code != 0:
            raise AssertionError("brume exited %s on SIGTERM:\n%s" % (code, log[-4000:]))

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.cleanup()

    # ---- logs and outputs -------------------------------------------------

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def wait_log(self, pattern, timeout=10):
        """Waits for PATTERN in what the daemon logged since it (last) started."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if re.search(pattern, self.log()[getattr(self, "_since", 0):]):
                return
            if self.proc.poll() is not None:
                raise AssertionError("brume exited (%s) before %r:\n%s" %
                                     (self.proc.returncode, pattern, self.log()))
            time.sleep(0.05)
        raise AssertionError("no %r in the log within %ss:\n%s" % (pattern, timeout, self.log()))

    def wait_lines(self, name, count, timeout=20):
        """Waits until file target NAME holds COUNT lines (the outbox writes
        them from its own thread), then returns them all."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            got = self.lines(name)
            if len(got) >= count:
                time.sleep(0.1)  # more than COUNT would show now
                return self.lines(name)
            time.sleep(0.05)
        raise AssertionError("%s: %d lines, want %d, after %ss" % (name, len(self.lines(name)),
                                                                    count, timeout))

    def lines(self, name):
        """The JSON lines a file target wrote to NAME in the data folder."""
        path = self.path("var", name)
        if not os.path.exists(path):
            return []
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]

    # ---- HTTP -------------------------------------------------------------

    def connection(self, admin=False):
        return http.client.HTTPConnection("127.0.0.1", self.admin_port if admin else self.port,
                                          timeout=REQUEST_TIMEOUT)

    def request(self, method, path, body=None, headers=None, conn=None, admin=False):
        own = conn is None
        conn = conn or self.connection(admin)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return Response(r.status, r.read().decode(errors="replace"), dict(r.getheaders()))
        finally:
            if own:
                conn.close()

    def post(self, body, path="/mist", secret=SECRET, headers=None, conn=None):
        """POSTs BODY signed with SECRET (None: unsigned)."""
        if isinstance(body, str):
            body = body.encode()
        h = {"Content-Type": "application/json", "User-Agent": "Mist-webhook"}
        if secret is not None:
            h["X-Mist-Signature-v2"] = sign(body, secret)
        h.update(headers or {})
        return self.request("POST", path, body, h, conn)

    def metrics(self):
        """{'name{labels}': value} from GET /metrics."""
        text = self.request("GET", "/metrics", admin=True).body
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, value = line.rsplit(" ", 1)
                out[key] = float(value)
        return out

    def raw(self, data, read_timeout=5, close_write=False):
        """Sends raw bytes on a new connection and returns what comes back
        until the server closes or READ_TIMEOUT passes."""
        s = socket.create_connection(("127.0.0.1", self.port), timeout=REQUEST_TIMEOUT)
        try:
            s.sendall(data)
            if close_write:
                s.shutdown(socket.SHUT_WR)
            return recv_all(s, read_timeout)
        finally:
            s.close()


def recv_all(s, timeout):
    s.settimeout(timeout)
    chunks = []
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            b = s.recv(65536)
        except socket.timeout:
            break
        except ConnectionResetError:
            break
        if not b:
            break
        chunks.append(b)
    return b"".join(chunks)


def run_cli(*args, env=None, stdin=None, timeout=60):
    e = dict(os.environ, **(env or {}))
    return subprocess.run([BRUME] + list(args), capture_output=True, text=True, env=e,
                          input=stdin, timeout=timeout, cwd=SRC)


def stop_all():
    for b in list(_running):
        b.stop(signal.SIGKILL)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Redis:
    """Debian's redis-server on 127.0.0.1 and a free port, in a folder of
    its own (append-only file on, so that a restart keeps its data, as a
    deployment would), stopped by its pid. extra: more "name value" lines
    for its config (TLS, a password)."""

    def __init__(self, extra="", port=None):
        self.dir = tempfile.mkdtemp(prefix="brume-redis-")
        self.port = port or free_port()
        self.extra = extra
        self.proc = None

    def url(self, db=0):
        return "redis://127.0.0.1:%d/%d" % (self.port, db)

    def start(self):
        conf = os.path.join(self.dir, "redis.conf")
        with open(conf, "w") as f:
            f.write("bind 127.0.0.1\nport %d\ndir %s\nappendonly yes\nappendfsync always\n"
                    "save \"\"\nprotected-mode no\nloglevel warning\nlogfile %s\n%s\n"
                    % (self.port, self.dir, os.path.join(self.dir, "redis.log"), self.extra))
        self.proc = subprocess.Popen(["redis-server", conf], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                if self.cli("PING").strip() in ("PONG", "NOAUTH Authentication required."):
                    return self
            except subprocess.CalledProcessError:
                pass
            if self.proc.poll() is not None:
                raise AssertionError("redis-server exited %s" % self.proc.returncode)
            time.sleep(0.05)
        raise AssertionError("redis-server did not answer within 20s")

    def cli(self, *args, check=True):
        r = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(self.port)] + list(args),
                           capture_output=True, text=True, timeout=20)
        if check and r.returncode != 0:
            raise subprocess.CalledProcessError(r.returncode, args, r.stdout, r.stderr)
        return r.stdout

    def stop(self, sig=signal.SIGTERM):
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def have_redis():
    return shutil.which("redis-server") is not None and shutil.which("redis-cli") is not None
