"""A simulation's messages go a few at a time: every reply still comes back, never more than the
window is unanswered, and a deployment's grid sends everything at once."""

from __future__ import annotations

import threading
import time
import uuid

from flwr.app import ConfigRecord, Message, RecordDict

from fedneurogen.server.audit import AuditedGrid
from fedneurogen.server.pacing import PacedGrid, receive_each, simulation_in_flight


class SlowSites:
    """A grid whose sites answer one message at a time, after ``delay`` seconds each, from a
    thread of their own (as a simulation's actor does); it records the most messages unanswered."""

    pull_interval = 0.01

    def __init__(self, delay: float = 0.01, answer: bool = True):
        self.delay, self.answer = delay, answer
        self.lock = threading.Lock()
        self.queue: list[Message] = []
        self.replies: dict[str, Message] = {}
        self.unanswered: set[str] = set()
        self.most_unanswered = 0
        self.pushed = 0
        self.stop = threading.Event()
        self.worker = threading.Thread(target=self._serve, daemon=True)
        self.worker.start()

    def push_messages(self, messages):
        ids = []
        with self.lock:
            for message in messages:
                message.metadata.__dict__["_message_id"] = uuid.uuid4().hex
                self.queue.append(message)
                self.unanswered.add(message.metadata.message_id)
                ids.append(message.metadata.message_id)
            self.pushed += len(ids)
            self.most_unanswered = max(self.most_unanswered, len(self.unanswered))
        return ids

    def pull_messages(self, message_ids):
        with self.lock:
            ready = [self.replies.pop(i) for i in list(message_ids) if i in self.replies]
            self.unanswered.difference_update(m.metadata.reply_to_message_id for m in ready)
        return ready

    def _serve(self):
        while not self.stop.is_set():
            with self.lock:
                message = self.queue.pop(0) if self.queue and self.answer else None
            if message is None:
                time.sleep(0.002)
                continue
            time.sleep(self.delay)
            reply = Message(
                RecordDict({"site": ConfigRecord({"node": message.metadata.dst_node_id})}), reply_to=message
            )
            with self.lock:
                self.replies[message.metadata.message_id] = reply


def _messages(n: int) -> list[Message]:
    return [Message(RecordDict(), dst_node_id=node, message_type="train") for node in range(1, n + 1)]


def test_every_reply_comes_back_with_at_most_the_window_unanswered(task_identity):
    grid = SlowSites()
    try:
        replies = list(receive_each(grid, _messages(25), timeout=30, in_flight=3))
    finally:
        grid.stop.set()
    assert sorted(int(r.content["site"]["node"]) for r in replies) == list(range(1, 26))
    assert grid.most_unanswered <= 3
    assert grid.most_unanswered >= 2  # the window is used, not one message at a time


def test_without_a_window_everything_is_sent_at_once(task_identity):
    grid = SlowSites()
    try:
        replies = list(receive_each(grid, _messages(12), timeout=30))
    finally:
        grid.stop.set()
    assert len(replies) == 12
    assert grid.most_unanswered == 12


def test_at_the_timeout_the_messages_not_yet_sent_are_never_sent(task_identity):
    grid = SlowSites(answer=False)
    try:
        started = time.monotonic()
        replies = list(receive_each(grid, _messages(10), timeout=0.3, in_flight=2))
        took = time.monotonic() - started
    finally:
        grid.stop.set()
    assert replies == []
    assert grid.pushed == 2
    assert took < 5


def test_a_deployments_grid_is_not_paced(tmp_path):
    grid = AuditedGrid(SlowSites(), None)
    grid.stop.set()
    assert simulation_in_flight(grid) is None
    assert simulation_in_flight(PacedGrid(grid)) is None


def test_a_simulations_grid_keeps_two_messages_per_cpu_in_flight():
    from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME
    from flwr.server.superlink.linkstate import LinkStateFactory
    from flwr.superlink.federation import NoOpFederationManager
    from flwr.superlink.grid import InMemoryGrid
    from flwr.supercore.object_store import ObjectStoreFactory

    grid = InMemoryGrid(LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory()))
    window = simulation_in_flight(PacedGrid(AuditedGrid(grid, None)))  # found through the wrappers
    assert window is not None and window >= 4
    assert window % 2 == 0
