"""Frozen records (the ridge path) travel once per site, named by their content hash: the server
sends them only to a site that does not hold that hash, a site checks and keeps them, and no
site sends them back (``shared/transport.py``, ``server/strategy.py``, ``client/app.py``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_federation import BACKBONE, FMRI, FNIRS, FakeGrid

from fedneurogen.client.app import _global_parameters
from fedneurogen.client.refusal import SiteRefusal
from fedneurogen.server.strategy import make_strategy
from fedneurogen.shared.transport import FROZEN_HASH, FROZEN_RECORD, FrozenStore, content_hash, frozen_names
from fedneurogen.shared.run_config import RunConfig

RIDGE = "modality_heads.fmri.mean.ridge.coef"


def _arrays(current: float = 0.0, ridge: float = 7.0) -> ArrayRecord:
    values = {k: np.full((2, 3), current, dtype=np.float32) for k in (BACKBONE, FMRI, FNIRS)}
    values[RIDGE] = np.full((4,), ridge, dtype=np.float32)
    return ArrayRecord({k: Array(v) for k, v in values.items()})


def _reply(out: Message, value: float, digest: str | None, extra: dict | None = None) -> Message:
    arrays = {
        BACKBONE: Array(np.full((2, 3), value, dtype=np.float32)),
        FMRI: Array(np.full((2, 3), value, np.float32)),
    }
    site = {"modality": "fmri"} | ({FROZEN_HASH: digest} if digest is not None else {})
    content = RecordDict(
        {
            "arrays": ArrayRecord(arrays | (extra or {})),
            "metrics": MetricRecord({"num-examples": 10}),
            "site": ConfigRecord(site),
        }
    )
    return Message(content=content, reply_to=out)


def _sent_frozen(messages: list[Message]) -> dict[int, bool]:
    return {m.metadata.dst_node_id: FROZEN_RECORD in m.content.array_records for m in messages}


def test_the_content_hash_names_every_name_dtype_shape_and_value():
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.zeros(3, dtype=np.float32)}
    digest = content_hash(arrays)
    assert digest == content_hash(dict(reversed(list(arrays.items()))))  # order does not matter
    changed = [
        arrays | {"a": np.where(arrays["a"] == 5, np.nextafter(np.float32(5), np.float32(6)), arrays["a"])},  # one ulp
        arrays | {"a": arrays["a"].astype(np.float64)},
        arrays | {"a": arrays["a"].reshape(3, 2)},
        {"c": arrays["a"], "b": arrays["b"]},
    ]
    assert all(content_hash(c) != digest for c in changed)


def test_a_site_keeps_the_records_it_was_sent_and_nothing_else(tmp_path):
    store = FrozenStore(tmp_path / "frozen")
    first = {"coef": np.ones((3, 2), dtype=np.float32)}
    second = {"coef": np.full((3, 2), 2.0, dtype=np.float32)}
    with pytest.raises(ValueError, match="do not match their hash"):
        store.save(content_hash(second), first)
    assert store.load(content_hash(first)) is None
    store.save(content_hash(first), first)
    np.testing.assert_array_equal(store.load(content_hash(first))["coef"], first["coef"])
    store.save(content_hash(second), second)  # the newer replaces the older
    assert store.load(content_hash(first)) is None
    assert [p.name for p in (tmp_path / "frozen").iterdir()] == [f"{content_hash(second)}.npz"]
    (tmp_path / "frozen" / f"{content_hash(second)}.npz").write_bytes(b"damaged")
    assert store.load(content_hash(second)) is None  # a damaged copy is dropped, never used
    with pytest.raises(ValueError, match="not a SHA-256"):
        store.load("../../etc/passwd")


def test_frozen_records_go_once_to_each_site_and_again_after_a_mismatch(task_identity):
    strategy = make_strategy(RunConfig(min_available_nodes=1, min_train_nodes=1), frozen=[RIDGE])
    config = ConfigRecord({})
    messages = list(strategy.configure_train(1, _arrays(), config, FakeGrid([1, 2, 3])))
    digest = config[FROZEN_HASH]
    assert digest == content_hash({RIDGE: np.full((4,), 7.0, dtype=np.float32)})
    assert _sent_frozen(messages) == {1: True, 2: True, 3: True}
    assert all(RIDGE not in m.content["arrays"] for m in messages)  # the weights carry the trained part only
    assert all(m.content["config"][FROZEN_HASH] == digest for m in messages)
    to = {m.metadata.dst_node_id: m for m in messages}
    replies = [
        _reply(to[1], 1.0, digest),
        _reply(to[2], 1.0, "0" * 64),  # holds another hash: re-sent
        Message(content=RecordDict(), reply_to=to[3]),  # malformed: names none
    ]
    new, _ = strategy.aggregate_train(1, replies)
    np.testing.assert_array_equal(new[RIDGE].numpy(), np.full((4,), 7.0))  # the global records stay
    assert list(new.keys()) == list(_arrays().keys())
    messages = list(strategy.configure_train(2, new, ConfigRecord({}), FakeGrid([1, 2, 3])))
    assert _sent_frozen(messages) == {1: False, 2: True, 3: True}
    # the evaluation messages follow the same rule; new frozen records go to everyone again
    evaluate = list(strategy.configure_evaluate(2, new, ConfigRecord({}), FakeGrid([1, 2, 3])))
    assert _sent_frozen(evaluate) == {1: False, 2: True, 3: True}
    changed = list(strategy.configure_train(3, _arrays(ridge=8.0), ConfigRecord({}), FakeGrid([1, 2, 3])))
    assert _sent_frozen(changed) == {1: True, 2: True, 3: True}


def test_a_reply_holding_a_frozen_record_is_refused(task_identity):
    strategy = make_strategy(RunConfig(min_available_nodes=1, min_train_nodes=1), frozen=[RIDGE])
    config = ConfigRecord({})
    messages = list(strategy.configure_train(1, _arrays(), config, FakeGrid([1, 2])))
    rewrite = {RIDGE: Array(np.zeros(4, dtype=np.float32))}
    replies = [_reply(messages[0], 1.0, config[FROZEN_HASH]), _reply(messages[1], 3.0, config[FROZEN_HASH], rewrite)]
    new, _ = strategy.aggregate_train(1, replies)
    failed = {f["node"]: f["reason"] for f in strategy.report[MessageType.TRAIN]["failed"]}
    assert "is frozen" in failed[messages[1].metadata.dst_node_id]
    assert float(new[BACKBONE].numpy()[0, 0]) == 1.0
    np.testing.assert_array_equal(new[RIDGE].numpy(), np.full((4,), 7.0))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(claimed=st.one_of(st.none(), st.text(max_size=80), st.integers(), st.floats(), st.binary(max_size=70)))
def test_a_site_claiming_any_hash_never_stops_the_round(task_identity, claimed):
    """Whatever a site puts where the hash goes, the round goes on and it is sent the records again
    unless it named exactly the hash sent."""
    strategy = make_strategy(RunConfig(min_available_nodes=1, min_train_nodes=1), frozen=[RIDGE])
    config = ConfigRecord({})
    messages = list(strategy.configure_train(1, _arrays(), config, FakeGrid([1])))
    out = messages[0]
    content = RecordDict(
        {
            "arrays": ArrayRecord(
                {BACKBONE: Array(np.ones((2, 3), np.float32)), FMRI: Array(np.ones((2, 3), np.float32))}
            ),
            "metrics": MetricRecord({"num-examples": 10}),
            "site": ConfigRecord({"modality": "fmri"} | ({} if claimed is None else {FROZEN_HASH: claimed})),
        }
    )
    new, _ = strategy.aggregate_train(1, [Message(content=content, reply_to=out)])
    assert new is not None
    again = list(strategy.configure_train(2, new, ConfigRecord({}), FakeGrid([1])))
    assert _sent_frozen(again) == {1: claimed != config[FROZEN_HASH]}


def _context(tmp_path) -> Context:
    node = {"state-dir": str(tmp_path / "state"), "data-path": str(tmp_path / "data")}
    return Context(run_id=1, node_id=1, node_config=node, state=RecordDict(), run_config={})


def _message(frozen: dict[str, np.ndarray] | None, digest: str | None) -> Message:
    content = RecordDict(
        {
            "arrays": ArrayRecord({BACKBONE: Array(np.ones((2, 3), np.float32))}),
            "config": ConfigRecord({"server-round": 1} | ({FROZEN_HASH: digest} if digest is not None else {})),
        }
    )
    if frozen is not None:
        content[FROZEN_RECORD] = ArrayRecord({k: Array(v) for k, v in frozen.items()})
    return Message(content=content, dst_node_id=1, message_type=MessageType.TRAIN)


def test_a_site_checks_keeps_and_reuses_the_frozen_records(tmp_path, task_identity):
    run, context = RunConfig(), _context(tmp_path)
    frozen = {RIDGE: np.full((4,), 7.0, dtype=np.float32)}
    digest = content_hash(frozen)
    with pytest.raises(SiteRefusal, match="not held here"):
        _global_parameters(_message(None, digest), context, run)
    with pytest.raises(SiteRefusal, match="do not match their hash"):
        _global_parameters(_message({RIDGE: np.zeros(4, np.float32)}, digest), context, run)
    params, held = _global_parameters(_message(frozen, digest), context, run)
    assert held == digest and torch.equal(params[RIDGE], torch.full((4,), 7.0))
    params, held = _global_parameters(_message(None, digest), context, run)  # kept from the last message
    assert held == digest and set(params) == {BACKBONE, RIDGE} and torch.equal(params[RIDGE], torch.full((4,), 7.0))
    params, held = _global_parameters(_message(None, None), context, run)  # a server that sends everything
    assert held is None and set(params) == {BACKBONE}


def test_the_models_frozen_records_are_its_ridge_path_and_noise_model():
    from fedneurogen.shared.model import NeuroGenModel

    names = frozen_names(NeuroGenModel("tiny"))
    assert names and all(".mean.ridge." in n or ".mean.local." in n or ".noise." in n for n in names)
    assert any(".noise." in n for n in names)


def test_the_folded_evaluation_is_the_evaluate_rounds_and_only_trained_parameters_go_back(
    small_fmri_sites, tmp_path, task_identity
):
    """One message per site per round: the scores a training reply carries for the model it
    received (``evaluate-first``) are exactly those an evaluate round gives the same model, and
    the reply holds the trained parameters only."""
    from fedneurogen.client import app as client_app
    from fedneurogen.server.checkpointing import model_parameters
    from fedneurogen.shared.model import NeuroGenModel
    from fedneurogen.shared.transport import EVALUATE_FIRST, EVALUATED_PREFIX

    run_config = RunConfig(preset="tiny", local_epochs=1, max_windows=8, eval_pcc_windows=16).model_dump(by_alias=True)
    node = {"data-path": str(small_fmri_sites[0]), "state-dir": str(tmp_path / "state"), "cache-dir": str(tmp_path)}
    context = Context(run_id=1, node_id=5, node_config=node, state=RecordDict(), run_config=run_config)
    torch.manual_seed(0)
    model = NeuroGenModel("tiny", device="cpu")
    parameters = model_parameters(model)
    frozen = set(frozen_names(model))
    frozen_arrays = {k: v for k, v in parameters.items() if k in frozen}
    digest = content_hash(frozen_arrays)

    def message(kind: str, extra: dict, with_frozen: bool) -> Message:
        content = RecordDict(
            {
                "arrays": ArrayRecord({k: Array(v) for k, v in parameters.items() if k not in frozen}),
                "config": ConfigRecord({"server-round": 1, "class-names": [], FROZEN_HASH: digest, **extra}),
            }
        )
        if with_frozen:
            content[FROZEN_RECORD] = ArrayRecord({k: Array(v) for k, v in frozen_arrays.items()})
        return Message(content=content, dst_node_id=5, message_type=kind)

    evaluated = client_app.evaluate(message(MessageType.EVALUATE, {}, with_frozen=True), context)
    assert not evaluated.has_error(), evaluated.error.reason
    trained = client_app.train(message(MessageType.TRAIN, {EVALUATE_FIRST: 1}, with_frozen=False), context)
    assert not trained.has_error(), trained.error.reason
    scores, folded = dict(evaluated.content["metrics"].items()), dict(trained.content["metrics"].items())
    assert set(scores) >= {"num-examples", "loss", "pcc"}
    assert {k: folded[EVALUATED_PREFIX + k] for k in scores} == scores
    assert trained.content["site"][FROZEN_HASH] == digest
    sent = set(trained.content["arrays"].keys())
    assert sent and not sent & frozen and "num-examples" in folded
