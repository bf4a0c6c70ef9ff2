"""The engine of the blocking clients: one process-wide thread running one asyncio loop.

Each blocking client (`weir.Producer`, `weir.Consumer`, `weir.Admin`) wraps
its asyncio twin and holds a `LoopThread` handle. Every method hands a
coroutine to the loop with `asyncio.run_coroutine_threadsafe` and waits for
it, so all the async clients' state is touched by the loop thread alone and
needs no locks.

Why one loop for the whole process, never closed: grpc.aio (1.85) has one
poller thread per process. It binds every loop that ever made a call, for
good, and hands a completion event to its loop with `call_soon_threadsafe`
from whichever bound loop happens to read the poller's wake-up socket.
Cancelling a call (which `channel.close()` does to the calls still open)
sets its status locally at once, and the core's completion of the call's
pending operations arrives later; nothing in the public API waits for it. A
loop closed after its client's `close()` therefore still receives events,
and the loop that forwards them logs "RuntimeError: Event loop is closed" on
stderr. With one loop that stays open until the process ends, a late event
is simply run and dropped. One loop also fits the GIL: separate loop threads
never ran two clients' Python code at once anyway.

The thread is a daemon, so an application that forgets `close()` still
exits. A handle's `close()` cancels only its own unfinished coroutines.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from weir.errors import ClosedError, WeirTimeoutError

__all__ = ["LoopThread"]

T = TypeVar("T")


class _SharedLoop:
    """The process's one loop for blocking clients, on a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="weir-loop", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        # Deliberately never stopped or closed: see the module docstring.
        self.loop.run_forever()


_shared: _SharedLoop | None = None
_shared_lock = threading.Lock()


def _shared_loop() -> _SharedLoop:
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = _SharedLoop()
        return _shared


class LoopThread:
    """One blocking client's handle on the shared loop thread.

    Tracks the coroutines it submitted so that `close()` can cancel those
    still running, and refuses new work once closed.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        shared = _shared_loop()
        self._loop = shared.loop
        self._thread = shared.thread
        self._pending: set[concurrent.futures.Future[Any]] = set()
        self._pending_lock = threading.Lock()
        self._closed = False

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop, for callbacks that must run on it."""
        return self._loop

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule `coro` on the loop; returns a thread-safe future."""
        if self._closed:
            coro.close()
            raise ClosedError("the client is closed")
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("a blocking Weir client was called from its loop thread")
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        with self._pending_lock:
            self._pending.add(fut)
        fut.add_done_callback(self._forget)
        return fut

    def _forget(self, fut: concurrent.futures.Future[Any]) -> None:
        with self._pending_lock:
            self._pending.discard(fut)

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
        """Run `coro` on the loop and wait for its result (or WeirTimeoutError)."""
        fut = self.submit(coro)
        try:
            return fut.result(timeout_s)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise WeirTimeoutError(f"operation did not finish within {timeout_s}s") from None

    def close(self) -> None:
        """Cancel this handle's unfinished coroutines; the loop itself runs on."""
        if self._closed:
            return
        self._closed = True
        with self._pending_lock:
            pending = list(self._pending)
        for fut in pending:
            fut.cancel()
