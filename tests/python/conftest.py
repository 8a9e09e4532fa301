"""Shared by every test here: where pgmux listens, read from the PGMUX_TEST_*
variables that tests/tests/proxy/python.rs sets (see README.md)."""

from __future__ import annotations

import os
import re

import pytest

from support import Pgmux

REQUIRED = (
    "PGMUX_TEST_HOST",
    "PGMUX_TEST_PORT",
    "PGMUX_TEST_DB",
    "PGMUX_TEST_USER",
    "PGMUX_TEST_PASSWORD",
)


def pytest_configure(config: pytest.Config) -> None:
    missing = [name for name in REQUIRED if not os.environ.get(name)]
    if missing:
        raise pytest.UsageError(
            "these tests talk to a running pgmux and need "
            + ", ".join(missing)
            + " (see tests/python/README.md); the usual way to run them is "
            "`cargo test -p pgmux-tests --test proxy python`"
        )


@pytest.fixture(scope="session")
def pgmux() -> Pgmux:
    pool_size = os.environ.get("PGMUX_TEST_POOL_SIZE")
    return Pgmux(
        host=os.environ["PGMUX_TEST_HOST"],
        port=int(os.environ["PGMUX_TEST_PORT"]),
        dbname=os.environ["PGMUX_TEST_DB"],
        user=os.environ["PGMUX_TEST_USER"],
        password=os.environ["PGMUX_TEST_PASSWORD"],
        pool_size=int(pool_size) if pool_size else None,
    )


@pytest.fixture
def table(request: pytest.FixtureRequest) -> str:
    """A table name of this test's own (the tests share one database)."""
    name = re.sub(r"[^a-z0-9_]", "_", request.node.name.lower())
    return f"t_{name}"[:63]
