"""What a long request's handler gets in its worker process, and the table of handlers.

A handler gets a WorkerContext: its assignment and op, a channel to the daemon and the
infra provisioners to act with, built for this worker from its assignment.

The request machinery knows nothing of what long requests do: the package that
implements them registers its handlers (and the work to do as root before the worker
drops its privileges) with `register_long_ops`; the worker looks them up by op type.
"""

from __future__ import annotations

import socket
from typing import Any, Callable

from skyd import protocol
from skyd.infra import Provisioners
from skyd.requests.messages import Assignment


class WorkerContext:
    """What a long handler may use: its assignment, a channel to the daemon and the
    provisioners of each infra kind."""

    def __init__(self, ctrl: socket.socket, assignment: Assignment, op: protocol.Op,
                 provisioners: Provisioners):
        self._ctrl = ctrl
        self.assignment = assignment
        self.op = op
        self.provisioners = provisioners

    def send(self, msg) -> None:
        protocol.send_msg(self._ctrl, msg)

    @staticmethod
    def say(text: str) -> None:
        """A progress line for the request log, marked as skyd's (skyctl shows it on stderr)."""
        print(f"[skyd] {text}", flush=True)


LongHandler = Callable[[WorkerContext], Any]
_handlers: dict[type, LongHandler] = {}
_prepare: list[Callable[[Assignment, protocol.Op], None]] = []


def register_long_ops(handlers: dict[type, LongHandler],
                      prepare: Callable[[Assignment, protocol.Op], None] | None = None) -> None:
    _handlers.update(handlers)
    if prepare is not None:
        _prepare.append(prepare)


def long_handler(op_type: type) -> LongHandler:
    return _handlers[op_type]


def prepare_as_root(a: Assignment, op: protocol.Op) -> None:
    for fn in _prepare:
        fn(a, op)
