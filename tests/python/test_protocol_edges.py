"""Protocol edges real drivers hit (issue 14), with psycopg and asyncpg, run
once with pgmux in transaction mode and once in session mode
(PGMUX_TEST_POOL_MODE says which).

- An orderly close mid-COPY or mid-pipeline must not leak the server.
- An error in a pipeline aborts only what the client sent before its Sync.
- Reported parameters are spelled as PostgreSQL spells them.
- Session mode tells the client its server's real pid.
- asyncpg's request shapes (Parse, Describe, Flush, with Sync later).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time

import asyncpg
import psycopg
import pytest
from psycopg import errors

from support import Pgmux, shut_down, within

MODE = os.environ.get("PGMUX_TEST_POOL_MODE", "transaction")
session_mode_only = pytest.mark.skipif(MODE != "session", reason="session mode only")


def connect(pgmux: Pgmux, **kwargs) -> psycopg.Connection:
    kwargs.setdefault("prepare_threshold", None)
    return psycopg.connect(**pgmux.psycopg_kwargs(**kwargs))


def busy_servers(pgmux: Pgmux) -> int:
    """Server sessions of this database doing anything but waiting idle
    (the asking connection's own excluded)."""
    with connect(pgmux, autocommit=True) as c:
        return c.execute(
            "select count(*) from pg_stat_activity where datname = current_database()"
            " and backend_type = 'client backend' and state <> 'idle'"
            " and pid <> pg_backend_pid()"
        ).fetchone()[0]


def settle(check, seconds: float = 15) -> bool:
    """Poll `check` until it holds: a released server goes back to the pool
    asynchronously, after its client's socket closed, with no event a test
    can wait on."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_orderly_closes_mid_copy_and_mid_pipeline_leak_no_server(pgmux, table):
    with connect(pgmux, autocommit=True) as c:
        c.execute(f"drop table if exists {table}")
        c.execute(f"create table {table} (id int)")
    for _ in range(25):
        conn = connect(pgmux)
        cur = conn.cursor()
        with pytest.raises(psycopg.ProgrammingError):
            cur.execute(f"copy {table} from stdin")  # psycopg refuses, after the COPY began
        conn.close()  # Terminate while the server is in COPY IN
    for _ in range(25):
        conn = connect(pgmux, autocommit=True)
        pg = conn.pgconn
        pg.enter_pipeline_mode()
        pg.send_query_params(f"insert into {table} values (1)".encode(), None)
        pg.send_flush_request()
        pg.flush()
        conn.close()  # Terminate with the INSERT run but never synced
    assert settle(lambda: busy_servers(pgmux) == 0), "a server stayed busy"
    # Nothing unsynced was committed, and every server slot is back: more
    # clients than the pool has servers all get served.
    results = []

    def client() -> None:
        with connect(pgmux, autocommit=True) as c:
            results.append(c.execute(f"select count(*) from {table}").fetchone()[0])

    threads = [threading.Thread(target=client) for _ in range(2 * (pgmux.pool_size or 4))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [0] * len(threads)


@pytest.mark.parametrize("autocommit", [True, False])
def test_an_aborted_pipeline_leaves_the_connection_usable(pgmux, autocommit):
    with connect(pgmux, autocommit=autocommit) as conn:
        with conn.pipeline() as p:
            conn.execute("select 1")
            with pytest.raises(errors.UndefinedTable):
                conn.execute("select * from doesnotexist").fetchone()
            with pytest.raises(errors.PipelineAborted):
                conn.execute("select 'aborted'").fetchone()
            p.sync()
        conn.rollback()
        assert conn.execute("select 'usable'").fetchone() == ("usable",)


def test_psycopg_sees_parameters_spelled_as_postgresql_spells_them(pgmux):
    options = "-c datestyle=iso,dmy -c intervalstyle=ISO_8601 -c timezone=europe/paris"
    with connect(pgmux, client_encoding="utf8", options=options) as conn:
        status = conn.info.parameter_status
        assert status("client_encoding") == "UTF8"
        assert status("DateStyle") == "ISO, DMY"
        assert status("IntervalStyle") == "iso_8601"
        assert status("TimeZone") == "Europe/Paris"
        # And the server agrees, whichever server runs the query.
        assert conn.execute("show timezone").fetchone() == ("Europe/Paris",)


def test_asyncpg_sees_parameters_spelled_as_postgresql_spells_them(pgmux):
    async def main():
        conn = await asyncpg.connect(**pgmux.asyncpg_kwargs(server_settings={"DateStyle": "iso,dmy"}))
        try:
            settings = conn.get_settings()
            # asyncpg asks for client_encoding 'utf-8'.
            assert settings.client_encoding == "UTF8"
            assert settings.DateStyle == "ISO, DMY"
        finally:
            await conn.close()

    asyncio.run(main())


def test_own_notifications_carry_the_clients_pid(pgmux):
    with connect(pgmux, autocommit=True) as conn:
        conn.execute("listen edges")
        conn.execute("notify edges, 'mine'")
        notes = list(conn.notifies(timeout=5, stop_after=1))
        assert [n.pid for n in notes] == [conn.info.backend_pid]


@session_mode_only
def test_session_mode_gives_the_servers_own_pid(pgmux):
    with connect(pgmux, autocommit=True) as conn, connect(pgmux, autocommit=True) as other:
        pid = conn.info.backend_pid
        assert conn.execute("select pg_backend_pid()").fetchone() == (pid,)
        # Cancel still goes through pgmux, with pgmux's key.
        def cancel_soon() -> None:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                running = other.execute(
                    "select count(*) from pg_stat_activity where pid = %s and query like '%%pg_sleep(60)%%'",
                    [pid],
                ).fetchone()[0]
                if running:
                    conn.cancel_safe()
                    return
                time.sleep(0.02)

        canceller = threading.Thread(target=cancel_soon)
        canceller.start()
        with pytest.raises(errors.QueryCanceled):
            within(30, lambda: conn.execute("select pg_sleep(60)"), shut_down(conn.fileno()))
        canceller.join()
        assert conn.execute("select 'after cancel'").fetchone() == ("after cancel",)
        # Terminating that backend ends this client's session.
        assert other.execute("select pg_terminate_backend(%s)", [pid]).fetchone() == (True,)
        with pytest.raises(psycopg.OperationalError):
            conn.execute("select 1")


def run(coro, seconds: float = 20):
    """Run an asyncpg scenario; a request left unanswered fails instead of hanging."""
    return asyncio.run(asyncio.wait_for(coro, seconds))


def test_asyncpg_prepare_of_a_statement_without_result_columns(pgmux):
    async def main():
        conn = await asyncpg.connect(**pgmux.asyncpg_kwargs())
        try:
            # Parse, Describe, Flush: the server answers NoData; Sync comes later.
            stmt = await conn.prepare("rollback")
            assert stmt.get_attributes() == ()
            async with conn.transaction():
                await conn.execute("select 1")
            assert await conn.fetchval("select 'after'") == "after"
        finally:
            await conn.close()

    run(main())


def test_asyncpg_cursor_fetches_with_a_row_limit(pgmux):
    async def main():
        conn = await asyncpg.connect(**pgmux.asyncpg_kwargs())
        try:
            async with conn.transaction():
                cur = await conn.cursor("select g from generate_series(1, 100) g")
                first = await cur.fetch(10)  # Execute with a row limit: PortalSuspended
                second = await cur.fetch(10)
                assert [r[0] for r in first + second] == list(range(1, 21))
                await cur.forward(70)
                rest = await cur.fetch(100)
                assert [r[0] for r in rest] == list(range(91, 101))
            assert await conn.fetchval("select 'after'") == "after"
        finally:
            await conn.close()

    run(main())


def test_asyncpg_client_side_error_right_after_a_prepare(pgmux):
    async def main():
        conn = await asyncpg.connect(**pgmux.asyncpg_kwargs())
        try:
            stmt = await conn.prepare("select $1::int + 1")
            # asyncpg refuses the argument itself, after the prepare.
            with pytest.raises(asyncpg.DataError):
                await stmt.fetchval("not a number")
            assert await stmt.fetchval(41) == 42
            with pytest.raises(asyncpg.UndefinedTableError):
                await conn.prepare("select * from doesnotexist")
            assert await conn.fetchval("select 'after'") == "after"
        finally:
            await conn.close()

    run(main())


@pytest.mark.parametrize("cache", ["default", "none"])
def test_asyncpg_unnamed_statements_bound_after_introspection(pgmux, table, cache):
    """asyncpg sends a statement it does not cache (all of them with
    statement_cache_size=0, what it recommends behind a transaction pooler;
    any over max_cacheable_statement_size otherwise) as an unnamed one:
    parsed, then bound only after it looked the types up with queries of
    its own, each ending in a Sync. The unnamed statement exists on that one
    server, so the client must keep it (pgmux once let the server go, and
    its own session check dropped the statement)."""
    settings = {"statement_cache_size": 0} if cache == "none" else {}
    padding = "x" * 20000  # over max_cacheable_statement_size

    async def main():
        setup = await asyncpg.connect(**pgmux.asyncpg_kwargs())
        await setup.execute(f"drop type if exists {table}_mood; create type {table}_mood as enum ('ok', 'sad')")
        await setup.close()
        clients = pgmux.pool_size or 4
        if MODE == "transaction":
            clients *= 2  # more clients than servers
        conns = [await asyncpg.connect(**pgmux.asyncpg_kwargs(**settings)) for _ in range(clients)]

        async def one(c, i):
            for j in range(5):
                mood = "ok" if (i + j) % 2 else "sad"
                got = await c.fetchrow(f"select $1::{table}_mood, $2::int[], '{padding}'", mood, [i, j])
                assert (got[0], got[1]) == (mood, [i, j])

        try:
            await asyncio.gather(*(one(c, i) for i, c in enumerate(conns)))
        finally:
            for c in conns:
                await c.close()

    run(main(), 60)
