"""A signal to the main thread at a chosen moment, for tests of code that must stay
correct when a wait is interrupted (a service's Ctrl-C lands in whatever its main
thread was doing).

`interrupting_main(steps)`: while the main thread runs the `with` body, a helper
thread runs `steps()` (wait until the main thread sleeps where it should, start
other threads, ...), then sends SIGUSR1 to the main thread, whose handler raises
`Interrupted` (a BaseException, as KeyboardInterrupt is). The old handler is put
back and the helper joined on the way out.

`all_returned(threads)`: join each (10 s at most); whether none is still running
(the others' check: nobody waits for ever on the interrupted one).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator


class Interrupted(BaseException):
    """What the main thread gets (a BaseException: `except Exception` does not hide it)."""


def _raise(_signum, _frame):
    raise Interrupted()


@contextlib.contextmanager
def interrupting_main(steps: Callable[[], None]) -> Iterator[None]:
    main = threading.main_thread()
    if threading.current_thread() is not main:
        raise RuntimeError("interrupting_main must run on the main thread")

    def run() -> None:
        steps()
        time.sleep(0.01)  # the main thread is asleep in its wait by now
        signal.pthread_kill(main.ident, signal.SIGUSR1)

    old = signal.signal(signal.SIGUSR1, _raise)
    helper = threading.Thread(target=run, name="interruptkit")
    helper.start()
    try:
        yield
    finally:
        helper.join(10)
        signal.signal(signal.SIGUSR1, old)


def all_returned(threads: list[threading.Thread], timeout_s: float = 10.0) -> bool:
    for th in threads:
        th.join(timeout_s)
    return not any(th.is_alive() for th in threads)
