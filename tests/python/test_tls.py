"""psycopg 3 over TLS through pgmux (issue 11): pgmux serves TLS with the
harness's `localhost` certificate (client_tls_sslmode = prefer), signed by
the CA in PGMUX_TEST_TLS_CA. Every sslmode a driver uses, the failures a
wrong CA or host name must give, and channel_binding=require, which
PgBouncer refuses."""

from __future__ import annotations

import os

import psycopg
import pytest

from support import Pgmux

CA = os.environ.get("PGMUX_TEST_TLS_CA", "")
OTHER_CA = os.environ.get("PGMUX_TEST_TLS_OTHER_CA", "")

pytestmark = pytest.mark.skipif(
    not CA, reason="PGMUX_TEST_TLS_CA is set by tests/tests/proxy/python.rs's TLS run"
)


def connect(pgmux: Pgmux, host: str, **libpq: str) -> psycopg.Connection:
    return psycopg.connect(
        host=host,
        port=pgmux.port,
        dbname=pgmux.dbname,
        user=pgmux.user,
        password=pgmux.password,
        connect_timeout=20,
        **libpq,
    )


@pytest.mark.parametrize(
    "host,libpq",
    [
        ("127.0.0.1", {"sslmode": "require"}),
        ("127.0.0.1", {"sslmode": "verify-ca", "sslrootcert": CA}),
        ("localhost", {"sslmode": "verify-full", "sslrootcert": CA}),
    ],
    ids=["require", "verify-ca", "verify-full"],
)
def test_served_over_tls(pgmux: Pgmux, host: str, libpq: dict) -> None:
    with connect(pgmux, host, **libpq) as conn:
        assert conn.pgconn.ssl_in_use
        with conn.transaction():
            row = conn.execute("select %s::int + 1", (41,)).fetchone()
        assert row == (42,)


def test_wrong_ca_and_wrong_host_name_are_refused(pgmux: Pgmux) -> None:
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        connect(pgmux, "localhost", sslmode="verify-ca", sslrootcert=OTHER_CA)
    with pytest.raises(psycopg.OperationalError, match="does not match host name"):
        connect(pgmux, "127.0.0.1", sslmode="verify-full", sslrootcert=CA)


def test_channel_binding_require(pgmux: Pgmux) -> None:
    with connect(
        pgmux, "localhost", sslmode="verify-full", sslrootcert=CA, channel_binding="require"
    ) as conn:
        assert conn.execute("select current_user").fetchone() == (pgmux.user,)

