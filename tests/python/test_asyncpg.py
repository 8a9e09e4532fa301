"""asyncpg through pgmux in transaction mode.

asyncpg prepares every query under a name and caches it by default; such a
statement lives on the server that prepared it, and in transaction mode the
next transaction may get another server. So the connections here set
statement_cache_size=0, the usual advice for transaction pooling: asyncpg
then uses the unnamed statement and sends its Parse again together with each
Bind/Execute/Sync. (The tests at the end use the default cache as well:
pgmux carries named statements across transactions since c68a925.)

What asyncpg sends for `fetch(query, *args)` with the cache off:
  1. Parse("") + Describe(statement "") + Flush      (to learn the types)
  2. Parse("") + Bind + Execute + Sync                (to run it)
Step 1 ends with Flush, not Sync: pgmux has to keep the server lent until a
Sync has been answered, or the server goes back to the pool halfway.

No pytest plugin is needed: each test runs its coroutine with asyncio.run
under a deadline, so a client stuck on pgmux fails the test instead of
hanging the run.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import io
import json
import uuid
from decimal import Decimal

import asyncpg
import pytest

from support import Pgmux


async def connect(pgmux: Pgmux, **kwargs) -> asyncpg.Connection:
    kwargs.setdefault("statement_cache_size", 0)
    return await asyncpg.connect(**pgmux.asyncpg_kwargs(**kwargs))


def run(coro, timeout: float = 60):
    """Run a test's coroutine; past `timeout` it fails with TimeoutError."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def fresh_table(conn: asyncpg.Connection, name: str, columns: str) -> str:
    ident = '"' + name.replace('"', '""') + '"'
    await conn.execute(f"drop table if exists {ident}; create table {ident} ({columns})")
    return ident


def test_simple_fetches(pgmux):
    async def body():
        conn = await connect(pgmux)
        try:
            assert await conn.fetchval("select 1") == 1
            assert await conn.fetchval("select current_database()") == pgmux.dbname
            row = await conn.fetchrow("select $1::int + 1 as n, $2::text as t", 41, "x")
            assert (row["n"], row["t"]) == (42, "x")
            rows = await conn.fetch("select g, g * g as sq from generate_series(1, $1::int) g", 10)
            assert [(r["g"], r["sq"]) for r in rows] == [(g, g * g) for g in range(1, 11)]
            # A script without arguments goes as one simple Query.
            await conn.execute("select 1; select 2; set application_name = 'asyncpg-script'")
            assert await conn.fetchval("show application_name") == "asyncpg-script"
            assert conn.get_server_version().major >= 10
            assert not conn.is_in_transaction()
        finally:
            await conn.close()

    run(body())


def test_types_round_trip(pgmux):
    values = [
        ("int8", -(2**62)),
        ("text", "it's ✓ — ünïcödé, \"quoted\", back\\slash"),
        ("text", None),
        ("bool", True),
        ("bytea", b"\x00\x01\xfe\xff" * 1000),
        ("numeric", Decimal("12345678901234567890.123456789")),
        ("float8", 1.5),
        ("date", dt.date(2024, 2, 29)),
        ("timestamptz", dt.datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=dt.timezone.utc)),
        ("interval", dt.timedelta(days=3, seconds=5)),
        ("uuid", uuid.UUID("12345678-1234-5678-1234-567812345678")),
        ("int4[]", [1, 2, None, 4]),
        ("text[]", ["a", "b,c", 'd"e']),
        ("jsonb", json.dumps({"k": [1, "x"]})),
    ]

    async def body():
        conn = await connect(pgmux)
        try:
            casts = ", ".join(f"${i}::{t}" for i, (t, _) in enumerate(values, 1))
            row = await conn.fetchrow(f"select {casts}", *[v for _, v in values])
            got = list(row)
            got[-1] = json.loads(got[-1])
            want = [v for _, v in values]
            want[-1] = json.loads(want[-1])
            assert got == want
        finally:
            await conn.close()

    run(body())


def test_many_rows_and_a_cursor_in_a_transaction(pgmux):
    n = 200_000

    async def body():
        conn = await connect(pgmux)
        try:
            rows = await conn.fetch("select g, md5(g::text) from generate_series(1, $1::int) g", n)
            assert len(rows) == n
            assert all(r[0] == i and r[1] == hashlib.md5(str(i).encode()).hexdigest() for i, r in enumerate(rows, 1))
            # A portal read in chunks: fine inside a transaction, which keeps
            # one server for the whole time.
            total = 0
            async with conn.transaction():
                async for record in conn.cursor("select g from generate_series(1, $1::int) g", n, prefetch=5000):
                    total += record[0]
            assert total == n * (n + 1) // 2
            big = await conn.fetchval("select repeat('ab', 8 * 1024 * 1024)")
            assert len(big) == 16 * 1024 * 1024
            assert await conn.fetchval("select 'still in sync'") == "still in sync"
        finally:
            await conn.close()

    run(body())


def test_transaction_commit_and_rollback(pgmux, table):
    async def body():
        conn = await connect(pgmux)
        other = await connect(pgmux)
        try:
            t = await fresh_table(conn, table, "id int primary key")
            ids = f"select coalesce(array_agg(id order by id), '{{}}') from {t}"

            async with conn.transaction():
                await conn.execute(f"insert into {t} values ($1)", 1)
                pid = await conn.fetchval("select pg_backend_pid()")
                for _ in range(3 * (pgmux.pool_size or 4)):
                    assert await other.fetchval(ids) == []
                assert await conn.fetchval("select pg_backend_pid()") == pid
                assert conn.is_in_transaction()
            assert await other.fetchval(ids) == [1]

            with pytest.raises(RuntimeError):
                async with conn.transaction():
                    await conn.execute(f"insert into {t} values ($1)", 2)
                    assert await conn.fetchval(ids) == [1, 2]
                    raise RuntimeError("roll back")
            assert await other.fetchval(ids) == [1]

            async with conn.transaction():
                await conn.execute(f"insert into {t} values ($1)", 3)
                with pytest.raises(RuntimeError):
                    async with conn.transaction():  # a savepoint
                        await conn.execute(f"insert into {t} values ($1)", 4)
                        raise RuntimeError("roll back the savepoint")
                await conn.execute(f"insert into {t} values ($1)", 5)
            assert await other.fetchval(ids) == [1, 3, 5]

            async with conn.transaction(isolation="serializable", readonly=True):
                assert await conn.fetchval("show transaction_isolation") == "serializable"
                with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
                    await conn.execute(f"insert into {t} values (6)")
            assert not conn.is_in_transaction()
            assert await other.fetchval(ids) == [1, 3, 5]
        finally:
            await conn.close()
            await other.close()

    run(body())


def test_errors_keep_the_connection_usable(pgmux):
    async def body():
        conn = await connect(pgmux)
        try:
            # Refused at Parse: the error answers step 1 (Parse/Describe/Flush)
            # and asyncpg sends the Sync itself.
            with pytest.raises(asyncpg.UndefinedColumnError):
                await conn.fetchval("select no_such_column")
            with pytest.raises(asyncpg.UndefinedTableError):
                await conn.fetch("select * from no_such_table where id = $1", 1)
            with pytest.raises(asyncpg.PostgresSyntaxError):
                await conn.execute("selec 1")
            # Refused at Execute, inside step 2.
            with pytest.raises(asyncpg.DivisionByZeroError):
                await conn.fetchval("select 1 / $1::int", 0)
            with pytest.raises(asyncpg.DataError):
                await conn.fetchval("select $1::int", "not a number")
            assert await conn.fetchval("select $1::int", 5) == 5

            # In a transaction: aborted until the rollback.
            tr = conn.transaction()
            await tr.start()
            with pytest.raises(asyncpg.DivisionByZeroError):
                await conn.fetchval("select 1 / $1::int", 0)
            with pytest.raises(asyncpg.InFailedSQLTransactionError):
                await conn.fetchval("select 1")
            await tr.rollback()
            assert await conn.fetchval("select 2") == 2
        finally:
            await conn.close()

    run(body())


def test_executemany_and_copy(pgmux, table):
    rows = [(i, f"name {i}\twith tab" if i % 5 else None, i * 1.5) for i in range(1, 20_001)]

    def checksum(records) -> str:
        text = "\n".join(f"{i}|{'<null>' if n is None else n}|{v}" for i, n, v in records)
        return hashlib.md5(text.encode()).hexdigest()

    async def body():
        conn = await connect(pgmux)
        try:
            t = await fresh_table(conn, table, "id int primary key, name text, v float8")
            await conn.executemany(f"insert into {t} values ($1, $2, $3)", rows[:1000])
            assert await conn.fetchval(f"select sum(id) from {t}") == sum(range(1, 1001))
            await conn.execute(f"truncate {t}")

            # Binary COPY FROM STDIN.
            result = await conn.copy_records_to_table(table, records=rows, columns=["id", "name", "v"])
            assert result == f"COPY {len(rows)}"
            back = await conn.fetch(f"select id, name, v from {t} order by id")
            assert checksum(back) == checksum(rows)

            # COPY TO STDOUT (text), then the dump COPY'd back in.
            dump = io.BytesIO()
            await conn.copy_from_query(f"select id, name, v from {t} order by id", output=dump)
            assert dump.getvalue().count(b"\n") == len(rows)
            await conn.execute(f"truncate {t}")
            dump.seek(0)
            await conn.copy_to_table(table, source=dump)
            back = await conn.fetch(f"select id, name, v from {t} order by id")
            assert checksum(back) == checksum(rows)

            # A COPY the server refuses (duplicate key) leaves the connection usable.
            with pytest.raises(asyncpg.UniqueViolationError):
                await conn.copy_records_to_table(table, records=rows[:10], columns=["id", "name", "v"])
            assert await conn.fetchval(f"select count(*) from {t}") == len(rows)
        finally:
            await conn.close()

    run(body())


def test_cancel_on_timeout(pgmux):
    async def body():
        conn = await connect(pgmux)
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(asyncio.TimeoutError):
                await conn.fetchval("select pg_sleep(30)", timeout=0.5)
            assert loop.time() - started < 10
            assert await conn.fetchval("select 'after cancel'") == "after cancel"
        finally:
            await conn.close()

    run(body())


def test_more_clients_than_servers(pgmux, table):
    clients, rounds = 3 * (pgmux.pool_size or 4), 25

    async def client(k: int, t: str, pids: set[int]) -> None:
        conn = await connect(pgmux)
        try:
            for n in range(rounds):
                assert await conn.fetchval("select $1::int * 2", k * 1000 + n) == (k * 1000 + n) * 2
                assert await conn.fetchval("select $1::text || $2::text", str(k), str(n)) == f"{k}{n}"
                async with conn.transaction():
                    pid = await conn.fetchval("select pg_backend_pid()")
                    await conn.execute(f"insert into {t} values ($1, $2)", k, n)
                    assert await conn.fetchval(f"select count(*) from {t} where client = $1", k) == n + 1
                    assert await conn.fetchval("select pg_backend_pid()") == pid
                pids.add(pid)
        finally:
            await conn.close()

    async def body():
        setup = await connect(pgmux)
        t = await fresh_table(setup, table, "client int, n int")
        pids: set[int] = set()
        await asyncio.gather(*(client(k, t, pids) for k in range(clients)))
        assert await setup.fetchval(f"select count(*) from {t}") == clients * rounds
        await setup.close()
        if pgmux.pool_size:
            assert len(pids) <= pgmux.pool_size

    run(body(), timeout=120)


def test_asyncpg_pool_of_connections(pgmux):
    # asyncpg's own client-side pool in front of pgmux's: on release it
    # resets the session (RESET ALL, UNLISTEN *, ...) in one simple Query.
    async def body():
        pool = await asyncpg.create_pool(
            **pgmux.asyncpg_kwargs(statement_cache_size=0), min_size=2, max_size=10
        )
        try:

            async def work(i: int) -> int:
                async with pool.acquire() as conn:
                    await conn.execute(f"set application_name = 'worker-{i}'")
                    assert await conn.fetchval("show application_name") == f"worker-{i}"
                    return await conn.fetchval("select $1::int + 1", i)

            assert await asyncio.gather(*(work(i) for i in range(100))) == [i + 1 for i in range(100)]
            async with pool.acquire() as conn:
                assert await conn.fetchval("show application_name") == ""
        finally:
            await pool.close()

    run(body(), timeout=120)


# ---------------------------------------------------------------------------
# Tests that may leave servers in a bad state when pgmux gets it wrong use a
# database of their own, so the pool they spoil is theirs alone.


@pytest.fixture
def private_pgmux(pgmux, request):
    """pgmux in front of a database of this test's own (its own pool)."""
    name = f"{pgmux.dbname}_{request.node.name}"[:63].lower()

    async def admin(sql: str) -> None:
        conn = await connect(pgmux, database="postgres")
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    run(admin(f'drop database if exists "{name}" with (force)'))
    run(admin(f'create database "{name}"'))
    yield Pgmux(pgmux.host, pgmux.port, name, pgmux.user, pgmux.password, pgmux.pool_size)
    run(admin(f'drop database if exists "{name}" with (force)'))


def test_errors_at_parse_under_concurrency(private_pgmux):
    # Step 1 (Parse/Describe/Flush) fails, and asyncpg answers with a Sync.
    # Until that Sync the server skips every message: no other client may be
    # lent it in between.
    clients, rounds = 8, 150
    stuck: list[str] = []

    async def client(k: int) -> None:
        conn = await connect(private_pgmux)
        try:
            for n in range(rounds):
                query = f"select no_such_column_{k}" if n % 3 == 0 else f"select {k * 1000 + n}"
                try:
                    value = await asyncio.wait_for(conn.fetchval(query), 5)
                except asyncpg.UndefinedColumnError:
                    assert n % 3 == 0
                    continue
                except asyncio.TimeoutError:
                    stuck.append(f"client {k} got no answer to {query!r} (round {n})")
                    return
                assert n % 3 != 0 and value == k * 1000 + n, (k, n, value)
        finally:
            conn.terminate()

    async def body():
        await asyncio.gather(*(client(k) for k in range(clients)))

    run(body(), timeout=120)
    assert stuck == []


# Named prepared statements across transactions, which pgmux supports since
# c68a925: asyncpg's default statement cache names statements
# __asyncpg_stmt_N__ per connection, so different clients use the same names
# for different queries, and a cached statement must be found again on
# whatever server the next transaction gets.


def test_default_statement_cache(private_pgmux):
    async def body():
        a = await connect(private_pgmux, statement_cache_size=100)
        b = await connect(private_pgmux, statement_cache_size=100)
        try:
            assert await a.fetchval("select $1::int + 1", 1) == 2
            # b holds a's server in a transaction and prepares its own first
            # statement (the same name as a's) ...
            async with b.transaction():
                assert await b.fetchval("select $1::int * 3", 2) == 6
                # ... while a runs its cached statement on another server.
                assert await a.fetchval("select $1::int + 1", 2) == 3
            for i in range(20):
                assert await a.fetchval("select $1::int + 1", i) == i + 1
                assert await b.fetchval("select $1::int * 3", i) == i * 3
        finally:
            a.terminate()
            b.terminate()

    run(body())


def test_default_statement_cache_with_more_clients_than_servers(private_pgmux):
    clients, rounds = 3 * (private_pgmux.pool_size or 4), 30

    async def client(k: int) -> None:
        conn = await connect(private_pgmux, statement_cache_size=100)
        try:
            for n in range(rounds):
                # The same texts on every client, and some only on some.
                assert await conn.fetchval("select $1::int * 2", n) == n * 2
                assert await conn.fetchval(f"select $1::int + {k}", n) == n + k
                async with conn.transaction():
                    row = await conn.fetchrow("select $1::text as t, $2::int as i", str(k), n)
                    assert (row["t"], row["i"]) == (str(k), n)
                # A statement prepared explicitly, used in later transactions.
                stmt = await conn.prepare("select $1::int - $2::int")
                assert await stmt.fetchval(n, k) == n - k
        finally:
            await conn.close()

    async def body():
        await asyncio.gather(*(client(k) for k in range(clients)))

    run(body(), timeout=120)


# ---------------------------------------------------------------------------
# Transaction mode without surprises (issue 4).


def test_fifty_tasks_two_hundred_fetches_each_with_the_default_cache(private_pgmux):
    tasks, fetches = 50, 200

    async def task(k: int) -> None:
        conn = await asyncpg.connect(**private_pgmux.asyncpg_kwargs())
        try:
            for n in range(fetches):
                if n % 2:
                    assert await conn.fetchval("select $1::int * 2 + $2::int", n, k) == n * 2 + k
                else:
                    row = await conn.fetchrow("select $1::text as t, $2::int as n", f"task {k}", n)
                    assert (row["t"], row["n"]) == (f"task {k}", n)
        finally:
            await conn.close()

    async def body():
        await asyncio.gather(*(task(k) for k in range(tasks)))

    run(body(), timeout=240)


def test_schema_change_between_cached_executions(private_pgmux):
    async def body():
        # Every other server is held in a transaction: both executions get
        # the same server, where the first one's statement is stale.
        held = []
        for _ in range((private_pgmux.pool_size or 4) - 1):
            h = await asyncpg.connect(**private_pgmux.asyncpg_kwargs())
            tr = h.transaction()
            await tr.start()
            await h.fetchval("select 1")
            held.append((h, tr))
        conn = await asyncpg.connect(**private_pgmux.asyncpg_kwargs())
        try:
            await conn.execute("create table items (id int, name text); insert into items values (1, 'one')")
            rows = await conn.fetch("select * from items")
            assert [tuple(r) for r in rows] == [(1, "one")]
            await conn.execute("alter table items add column price int default 7")
            # asyncpg gets 0A000 for its cached statement and prepares again
            # under a new name; pgmux must not map that onto the stale copy.
            for _ in range(3):
                rows = await conn.fetch("select * from items")
                assert [tuple(r) for r in rows] == [(1, "one", 7)]
                assert list(rows[0].keys()) == ["id", "name", "price"]
        finally:
            await conn.close()
            for h, tr in held:
                await tr.rollback()
                await h.close()

    run(body())
