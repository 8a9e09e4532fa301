"""Helpers of the Python end-to-end suite: pgmux's address as the tests see
it, and a guard that turns a client call hanging on pgmux into a failure."""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass
from typing import Callable, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Pgmux:
    """pgmux's client address and the database and role to use through it."""

    host: str
    port: int
    dbname: str
    user: str
    password: str
    # pool_size of pgmux's pool for (dbname, user); None when not given.
    pool_size: int | None

    def psycopg_kwargs(self, **extra) -> dict:
        """Keyword arguments for psycopg.connect (libpq names)."""
        kwargs = dict(
            host=self.host,
            port=self.port,
            dbname=self.dbname,
            user=self.user,
            password=self.password,
            connect_timeout=10,
            sslmode="disable",
        )
        kwargs.update(extra)
        return kwargs

    def asyncpg_kwargs(self, **extra) -> dict:
        """Keyword arguments for asyncpg.connect."""
        kwargs = dict(
            host=self.host,
            port=self.port,
            database=self.dbname,
            user=self.user,
            password=self.password,
            timeout=10,
            ssl=False,
        )
        kwargs.update(extra)
        return kwargs


class Hung(AssertionError):
    """A call through pgmux did not return in time."""


def within(seconds: float, call: Callable[[], T], unblock: Callable[[], None]) -> T:
    """Run a blocking client call on a thread; if it has not returned after
    `seconds`, call `unblock` (which must make it return, e.g. by shutting its
    socket down) and fail with Hung instead of hanging the whole run."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            outcome["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        unblock()
        thread.join(10)
        raise Hung(f"no answer within {seconds}s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def shut_down(fd: int) -> Callable[[], None]:
    """An `unblock` for `within`: shut the socket with descriptor fd down."""

    def unblock() -> None:
        s = socket.socket(fileno=os.dup(fd))
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        finally:
            s.close()

    return unblock


def run_clients(client: Callable[[int], None], clients: int, timeout: float = 120) -> None:
    """Run client(0..clients-1) on threads at once; fail if one hangs or raises."""
    failures: list[BaseException] = []

    def guarded(k: int) -> None:
        try:
            client(k)
        except BaseException as e:  # noqa: BLE001 - reported below
            failures.append(e)

    threads = [threading.Thread(target=guarded, args=(k,)) for k in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout)
    assert not any(th.is_alive() for th in threads), "a client hung"
    assert failures == []
