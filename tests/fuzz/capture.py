#!/usr/bin/env python3
"""Make the fuzz seeds (tests/fuzz/seeds/TARGET/) from real traffic.

Starts a throwaway PostgreSQL (as tests/src/cluster.rs does: initdb, SCRAM
and MD5 roles), puts a recording TCP proxy in front of it, runs real
clients through the proxy (psql, pgbench in simple, extended and prepared
mode, and a raw client for pipelines, errors inside them and COPY), and
turns what went over the wire into each target's input format (see
crates/pgmux/src/fuzzing/). Run as root on a machine with the PostgreSQL
server binaries: python3 tests/fuzz/capture.py. Seeds are small, so the
output is committed; rerun only to refresh them.
"""
import hashlib
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SEEDS = os.path.join(HERE, "seeds")
BINDIR = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True).stdout.strip()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PG_PORT, PROXY_PORT = free_port(), free_port()


def as_postgres(args, **kw):
    r = subprocess.run(["runuser", "-u", "postgres", "--"] + args, capture_output=True, **kw)
    if r.returncode != 0:
        sys.exit(f"{args[0]} failed: {r.stdout!r} {r.stderr!r}")
    return r


class Recorder:
    """A TCP proxy keeping, per connection, the ordered chunks each way."""

    def __init__(self):
        self.conns = []
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", PROXY_PORT))
        self.sock.listen(64)
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            client, _ = self.sock.accept()
            server = socket.create_connection(("127.0.0.1", PG_PORT))
            events, lock = [], threading.Lock()
            self.conns.append(events)
            for src, dst, side in ((client, server, "c"), (server, client, "s")):
                threading.Thread(target=self.pump, args=(src, dst, side, events, lock), daemon=True).start()

    @staticmethod
    def pump(src, dst, side, events, lock):
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            with lock:
                events.append((side, data))
            dst.sendall(data)


def msg(tag, body=b""):
    return tag + struct.pack("!I", len(body) + 4) + body


def cstr(s):
    return s.encode() + b"\0"


def raw_session(user, password, requests):
    """A bare protocol client: logs in (SCRAM or MD5), sends each request
    and reads up to its ReadyForQuery."""
    import hmac
    import base64

    s = socket.create_connection(("127.0.0.1", PROXY_PORT))
    buf = b""

    def read_msg():
        nonlocal buf
        while True:
            if len(buf) >= 5:
                n = struct.unpack("!I", buf[1:5])[0]
                if len(buf) >= 1 + n:
                    m, buf = buf[: 1 + n], buf[1 + n :]
                    return m[:1], m[5:]
            d = s.recv(65536)
            if not d:
                raise EOFError
            buf += d

    params = cstr("user") + cstr(user) + cstr("database") + cstr("postgres") + cstr("application_name") + cstr("fuzz") + b"\0"
    body = struct.pack("!I", 196608) + params
    s.sendall(struct.pack("!I", len(body) + 4) + body)
    nonce, first_bare = None, None
    while True:
        tag, body = read_msg()
        if tag == b"R":
            code = struct.unpack("!I", body[:4])[0]
            if code == 5:
                inner = hashlib.md5(password.encode() + user.encode()).hexdigest()
                outer = "md5" + hashlib.md5(inner.encode() + body[4:8]).hexdigest()
                s.sendall(msg(b"p", cstr(outer)))
            elif code == 10:
                nonce = base64.b64encode(os.urandom(18)).decode()
                first_bare = "n=,r=" + nonce
                first = ("n,," + first_bare).encode()
                s.sendall(msg(b"p", cstr("SCRAM-SHA-256") + struct.pack("!I", len(first)) + first))
            elif code == 11:
                server_first = body[4:].decode()
                attrs = dict(a.split("=", 1) for a in server_first.split(","))
                salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"]))
                client_key = hmac.new(salted, b"Client Key", "sha256").digest()
                stored = hashlib.sha256(client_key).digest()
                without_proof = "c=biws,r=" + attrs["r"]
                auth = ",".join([first_bare, server_first, without_proof]).encode()
                sig = hmac.new(stored, auth, "sha256").digest()
                proof = bytes(a ^ b for a, b in zip(client_key, sig))
                s.sendall(msg(b"p", (without_proof + ",p=" + base64.b64encode(proof).decode()).encode()))
        elif tag == b"Z":
            break
        elif tag == b"E":
            raise RuntimeError(body)
    for request, readies in requests:
        s.sendall(request)
        seen = 0
        while seen < readies:
            tag, body = read_msg()
            if tag == b"Z":
                seen += 1
            elif tag == b"G":
                pass
    s.sendall(msg(b"X"))
    s.close()


def parse(name, sql, types=()):
    return msg(b"P", cstr(name) + cstr(sql) + struct.pack("!H", len(types)) + b"".join(struct.pack("!I", t) for t in types))


def bind(portal, name, values=()):
    body = cstr(portal) + cstr(name) + struct.pack("!H", 0) + struct.pack("!H", len(values))
    for v in values:
        body += struct.pack("!i", -1) if v is None else struct.pack("!I", len(v)) + v
    return msg(b"B", body + struct.pack("!H", 0))


def execute(portal="", rows=0):
    return msg(b"E", cstr(portal) + struct.pack("!I", rows))


def describe(kind, name):
    return msg(b"D", kind + cstr(name))


def close(kind, name):
    return msg(b"C", kind + cstr(name))


SYNC, FLUSH = msg(b"S"), msg(b"H")


def query(sql):
    return msg(b"Q", cstr(sql))


RAW_REQUESTS = [
    (parse("", "select $1::int + 1", [23]) + bind("", "", [b"41"]) + describe(b"P", "") + execute() + SYNC, 1),
    (parse("s1", "select generate_series(1, $1::int)") + describe(b"S", "s1") + SYNC, 1),
    (bind("p1", "s1", [b"5"]) + execute("p1", 2) + execute("p1", 0) + close(b"P", "p1") + SYNC, 1),
    # An error inside a pipeline: the rest is skipped up to the Sync.
    (parse("", "select 1/0") + bind("", "") + execute() + parse("s2", "select 2") + bind("", "s2") + execute() + SYNC
     + bind("", "s1", [b"2"]) + execute() + SYNC, 2),
    (query("begin; select 1; set local work_mem = '8MB'; commit"), 1),
    (query("select 1; select boom; select 3"), 1),
    (parse("", "DEALLOCATE ALL") + bind("", "") + execute() + SYNC, 1),
    (query("create temp table t(a int, b text)"), 1),
    (query("copy t from stdin") + msg(b"d", b"1\tone\n") + msg(b"d", b"2\ttwo\n") + msg(b"c"), 1),
    (query("copy t from stdin") + msg(b"d", b"x\n") + msg(b"f", cstr("client gave up")), 1),
    (query("copy t to stdout"), 1),
    (parse("ins", "insert into t values ($1, $2) returning a") + SYNC, 1),
    (bind("", "ins", [b"3", None]) + execute() + SYNC + bind("", "ins", [b"4", b"four"]) + execute() + SYNC, 2),
    (query("listen chan; notify chan, 'hello'; select pg_advisory_lock(1)"), 1),
    (query("set search_path = public; set app.user_id = '42'; select set_config('app.role', 'x', false)"), 1),
    (query("prepare q1 as select 1; execute q1; deallocate q1"), 1),
    (parse("", "select pg_sleep(0)") + bind("", "") + execute() + FLUSH, 0),
    (SYNC, 1),
    (close(b"S", "s1") + close(b"S", "nope") + SYNC, 1),
    (msg(b"F", struct.pack("!I", 1598) + b"\0\0\0\0\0\0"), 1),
    (query("begin"), 1),
    (query("select 1/0"), 1),
    (query("select 1"), 1),
    (query("rollback"), 1),
    (query(""), 1),
    (query("discard all"), 1),
    (query("drop database if exists fuzz_gone"), 1),
]

SQL = [
    "select 1",
    "SELECT pg_advisory_lock(1)",
    "CREATE TEMP TABLE t AS SELECT 1",
    "set search_path to app, public",
    "SET LOCAL statement_timeout = 5",
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
    "/* hint */ SET app.tenant = 'a'",
    "select set_config('app.user', 'u', false), set_config($1, 'v', false)",
    'SET "App"."Quoted" = 1; set x.y to default',
    "DEALLOCATE pgmux_1",
    "deallocate prepare \"S 1\";",
    "DEALLOCATE ALL",
    "discard all",
    "drop database if exists \"Shop\"",
    "DROP DATABASE test_app",
    "prepare pgmux_x as select 1; execute pgmux_x",
    "-- comment\nset role admin",
    "begin; set transaction isolation level serializable; commit",
    "select 'it''s; set x.y = 1' -- ; set a.b = 2",
]

ADMIN = [
    "SHOW POOLS;", "show clients", "SHOW SERVERS", "SHOW STATS", "SHOW STATS_TOTALS", "SHOW DATABASES",
    "SHOW CONFIG", "SHOW LISTS", "SHOW VERSION", "SHOW HELP", "PAUSE", "PAUSE app;", "RESUME \"my\"\"db\"",
    "KILL app", "RELOAD", "DISABLE shop", "ENABLE shop", "SHUTDOWN", "  Show Stats_Totals ; ", "SELECT 1",
]


def piece(data):
    if len(data) < 0xFF:
        return bytes([len(data)]) + data
    return b"\xff" + struct.pack("!H", len(data)) + data


def pieces(data):
    out = b""
    while len(data) > 0xFFFF:
        out += piece(data[:0xFFFF])
        data = data[0xFFFF:]
    return out + piece(data)


WRITTEN = {}
# A few dozen seeds per target at most: the fuzzer finds the rest.
MAX_SEEDS = 40


def write(target, name, data):
    seen = WRITTEN.setdefault(target, set())
    if data in seen or len(seen) >= MAX_SEEDS:
        return
    seen.add(data)
    d = os.path.join(SEEDS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def split_login(events):
    """(startup packets, login chunks, after-login chunks) of a connection."""
    client = b"".join(d for side, d in events if side == "c")
    server = b"".join(d for side, d in events if side == "s")
    return client, server


def frames(stream, untagged_first=0):
    """Messages of a stream after `untagged_first` untagged packets."""
    pos, out = 0, []
    for _ in range(untagged_first):
        n = struct.unpack("!I", stream[pos : pos + 4])[0]
        out.append((None, stream[pos + 4 : pos + n]))
        pos += n
    while pos + 5 <= len(stream):
        n = struct.unpack("!I", stream[pos + 1 : pos + 5])[0]
        out.append((stream[pos : pos + 1], stream[pos + 5 : pos + 1 + n]))
        pos += 1 + n
    return out


def login_end(events):
    """Index of the first event after the server's first ReadyForQuery,
    and how many client bytes the login took."""
    server, client_bytes = b"", 0
    for i, (side, d) in enumerate(events):
        if side == "c":
            client_bytes += len(d)
            continue
        server += d
        tags = [t for t, _ in frames(server)]
        if b"Z" in tags:
            return i + 1, client_bytes
    return len(events), client_bytes


def make_seeds(conns, verifier):
    shutil.rmtree(SEEDS, ignore_errors=True)
    for i, sql in enumerate(SQL):
        write("sql_scan", f"text-{i}", b"\x02" + sql.encode())
    write("sql_scan", "settings", b"\x00" + "app.a\x02b\x01work_mem\x0264MB\x01x.y\x02it's \\ here".encode())
    for n, events in enumerate(c for c in conns if c):
        client, server = split_login(events)
        if client[4:8] == struct.pack("!I", 80877103):  # SSLRequest first
            write("startup", f"ssl-{n}", client[:8])
            client_rest = client[8:]
            server = server[1:]
        else:
            client_rest = client
        plen = struct.unpack("!I", client_rest[:4])[0]
        write("startup", f"startup-{n}", client_rest[:plen])
        cmsgs = frames(client_rest[plen:])
        smsgs = frames(server)
        # Frame reader: each side's tagged stream, caps 64 KiB and a small one.
        write("frame", f"server-{n}", struct.pack("!HB", 0xFFFF, 7) + server[:4000])
        write("frame", f"client-{n}", struct.pack("!HB", 300, 64) + client_rest[plen:][:4000])
        # Authentication, both sides.
        auth_reqs = [b for t, b in smsgs if t == b"R"]
        answers = [b for t, b in cmsgs if t == b"p"]
        codes = [struct.unpack("!I", b[:4])[0] for b in auth_reqs]
        login_stream = b"".join(msg(b"R", b) for b in auth_reqs)
        write("auth_client", f"login-{n}", b"\x01" + struct.pack("!H", 10000) + login_stream)
        if 10 in codes and len(answers) >= 2:
            init = answers[0]
            mech_end = init.index(b"\0")
            client_first = init[mech_end + 5 :]
            server_first = auth_reqs[codes.index(11)][4:]
            nonce = dict(a.split(b"=", 1) for a in server_first.split(b","))[b"r"]
            client_final = answers[1].replace(nonce, b"{r}")
            write("scram_server", f"exchange-{n}", piece(verifier) + piece(client_first) + client_final)
            write("scram_server", f"default-verifier-{n}", piece(b"") + piece(client_first) + client_final)
        if 5 in codes and answers:
            salt = auth_reqs[codes.index(5)][4:8]
            user = b"md5user"
            write("md5_server", f"exchange-{n}", b"\x01" + piece(user) + piece(b"md5-secret") + salt
                  + piece(answers[0].rstrip(b"\0")) + b"md5-secret")
            write("md5_server", f"plain-{n}", b"\x00" + piece(user) + piece(b"md5-secret") + salt
                  + piece(answers[0].rstrip(b"\0")) + b"guess")
        # The flows: the conversation after login, chunk by chunk as read.
        start, _ = login_end(events)
        after = events[start:]
        if not after:
            continue
        script = b""
        for side, d in after:
            if side == "c":
                script += b"\x04" + pieces(d) + b"\x02\x00"
            else:
                script += b"\x05" + pieces(d) + b"\x03\x00"
        for config, label in ((0x00, "session"), (0x01, "transaction"), (0x11, "transaction-pid")):
            head = bytes([config, 3]) + struct.pack("!H", 0x400)
            write("server_flow", f"{label}-{n}", head + script)
            client_only = b"".join(
                (b"\x04" + pieces(d) + b"\x02\x00") if side == "c" else b"\x01\x00"
                for side, d in after)
            write("client_flow", f"{label}-{n}", head + client_only)
        # The statement texts the client sent (after the hand-written ones).
        for i, (t, b) in enumerate(frames(b"".join(d for s, d in after if s == "c"))):
            if t == b"Q":
                write("sql_scan", f"query-{n}-{i}", b"\x03" + b.rstrip(b"\0"))
            elif t == b"P":
                write("sql_scan", f"parse-{n}-{i}", b"\x00" + b.split(b"\0")[1])
    for i, text in enumerate(ADMIN):
        write("admin", f"command-{i}", text.encode() + b"\0")
    # A round trip, untouched and with each message corrupted.
    for which in range(4):
        write("auth_client", f"round-trip-{which}", bytes([0, which, 9, 1]))
    write("auth_client", "md5", b"\x01" + struct.pack("!H", 10000) + msg(b"R", struct.pack("!I", 5) + b"salt")
          + msg(b"R", struct.pack("!I", 0)))


def main():
    tmp = tempfile.mkdtemp(prefix="pgmux-capture-")
    os.chmod(tmp, 0o777)
    data = os.path.join(tmp, "data")
    pw = os.path.join(tmp, "pw")
    with open(pw, "w") as f:
        f.write("postgres\n")
    os.chmod(pw, 0o644)
    env = dict(os.environ, PGHOST="127.0.0.1", PGPORT=str(PROXY_PORT), PGDATABASE="postgres")
    as_postgres([f"{BINDIR}/initdb", "-D", data, "-U", "postgres", "--auth=scram-sha-256", "--pwfile", pw,
                 "-E", "UTF8", "--no-locale", "--no-sync"])
    try:
        as_postgres([f"{BINDIR}/pg_ctl", "-D", data, "-l", os.path.join(tmp, "log"), "-w", "-o",
                     f"-c listen_addresses=127.0.0.1 -p {PG_PORT} -k {tmp} -c fsync=off", "start"])
        rec = Recorder()
        admin = dict(env, PGUSER="postgres", PGPASSWORD="postgres", PGPORT=str(PG_PORT))
        subprocess.run(["psql", "-qc", "CREATE ROLE alice LOGIN SUPERUSER PASSWORD 'pencil'", "-c", "CREATE DATABASE fuzz_gone",
                        "-c", "SET password_encryption = 'md5'; CREATE ROLE md5user LOGIN SUPERUSER PASSWORD 'md5-secret'"],
                       env=admin, check=True)
        hba = os.path.join(data, "pg_hba.conf")
        as_postgres(["sh", "-c", f"sed -i '1i host all md5user 127.0.0.1/32 md5' {hba}"])
        as_postgres([f"{BINDIR}/pg_ctl", "-D", data, "reload"])
        verifier = subprocess.run(["psql", "-Atc", "select rolpassword from pg_authid where rolname = 'alice'"],
                                  env=admin, capture_output=True, check=True).stdout.strip()
        alice = dict(env, PGUSER="alice", PGPASSWORD="pencil", PGSSLMODE="disable")
        subprocess.run(["psql", "-qc", "select 1; select now(); show server_version"], env=dict(alice, PGSSLMODE="prefer"))
        subprocess.run(["psql", "-qc", "begin; create temp table x(a int); insert into x select generate_series(1,50); "
                        "select * from x; rollback; select nope"], env=alice)
        subprocess.run(["psql", "-qc", "select 1"], env=dict(alice, PGUSER="md5user", PGPASSWORD="md5-secret"), check=True)
        admin_proxy = dict(env, PGUSER="postgres", PGPASSWORD="postgres")
        subprocess.run(["pgbench", "-qi", "-s", "1"], env=admin_proxy, check=True, capture_output=True)
        for mode in ("simple", "extended", "prepared"):
            subprocess.run(["pgbench", "-n", "-t", "3", "-M", mode], env=alice, check=True, capture_output=True)
        raw_session("alice", "pencil", RAW_REQUESTS)
        raw_session("md5user", "md5-secret", RAW_REQUESTS[:6])
        time.sleep(0.5)
        conns = [c for c in rec.conns if len(c) > 2]
        # pgbench -i's connections are big (COPY of 100,000 rows): leave them.
        conns = [c for c in conns if sum(len(d) for _, d in c) < 200_000]
        make_seeds(conns, verifier)
    finally:
        subprocess.run(["runuser", "-u", "postgres", "--", f"{BINDIR}/pg_ctl", "-D", data, "-m", "immediate", "stop"],
                       capture_output=True)
        if os.path.exists(os.path.join(tmp, "log")):
            print(open(os.path.join(tmp, "log")).read()[-2000:])
        shutil.rmtree(tmp, ignore_errors=True)
    for t in sorted(os.listdir(SEEDS)):
        files = os.listdir(os.path.join(SEEDS, t))
        print(t, len(files), "seeds,", sum(os.path.getsize(os.path.join(SEEDS, t, f)) for f in files), "bytes")


if __name__ == "__main__":
    sys.exit(main())
