"""A Ctrl-C or SIGTERM that cannot be lost.

Python raises a signal handler's exception at the main thread's next bytecode. When that bytecode belongs to a
`__del__` or a weakref callback (garbage collection runs them anywhere), the interpreter prints "Exception ignored"
and drops the exception: the run goes on as if no signal had come (seen once in the e2e tests: Ctrl-C during
training, and the run finished and exited 0). The CLI's handlers also record the signal, and training checks that
record at every step, so an interrupt dropped where it was first raised is raised again at the next step.
"""

import signal
from types import FrameType
from typing import Any

from .errors import Interrupted

_received: str | None = None


def on_signal(signum: int, frame: FrameType | None) -> None:
    global _received
    _received = signal.Signals(signum).name
    raise Interrupted(_received)  # a KeyboardInterrupt: unwinds like Ctrl-C, the run ends KILLED


def install() -> dict[int, Any]:
    """SIGINT and SIGTERM raise Interrupted and are recorded; returns the handlers they replace."""
    global _received
    _received = None
    return {number: signal.signal(number, on_signal) for number in (signal.SIGINT, signal.SIGTERM)}


def restore(previous: dict[int, Any]) -> None:
    for number, handler in previous.items():
        signal.signal(number, handler)


def check() -> None:
    """Raise the interrupt a handler recorded, if any: it may have been dropped where it was first raised."""
    if _received is not None:
        raise Interrupted(_received)
