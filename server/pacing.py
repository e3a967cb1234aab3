"""Messages in flight, paced: a simulated federation of hundreds of sites at the cost of a few.

Flower's simulation engine looks for each virtual site's next message every 0.1 s by scanning
every message the SuperLink holds (``InMemoryLinkState.get_message_ins``): with all N of a
round's messages pushed at once, one sweep costs N x N checks, a full CPU core at 256 sites,
taken from the site actors that do the work (measured with py-spy: half the simulation
process's samples in ``add_messages_to_queue``). The actors can only serve a few sites at a
time anyway, so in a simulation the server keeps a window of messages in flight (two per CPU
of the Ray cluster, each actor needing at least one) and pushes the next as each reply comes
back. A deployment's sites pull their own messages: there every message goes at once.

``receive_each`` is the one loop (push, pull, refill); ``PacedGrid`` gives the ServerApp a grid
whose ``send_and_receive`` goes through it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator

from flwr.app import Message
from flwr.serverapp import Grid

from fedneurogen.server.wrapped_grid import WrappedGrid

#: The fewest messages kept in flight in a simulation (a cluster too small to say otherwise).
MIN_IN_FLIGHT = 4


def receive_each(
    grid: Grid, messages: Iterable[Message], timeout: float | None, in_flight: int | None = None
) -> Iterator[Message]:
    """Send ``messages`` and yield each reply as it arrives, within ``timeout`` seconds of the first
    push (None: no limit); at most ``in_flight`` unanswered at a time (None: all at once).

    A caller that keeps only what it needs of each reply never holds every site's at once (the
    ridge statistics are tens of MB a site). Messages still unsent at the timeout are not sent:
    like the unanswered ones, they have no reply.
    """
    pending = list(messages)
    pending.reverse()  # popped from the end: sent in the order given
    if not hasattr(grid, "pull_messages"):  # a grid that only sends and receives
        yield from grid.send_and_receive(pending[::-1], timeout=timeout)
        return
    end = None if timeout is None else time.monotonic() + timeout
    waiting: set[str] = set()
    while (pending or waiting) and (end is None or time.monotonic() < end):
        room = len(pending) if in_flight is None else max(in_flight - len(waiting), 0)
        if room and pending:
            batch = [pending.pop() for _ in range(min(room, len(pending)))]
            waiting.update(grid.push_messages(batch))
            del batch
        replies = list(grid.pull_messages(waiting)) if waiting else []
        waiting.difference_update(reply.metadata.reply_to_message_id for reply in replies)
        while replies:
            yield replies.pop(0)
        if waiting:
            time.sleep(getattr(grid, "pull_interval", 1.0))


def simulation_in_flight(grid: Grid) -> int | None:
    """How many messages to keep in flight on ``grid``: None (all) unless it is a simulation's
    in-memory grid, then two per CPU of the Ray cluster the engine runs on (this machine's CPUs
    before Ray has started), at least ``MIN_IN_FLIGHT``."""
    from flwr.superlink.grid import InMemoryGrid

    inner = grid
    while not isinstance(inner, InMemoryGrid) and hasattr(inner, "_grid"):
        inner = inner._grid
    if not isinstance(inner, InMemoryGrid):
        return None
    cpus = float(os.cpu_count() or 1)
    try:
        import ray

        if ray.is_initialized():
            cpus = float(ray.cluster_resources().get("CPU", cpus))
    except ImportError:
        pass
    return max(MIN_IN_FLIGHT, int(2 * cpus))


class PacedGrid(WrappedGrid):
    """A Flower ``Grid`` whose ``send_and_receive`` keeps at most ``simulation_in_flight``
    messages unanswered (a deployment's grid: all at once, as the wrapped grid does); everything
    else is the wrapped grid's."""

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        in_flight = simulation_in_flight(self._grid)  # per call: Ray may start after the ServerApp
        if in_flight is None:
            return self._grid.send_and_receive(messages, timeout=timeout)
        return list(receive_each(self._grid, messages, timeout, in_flight))
