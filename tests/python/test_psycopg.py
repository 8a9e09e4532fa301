"""psycopg 3 through pgmux in transaction mode.

Connections turn automatic prepared statements off (prepare_threshold=None),
the usual setting for transaction pooling: psycopg would otherwise prepare a
query under a name after its fifth run, and a named statement lives on one
server. (The tests near the end use the default as well: pgmux carries named
statements across transactions since c68a925.)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
import threading
import time
import uuid
from decimal import Decimal

import psycopg
import pytest
from psycopg import errors, sql
from psycopg.types.json import Jsonb

from support import Pgmux, run_clients, shut_down, within


def connect(pgmux: Pgmux, **kwargs) -> psycopg.Connection:
    kwargs.setdefault("prepare_threshold", None)
    return psycopg.connect(**pgmux.psycopg_kwargs(**kwargs))


@pytest.fixture
def conn(pgmux):
    """A connection in psycopg's default mode: statements open a transaction."""
    with connect(pgmux) as c:
        yield c


@pytest.fixture
def auto(pgmux):
    """An autocommit connection: each statement is its own transaction."""
    with connect(pgmux, autocommit=True) as c:
        yield c


def fresh_table(auto: psycopg.Connection, name: str, columns: str) -> sql.Identifier:
    ident = sql.Identifier(name)
    auto.execute(sql.SQL("drop table if exists {}").format(ident))
    auto.execute(sql.SQL("create table {} ({})").format(ident, sql.SQL(columns)))
    return ident


def test_simple_queries(pgmux, auto):
    assert auto.execute("select 1").fetchone() == (1,)
    assert auto.execute("select current_database(), current_user").fetchone() == (pgmux.dbname, pgmux.user)
    # Several statements in one simple Query: one result set each.
    cur = auto.execute("select 1 as a; select 'two' as b, 3 as c")
    assert cur.fetchall() == [(1,)]
    assert cur.nextset()
    assert cur.fetchall() == [("two", 3)]
    assert not cur.nextset()
    # The greeting pgmux sent carries the server's settings.
    assert auto.info.server_version >= 100000
    assert auto.info.parameter_status("server_encoding") == "UTF8"
    assert auto.info.parameter_status("integer_datetimes") == "on"
    assert auto.info.encoding == "utf-8"
    # An empty query and a comment-only one.
    auto.execute("")
    auto.execute("-- nothing")


def test_parameters_round_trip_in_text_and_binary(auto):
    values = [
        41,
        -(2**62),
        "it's ✓ — ünïcödé, \"quoted\", back\\slash",
        "",
        None,
        True,
        b"\x00\x01\xfe\xff" * 1000,
        Decimal("12345678901234567890.123456789"),
        1.5,
        dt.date(2024, 2, 29),
        dt.datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=dt.timezone.utc),
        dt.timedelta(days=3, seconds=5),
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
        [1, 2, None, 4],
    ]
    placeholders = ", ".join(["%s"] * len(values))
    for binary in (False, True):
        cur = auto.cursor(binary=binary)
        row = cur.execute(f"select {placeholders}", values).fetchone()
        assert list(row) == values, f"binary={binary}"
    row = auto.execute(
        "select %(a)s::int + %(b)s::int, %(doc)s::jsonb -> 'k', %(doc)s::jsonb ->> 'n'",
        {"a": 40, "b": 2, "doc": Jsonb({"k": [1, "x"], "n": "y"})},
    ).fetchone()
    assert row == (42, [1, "x"], "y")
    assert auto.execute("select %s::text[]", [["a", "b,c", 'd"e', None]]).fetchone() == (["a", "b,c", 'd"e', None],)
    # Client-side binding (what Django uses): the values are quoted by psycopg.
    cur = psycopg.ClientCursor(auto)
    cur.execute("select %s, %s, %s", ["'; select 'injected", None, b"\x00\xff"])
    assert cur.fetchone() == ("'; select 'injected", None, b"\x00\xff")


def test_transaction_commit_and_rollback(pgmux, conn, auto, table):
    t = fresh_table(auto, table, "id int primary key, note text")
    insert = sql.SQL("insert into {} values (%s, %s)").format(t)
    ids = sql.SQL("select coalesce(array_agg(id order by id), '{{}}') from {}").format(t)

    with conn.transaction():
        conn.execute(insert, [1, "committed"])
        pid = conn.execute("select pg_backend_pid()").fetchone()[0]
        # Other clients keep working while this transaction holds a server;
        # they see none of it.
        for _ in range(3 * (pgmux.pool_size or 4)):
            assert auto.execute(ids).fetchone() == ([],)
        # The transaction stayed on one server throughout.
        assert conn.execute("select pg_backend_pid()").fetchone()[0] == pid
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
    assert auto.execute(ids).fetchone() == ([1],)

    with conn.transaction():
        conn.execute(insert, [2, "rolled back"])
        assert conn.execute(ids).fetchone() == ([1, 2],)
        raise psycopg.Rollback()
    assert auto.execute(ids).fetchone() == ([1],)

    # A savepoint rolled back inside a committed transaction.
    with conn.transaction():
        conn.execute(insert, [3, "outer"])
        with conn.transaction():
            conn.execute(insert, [4, "inner"])
            raise psycopg.Rollback()
        conn.execute(insert, [5, "after savepoint"])
    assert auto.execute(ids).fetchone() == ([1, 3, 5],)

    # psycopg's implicit transaction (not autocommit), rolled back by hand.
    conn.execute(insert, [6, "implicit"])
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
    conn.rollback()
    conn.execute(insert, [7, "implicit, committed"])
    conn.commit()
    assert auto.execute(ids).fetchone() == ([1, 3, 5, 7],)


def test_many_rows_without_server_side_cursors(auto):
    n = 200_000
    query = "select g, md5(g::text), repeat('x', g %% 50) from generate_series(1, %s) g"
    expected_row = lambda g: (g, hashlib.md5(str(g).encode()).hexdigest(), "x" * (g % 50))  # noqa: E731

    rows = auto.execute(query, [n]).fetchall()
    assert len(rows) == n
    assert rows[0] == expected_row(1) and rows[-1] == expected_row(n)
    assert all(row == expected_row(i + 1) for i, row in enumerate(rows))

    # fetchmany in batches, then streaming one row at a time (single-row
    # mode); neither declares a cursor on the server.
    cur = auto.cursor()
    cur.execute(query, [n])
    count = 0
    while batch := cur.fetchmany(7919):
        for row in batch:
            count += 1
            assert row == expected_row(count)
    assert count == n
    total = sum(g for g, _, _ in auto.cursor().stream("select g, '', '' from generate_series(1, %s) g", [n]))
    assert total == n * (n + 1) // 2

    # One value bigger than any buffer on the way.
    (big,) = auto.execute("select repeat('ab', 8 * 1024 * 1024)").fetchone()
    assert len(big) == 16 * 1024 * 1024 and big[:4] == "abab"
    assert auto.execute("select 'still in sync'").fetchone() == ("still in sync",)


def copy_rows(n: int) -> list[tuple]:
    rng = random.Random(20240229)
    awkward = ["tab\there", "new\nline", "back\\slash", "quote'\"", "ünïcödé ✓", "", "\\N", "comma,semi;"]
    rows = []
    for i in range(1, n + 1):
        name = None if i % 97 == 0 else f"{rng.choice(awkward)} #{i}"
        payload = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 40)))
        rows.append((i, name, rng.randrange(-(10**12), 10**12), payload))
    return rows


def checksum(rows: list[tuple]) -> str:
    lines = (f"{i}|{'<null>' if name is None else name}|{cents}|{payload.hex()}" for i, name, cents, payload in rows)
    return hashlib.md5("\n".join(lines).encode()).hexdigest()


def server_checksum(auto: psycopg.Connection, t: sql.Identifier) -> str:
    q = sql.SQL(
        "select md5(string_agg(concat_ws('|', id, coalesce(name, '<null>'), cents, encode(payload, 'hex')),"
        " E'\\n' order by id)) from {}"
    ).format(t)
    return auto.execute(q).fetchone()[0]


def test_copy_in_and_out_with_checksums(auto, conn, table):
    t = fresh_table(auto, table, "id int primary key, name text, cents bigint not null, payload bytea not null")
    rows = copy_rows(30_000)
    want = checksum(rows)

    # Text COPY FROM STDIN, row by row (psycopg batches it into CopyData
    # messages far bigger than one read).
    with auto.cursor() as cur:
        with cur.copy(sql.SQL("copy {} (id, name, cents, payload) from stdin").format(t)) as copy:
            for row in rows:
                copy.write_row(row)
        assert cur.rowcount == len(rows)
    assert server_checksum(auto, t) == want

    # COPY TO STDOUT, parsed back into Python values.
    with auto.cursor() as cur:
        with cur.copy(sql.SQL("copy (select id, name, cents, payload from {} order by id) to stdout").format(t)) as copy:
            copy.set_types(["int4", "text", "int8", "bytea"])
            back = list(copy.rows())
    assert back == rows

    # Binary COPY both ways, inside a transaction that commits.
    auto.execute(sql.SQL("truncate {}").format(t))
    with conn.transaction():
        with conn.cursor() as cur:
            with cur.copy(sql.SQL("copy {} (id, name, cents, payload) from stdin (format binary)").format(t)) as copy:
                copy.set_types(["int4", "text", "int8", "bytea"])
                for row in rows:
                    copy.write_row(row)
    assert server_checksum(auto, t) == want
    with auto.cursor() as cur:
        with cur.copy(sql.SQL("copy (select * from {} order by id) to stdout (format binary)").format(t)) as copy:
            copy.set_types(["int4", "text", "int8", "bytea"])
            assert list(copy.rows()) == rows

    # Raw blocks from a text dump, and a COPY rolled back with its transaction.
    with auto.cursor() as cur:
        with cur.copy(sql.SQL("copy {} to stdout").format(t)) as copy:
            dump = b"".join(bytes(block) for block in copy)
    auto.execute(sql.SQL("truncate {}").format(t))
    with auto.cursor() as cur:
        with cur.copy(sql.SQL("copy {} from stdin").format(t)) as copy:
            for at in range(0, len(dump), 100_000):
                copy.write(dump[at : at + 100_000])
    assert server_checksum(auto, t) == want
    with conn.transaction():
        with conn.cursor() as cur:
            with cur.copy(sql.SQL("copy {} from stdin").format(t)) as copy:
                copy.write_row((len(rows) + 1, "rolled back", 0, b""))
        raise psycopg.Rollback()
    assert server_checksum(auto, t) == want


def test_copy_errors_keep_the_connection_usable(auto, table):
    t = fresh_table(auto, table, "id int primary key")
    # The server refuses the data (duplicate key) after it was all sent.
    with pytest.raises(errors.UniqueViolation):
        with auto.cursor() as cur:
            with cur.copy(sql.SQL("copy {} from stdin").format(t)) as copy:
                for i in list(range(50_000)) + [7]:
                    copy.write_row((i,))
    # The client gives up half way: psycopg sends CopyFail and re-raises.
    with pytest.raises(RuntimeError, match="client gave up"):
        with auto.cursor() as cur:
            with cur.copy(sql.SQL("copy {} from stdin").format(t)) as copy:
                copy.write_row((1,))
                raise RuntimeError("client gave up")
    assert auto.execute(sql.SQL("select count(*) from {}").format(t)).fetchone() == (0,)
    assert auto.execute("select 'usable'").fetchone() == ("usable",)


def test_errors_keep_the_connection_usable(auto, conn):
    with pytest.raises(errors.DivisionByZero) as e:
        auto.execute("select 1/0")
    assert e.value.diag.sqlstate == "22012"
    with pytest.raises(errors.DivisionByZero):
        auto.execute("select %s::int / 0", [1])
    with pytest.raises(errors.UndefinedTable):
        auto.execute("select * from no_such_table where id = %s", [1])
    with pytest.raises(errors.SyntaxError):
        auto.execute("selec 1")
    with pytest.raises(errors.InvalidTextRepresentation):
        auto.execute("select %s::int", ["not a number"])
    assert auto.execute("select %s::int", [5]).fetchone() == (5,)

    # In a transaction the error aborts it until the rollback.
    with pytest.raises(errors.DivisionByZero):
        conn.execute("select 1/0")
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
    with pytest.raises(errors.InFailedSqlTransaction):
        conn.execute("select 1")
    conn.rollback()
    assert conn.execute("select 2").fetchone() == (2,)
    conn.commit()

    # An error inside `with transaction()` rolls back and leaves it usable.
    with pytest.raises(errors.UndefinedColumn):
        with conn.transaction():
            conn.execute("select no_such_column")
    assert conn.execute("select 3").fetchone() == (3,)


def test_no_prepared_statements_are_left_on_servers(pgmux, auto, conn):
    # Far more runs than psycopg's default prepare_threshold (5): with
    # prepare_threshold=None nothing is ever prepared by name.
    for i in range(40):
        assert auto.execute("select %s::int * 2", [i]).fetchone() == (i * 2,)
        with conn.transaction():
            assert conn.execute("select %s::text || 'x'", [str(i)]).fetchone() == (f"{i}x",)
    assert auto.prepare_threshold is None
    # No server connection of the pool holds a prepared statement: ask as
    # many times as there are servers while holding them all at once.
    held = [connect(pgmux) for _ in range(pgmux.pool_size or 4)]
    try:
        counts = [c.execute("select count(*) from pg_prepared_statements").fetchone()[0] for c in held]
    finally:
        for c in held:
            c.close()
    assert counts == [0] * len(held)


def test_more_clients_than_servers(pgmux, auto, table):
    t = fresh_table(auto, table, "client int, n int")
    clients, rounds = 3 * (pgmux.pool_size or 4), 10
    start = threading.Barrier(clients)
    pids: set[int] = set()

    def client(k: int) -> None:
        with connect(pgmux) as c:
            start.wait(30)
            for n in range(rounds):
                with c.transaction():
                    pid = c.execute("select pg_backend_pid()").fetchone()[0]
                    c.execute(sql.SQL("insert into {} values (%s, %s)").format(t), [k, n])
                    c.execute("select pg_sleep(0.005)")
                    mine = c.execute(sql.SQL("select count(*) from {} where client = %s").format(t), [k]).fetchone()
                    assert mine == (n + 1,)
                    assert c.execute("select pg_backend_pid()").fetchone()[0] == pid
                pids.add(pid)

    run_clients(client, clients)
    assert auto.execute(sql.SQL("select count(*) from {}").format(t)).fetchone() == (clients * rounds,)
    if pgmux.pool_size:
        assert len(pids) <= pgmux.pool_size


def test_session_settings_follow_each_client(pgmux):
    # SET is session state; pgmux replays a client's reported settings on
    # whichever server it lends, so each client keeps seeing its own.
    with connect(pgmux, autocommit=True, application_name="py-a") as a, connect(
        pgmux, autocommit=True, application_name="py-b"
    ) as b:
        a.execute("set timezone to 'Asia/Tokyo'")
        b.execute("set timezone to 'America/New_York'")
        a.execute("set datestyle to 'German, DMY'")
        for _ in range(10):
            assert a.execute("show timezone").fetchone() == ("Asia/Tokyo",)
            assert b.execute("show timezone").fetchone() == ("America/New_York",)
            assert a.execute("select current_setting('application_name')").fetchone() == ("py-a",)
            assert b.execute("select current_setting('application_name')").fetchone() == ("py-b",)
            assert a.execute("select '2024-02-29'::date::text").fetchone() == ("29.02.2024",)
            assert b.execute("select '2024-02-29'::date::text").fetchone() == ("2024-02-29",)
        assert a.info.parameter_status("TimeZone") == "Asia/Tokyo"
        assert b.info.parameter_status("TimeZone") == "America/New_York"
        # Timestamps come back in the client's own time zone.
        ts = b.execute("select '2024-01-01 00:00:00+00'::timestamptz").fetchone()[0]
        assert ts.utcoffset() == dt.timedelta(hours=-5)
        a.execute("reset datestyle")
        ts = a.execute("select '2024-01-01 00:00:00+00'::timestamptz").fetchone()[0]
        assert ts.utcoffset() == dt.timedelta(hours=9)


def test_cancel_and_notices(auto):
    timer = threading.Timer(0.5, auto.cancel_safe)
    timer.start()
    started = time.monotonic()
    try:
        with pytest.raises(errors.QueryCanceled):
            auto.execute("select pg_sleep(30)")
    finally:
        timer.cancel()
    assert time.monotonic() - started < 10
    assert auto.execute("select 'after cancel'").fetchone() == ("after cancel",)

    notices: list[str] = []
    auto.add_notice_handler(lambda d: notices.append(d.message_primary))
    auto.execute("do $$ begin raise notice 'hello %', 42; end $$")
    assert notices == ["hello 42"]


def test_a_client_leaving_mid_transaction_is_rolled_back(pgmux, auto, table):
    t = fresh_table(auto, table, "id int")
    # Closed politely (Terminate) with a transaction open.
    gone = connect(pgmux)
    gone.execute(sql.SQL("insert into {} values (1)").format(t))
    gone.close()
    # Vanished: the socket shut down under the client.
    vanished = connect(pgmux)
    vanished.execute(sql.SQL("insert into {} values (2)").format(t))
    vanished.execute("select pg_advisory_xact_lock(4242)")
    shut_down(vanished.fileno())()
    vanished.close()
    deadline = time.monotonic() + 10
    while True:
        # The lock is free once pgmux rolled the abandoned transaction back.
        if auto.execute("select pg_try_advisory_lock(4242)").fetchone() == (True,):
            auto.execute("select pg_advisory_unlock(4242)")
            break
        assert time.monotonic() < deadline, "the abandoned transaction still holds its lock"
        time.sleep(0.05)
    assert auto.execute(sql.SQL("select count(*) from {}").format(t)).fetchone() == (0,)
    for _ in range(2 * (pgmux.pool_size or 4)):
        assert auto.execute("select 1").fetchone() == (1,)


def test_pipeline_mode_with_sync(auto, table):
    # Pipeline mode where every result is read only after a Sync.
    t = fresh_table(auto, table, "id int")
    with auto.pipeline():
        for i in range(100):
            auto.execute(sql.SQL("insert into {} values (%s)").format(t), [i])
    with auto.pipeline() as p:
        cur = auto.execute(sql.SQL("select sum(id) from {}").format(t))
        p.sync()
        assert cur.fetchone() == (sum(range(100)),)


# ---------------------------------------------------------------------------
# Pipeline mode reading results before the Sync: psycopg then ends its
# request with Flush ('H'), so nothing tells pgmux the transaction is over
# and the server must stay with the client until a Sync is answered. These
# tests use a database of their own, so a server they leave in a bad state
# spoils only their own pool.


@pytest.fixture
def private_pgmux(pgmux, request):
    """pgmux in front of a database of this test's own (its own pool)."""
    name = f"{pgmux.dbname}_{request.node.name}"[:63].lower()
    with connect(pgmux, dbname="postgres", autocommit=True) as admin:
        admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    yield Pgmux(pgmux.host, pgmux.port, name, pgmux.user, pgmux.password, pgmux.pool_size)
    with connect(pgmux, dbname="postgres", autocommit=True) as admin:
        admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


def test_pipeline_result_read_before_sync_arrives_whole(private_pgmux):
    with connect(private_pgmux, autocommit=True) as c:
        # The notice makes the server flush what it has at once, mid-result;
        # the rows follow 0.3 s later.
        c.execute(
            "create function pause_after_notice(g int) returns int language plpgsql as $$"
            " begin if g = 1 then raise notice 'first row'; perform pg_sleep(0.3); end if; return g; end $$"
        )

        def fetch() -> list[int]:
            with c.pipeline():
                cur = c.execute("select pause_after_notice(g) from generate_series(1, 1000) g")
                small = [r[0] for r in cur.fetchall()]
                cur = c.execute("select repeat('x', 100) from generate_series(1, 200000)")
                assert len(cur.fetchall()) == 200_000
                return small

        assert within(15, fetch, shut_down(c.fileno())) == list(range(1, 1001))
        assert c.execute("select 'in sync'").fetchone() == ("in sync",)


def test_pipeline_work_before_sync_stays_private(private_pgmux, table):
    with connect(private_pgmux, autocommit=True) as a, connect(private_pgmux, autocommit=True) as b:
        t = fresh_table(a, table, "id int")
        count = sql.SQL("select count(*) from {}").format(t)
        b.execute("select 1")
        with a.pipeline() as p:
            a.execute(sql.SQL("insert into {} values (1) returning id").format(t)).fetchone()
            # Not synced, so not committed: nobody else may see the row (nor
            # commit it by running on a's server).
            seen = within(5, lambda: b.execute(count).fetchone(), shut_down(b.fileno()))
            p.sync()
        assert seen == (0,)
        assert b.execute(count).fetchone() == (1,)


def test_pipeline_error_before_sync_does_not_reach_other_clients(private_pgmux):
    with connect(private_pgmux, autocommit=True) as a, connect(private_pgmux, autocommit=True) as b:
        a.execute("select 1")
        b.execute("select 1")
        with a.pipeline() as p:
            with pytest.raises(errors.DivisionByZero):
                a.execute("select 1/0").fetchall()
            # a's server ignores everything until a's Sync: b must not get it.
            try:
                got = within(5, lambda: b.execute("select 'b'").fetchone(), shut_down(b.fileno()))
            finally:
                p.sync()
        assert got == ("b",)
        assert a.execute("select 'a'").fetchone() == ("a",)


# ---------------------------------------------------------------------------
# Named prepared statements across transactions. The rest of this file turns
# them off as the client setting for transaction pooling; pgmux supports them
# since c68a925 (one pool-wide server-side name per statement, re-prepared
# on whichever server a transaction gets).


def test_named_prepared_statements_across_transactions(private_pgmux):
    with connect(private_pgmux, autocommit=True, prepare_threshold=0) as a, connect(private_pgmux) as b:
        assert a.execute("select %s::int + 1", [1], prepare=True).fetchone() == (2,)
        # b holds the server a prepared on, inside a transaction ...
        b.execute("select 1")
        # ... so a's next run is lent another server.
        assert a.execute("select %s::int + 1", [2], prepare=True).fetchone() == (3,)
        b.rollback()


# ---------------------------------------------------------------------------
# DROP DATABASE of a database pgmux holds idle servers to: pgmux closes them
# first, so the server does not refuse with 55006 (Django's test runner
# drops its test database like this).


def test_drop_database_that_pgmux_pooled(pgmux):
    name = f"{pgmux.dbname}_dropped"
    with connect(pgmux, dbname="postgres", autocommit=True) as admin:
        admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
        try:
            with connect(pgmux, dbname=name) as c:
                c.execute("select 1")
            admin.execute(sql.SQL("drop database {}").format(sql.Identifier(name)))
        finally:
            admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


# ---------------------------------------------------------------------------
# Transaction mode without surprises (issue 4): prepared statements across
# many short transactions, psycopg's own DEALLOCATE of evicted statements, a
# schema change under a prepared statement, and LISTEN pinning its client.


def hold_all_servers_but_one(pgmux: Pgmux) -> list[psycopg.Connection]:
    """Connections each holding a server in an open transaction, so the
    caller's next transactions all get the one server left."""
    held = []
    for _ in range((pgmux.pool_size or 4) - 1):
        c = connect(pgmux)
        c.execute("select 1")  # opens a transaction: the server stays lent
        held.append(c)
    return held


def test_prepared_statements_in_many_short_transactions(private_pgmux, table):
    with connect(private_pgmux, autocommit=True) as setup:
        t = fresh_table(setup, table, "client int, n int, note text")
    clients, rounds = 3 * (private_pgmux.pool_size or 4), 40
    start = threading.Barrier(clients)

    def client(k: int) -> None:
        # The three ways psycopg names statements (_pg3_0, _pg3_1, ... alike
        # on every connection): all at once (prepare_threshold=0), per call
        # (prepare=True), and its default, from a query's sixth run on.
        mode = k % 3
        kwargs = {"prepare_threshold": 0} if mode == 0 else {}
        prepare = True if mode == 1 else None
        with psycopg.connect(**private_pgmux.psycopg_kwargs(**kwargs)) as c:
            assert c.prepare_threshold == (0 if mode == 0 else 5)
            start.wait(30)
            insert = sql.SQL("insert into {} values (%s, %s, %s)").format(t)
            count = sql.SQL("select count(*) from {} where client = %s").format(t)
            for n in range(rounds):
                with c.transaction():
                    c.execute(insert, [k, n, f"note {n}"], prepare=prepare)
                    assert c.execute(count, [k], prepare=prepare).fetchone() == (n + 1,)
                c.commit()
                assert c.execute("select %s::int * %s::int", [k, n], prepare=prepare).fetchone() == (k * n,)
                c.commit()

    run_clients(client, clients)
    with connect(private_pgmux, autocommit=True) as check:
        assert check.execute(sql.SQL("select count(*) from {}").format(t)).fetchone() == (clients * rounds,)


def test_psycopg_deallocates_what_it_evicts(private_pgmux):
    # With prepared_max = 2 psycopg sends DEALLOCATE _pg3_N for each
    # statement it evicts: pgmux answers it for the name only it knows.
    with connect(private_pgmux, autocommit=True, prepare_threshold=0) as c:
        c.prepared_max = 2
        for round_ in range(5):
            for i in range(6):
                assert c.execute(f"select %s::int + {i}", [round_]).fetchone() == (round_ + i,)
        # After DISCARD ALL psycopg forgets its statements and sends
        # DEALLOCATE ALL; both reach the server, and preparing starts over.
        c.execute("discard all")
        for i in range(6):
            assert c.execute(f"select %s::int + {i}", [10]).fetchone() == (10 + i,)


def test_schema_change_between_prepared_executions(private_pgmux, table):
    held = hold_all_servers_but_one(private_pgmux)
    try:
        # (prepare=True is honoured unless prepare_threshold is None.)
        with connect(private_pgmux, autocommit=True, prepare_threshold=5) as c:
            t = fresh_table(c, table, "id int, name text")
            c.execute(sql.SQL("insert into {} values (1, 'one')").format(t))
            select_all = sql.SQL("select * from {} order by id").format(t)
            cur = c.execute(select_all, prepare=True)
            assert [d.name for d in cur.description] == ["id", "name"]
            assert cur.fetchall() == [(1, "one")]
            # Altered behind psycopg's back (its own ALTER would make it drop
            # its prepared statements first).
            alter = sql.SQL("alter table {} add column price numeric default 9.5").format(t)
            assert c.pgconn.exec_(alter.as_bytes(c)).status == psycopg.pq.ExecStatus.COMMAND_OK
            # The same prepared statement, on the same server: PostgreSQL
            # answers 0A000, pgmux prepares afresh and sends it again.
            assert c.execute("select count(*) from pg_prepared_statements").fetchone() == (1,)
            for _ in range(3):
                cur = c.execute(select_all, prepare=True)
                assert [d.name for d in cur.description] == ["id", "name", "price"]
                assert cur.fetchall() == [(1, "one", Decimal("9.5"))]
    finally:
        for h in held:
            h.close()


def test_listen_pins_its_client_and_notifications_arrive(pgmux):
    with connect(pgmux, autocommit=True) as listener, connect(pgmux, autocommit=True) as sender:
        listener.execute("listen pgmux_jobs")
        pid = listener.execute("select pg_backend_pid()").fetchone()[0]
        for i in range(5):
            sender.execute("select pg_notify('pgmux_jobs', %s)", [f"job {i}"])
            got = [n.payload for n in listener.notifies(timeout=10, stop_after=1)]
            assert got == [f"job {i}"]
            assert listener.execute("select pg_backend_pid()").fetchone()[0] == pid
        listener.execute("unlisten *")
