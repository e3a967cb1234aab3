"""Replies a hostile or broken site can send to the strategy: each is refused with a reason or
weighed down, the round goes on with the others, and nothing non-finite is aggregated."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, Metadata, MetricRecord, RecordDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_federation import BACKBONE, FMRI, FNIRS, FakeGrid, one_round, reply
from test_statistics_checks import _arrays

from fedneurogen.server.strategy import make_strategy
from fedneurogen.shared.run_config import RunConfig


def _failed(strategy, kind=MessageType.TRAIN) -> dict[int, str]:
    return {f["node"]: f["reason"] for f in strategy.report[kind]["failed"]}


def test_list_valued_metrics_and_float64_arrays_are_refused_not_raised(task_identity):
    strategy = make_strategy(RunConfig(min_available_nodes=1, min_train_nodes=1))
    arrays = ArrayRecord({k: Array(np.zeros((2, 3), dtype=np.float32)) for k in (BACKBONE, FMRI, FNIRS)})
    messages = list(strategy.configure_train(1, arrays, ConfigRecord({}), FakeGrid([1, 2, 3, 4])))

    def content(metrics, array_values, dtype=np.float32, extra=None):
        record = {k: Array(np.full((2, 3), v, dtype=dtype)) for k, v in array_values.items()} | (extra or {})
        return RecordDict(
            {
                "arrays": ArrayRecord(record),
                "metrics": MetricRecord(metrics),
                "site": ConfigRecord({"modality": "fmri"}),
            }
        )

    replies = [
        Message(content({"num-examples": 10}, {BACKBONE: 1.0, FMRI: 1.0}), reply_to=messages[0]),
        Message(content({"num-examples": [1]}, {BACKBONE: 2.0, FMRI: 2.0}), reply_to=messages[1]),
        Message(content({"num-examples": 10}, {BACKBONE: 1e300, FMRI: 1.0}, dtype=np.float64), reply_to=messages[2]),
        Message(
            content({"num-examples": 10}, {BACKBONE: 1.0, FMRI: 1.0}, extra={"stowaway": Array(np.zeros(3))}),
            reply_to=messages[3],
        ),
    ]
    new, _ = strategy.aggregate_train(1, replies)
    assert float(new[BACKBONE].numpy()[0, 0]) == pytest.approx(1.0)
    failed = _failed(strategy)
    assert "metric num-examples" in failed[messages[1].metadata.dst_node_id]
    assert "float64, not float32" in failed[messages[2].metadata.dst_node_id]
    assert "unknown parameter stowaway" in failed[messages[3].metadata.dst_node_id]


def test_a_long_update_of_a_scalar_parameter_is_bounded_too(task_identity):
    """The model has 0-d parameters (learned scales): bounding their update must keep them arrays."""
    scalar = "modality_heads.fmri.scale"
    strategy = make_strategy(RunConfig(min_available_nodes=1, min_train_nodes=1))
    arrays = ArrayRecord({scalar: Array(np.asarray(0.0, dtype=np.float32))})
    messages = list(strategy.configure_train(1, arrays, ConfigRecord({}), FakeGrid([1, 2, 3])))

    def update(value):
        return RecordDict(
            {
                "arrays": ArrayRecord({scalar: Array(np.asarray(value, dtype=np.float32))}),
                "metrics": MetricRecord({"num-examples": 10}),
                "site": ConfigRecord({"modality": "fmri"}),
            }
        )

    replies = [Message(update(v), reply_to=m) for v, m in zip((1.0, 1.0, -100.0), messages)]
    new, _ = strategy.aggregate_train(1, replies)
    assert new[scalar].shape == () and float(new[scalar].numpy()) == pytest.approx((1 + 1 - 3) / 3)


def test_a_site_claiming_many_more_examples_and_a_long_update_is_bounded_by_the_median(task_identity):
    sites = {
        1: ("fmri", 10, {BACKBONE: 1.0, FMRI: 1.0}),
        2: ("fmri", 10, {BACKBONE: 1.0, FMRI: 1.0}),
        3: ("fmri", 10, {BACKBONE: 1.0, FMRI: 1.0}),
        4: ("fmri", 10**9, {BACKBONE: 100.0, FMRI: 100.0}),  # its first claim: nothing declared yet
    }
    strategy, new, metrics = one_round("fedavg", sites)
    assert metrics["num-examples"] == 70  # 3 x 10 + 4 x the median 10
    # and its update (100 where the others moved 1) is scaled to 3 x the median update's norm
    assert new[BACKBONE] == pytest.approx((30 * 1 + 40 * 3) / 70)
    assert strategy.report[MessageType.TRAIN]["clipped"][0]["node"] == 4


def test_an_evaluation_reply_cannot_steer_the_held_out_score(task_identity):
    strategy = make_strategy(RunConfig(min_available_nodes=1, min_evaluate_nodes=1))
    arrays = ArrayRecord({BACKBONE: Array(np.zeros((2, 3), dtype=np.float32))})
    messages = list(strategy.configure_evaluate(1, arrays, ConfigRecord({}), FakeGrid([1, 2, 3, 4])))

    def evaluation(n, pcc):
        metrics = MetricRecord({"num-examples": n, "pcc": pcc})
        return RecordDict({"metrics": metrics, "site": ConfigRecord({"modality": "fmri"})})

    replies = [Message(evaluation(20, 0.2), reply_to=m) for m in messages[:3]]
    replies.append(Message(evaluation(10**9, 0.99), reply_to=messages[3]))  # the liar
    metrics = strategy.aggregate_evaluate(1, replies)
    assert metrics["pcc-mean"] == pytest.approx((60 * 0.2 + 80 * 0.99) / 140)  # weighed as four medians at most
    assert metrics["pcc"] == pytest.approx(0.2)  # early stopping's score: the median over the sites
    replies[0] = Message(evaluation(20, 0.3), reply_to=messages[0])
    assert strategy.aggregate_evaluate(1, replies)["pcc"] == pytest.approx(0.25)  # within the honest sites' range
    lie = strategy.aggregate_evaluate(2, [Message(evaluation(20, 7.0), reply_to=messages[0])])
    assert (
        lie is None and "not a correlation" in _failed(strategy, MessageType.EVALUATE)[messages[0].metadata.dst_node_id]
    )


_metric_values = st.one_of(
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.lists(st.floats(allow_nan=False), max_size=3),
    st.lists(st.integers(-5, 5), max_size=3),
)
_array_values = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.floats(width=64))


_FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
_STRATEGY = make_strategy(RunConfig(min_available_nodes=1, min_train_nodes=1, min_evaluate_nodes=1))


def _fresh_strategy():
    """One strategy for every example (building Flower's strategies costs more than a check):
    what it remembers of earlier rounds is cleared."""
    _STRATEGY.declared.clear()
    _STRATEGY.report.clear()
    return _STRATEGY


@pytest.fixture
def quiet_flower():
    """The strategy's warnings (a site refused, every example) are not printed while fuzzing:
    printing them costs more than the checks."""
    logger = logging.getLogger("flwr")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


#: With tests/test_statistics_checks.py's properties: over 10 000 fuzzed replies per run (issue 28).
@settings(_FUZZ, max_examples=1500)
@given(
    metrics=st.dictionaries(
        st.sampled_from(["num-examples", "loss", "pcc", "epsilon", "x"]), _metric_values, max_size=5
    ),
    values=st.dictionaries(st.sampled_from([BACKBONE, FMRI, FNIRS, "other"]), _array_values, max_size=4),
    dtype=st.sampled_from([np.float32, np.float64, np.float16]),
    shape=st.sampled_from([(2, 3), (3, 2), (6,)]),
    modality=st.sampled_from(["fmri", "fnirs", "eeg", ""]),
    with_site=st.booleans(),
)
def test_fuzzed_train_replies_never_raise_and_never_aggregate_non_finite(
    metrics, values, dtype, shape, modality, with_site, task_identity, quiet_flower
):
    strategy = _fresh_strategy()
    arrays = ArrayRecord({k: Array(np.zeros((2, 3), dtype=np.float32)) for k in (BACKBONE, FMRI, FNIRS)})
    out = list(strategy.configure_train(1, arrays, ConfigRecord({}), FakeGrid([1, 2])))
    honest = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(np.full((2, 3), 1.0, dtype=np.float32)) for k in (BACKBONE, FMRI)}),
            "metrics": MetricRecord({"num-examples": 10}),
            "site": ConfigRecord({"modality": "fmri"}),
        }
    )
    fuzzed = {
        "arrays": ArrayRecord({k: Array(np.full(shape, v, dtype=dtype)) for k, v in values.items()}),
        "metrics": MetricRecord(metrics),
    }
    if with_site:
        fuzzed["site"] = ConfigRecord({"modality": modality})
    replies = [Message(honest, reply_to=out[0]), Message(RecordDict(fuzzed), reply_to=out[1])]
    new, _ = strategy.aggregate_train(1, replies)
    assert new is not None  # the honest site alone is enough
    assert all(np.isfinite(new[k].numpy()).all() for k in new.keys())
    report = strategy.report[MessageType.TRAIN]
    assert str(out[1].metadata.dst_node_id) in report["sites"] or _failed(strategy)[out[1].metadata.dst_node_id]


@settings(_FUZZ, max_examples=1400)
@given(
    fuzzed=st.lists(
        st.dictionaries(st.sampled_from(["num-examples", "pcc", "loss", "withheld", "x"]), _metric_values, max_size=5),
        min_size=1,
        max_size=3,
    ),
    honest=st.lists(st.tuples(st.integers(0, 50), st.floats(-1, 1)), max_size=3),
    modality=st.sampled_from(["fmri", "fnirs", "eeg"]),
)
def test_fuzzed_evaluation_replies_never_raise_and_the_score_stays_a_correlation(
    fuzzed, honest, modality, task_identity, quiet_flower
):
    """Held-out scores from honest and fuzzed sites: nothing raises, the aggregate score (what
    early stopping acts on) is a finite correlation, and every refusal names its site."""
    strategy = _fresh_strategy()
    arrays = ArrayRecord({BACKBONE: Array(np.zeros((2, 3), dtype=np.float32))})
    nodes = list(range(1, len(honest) + len(fuzzed) + 1))
    out = list(strategy.configure_evaluate(1, arrays, ConfigRecord({}), FakeGrid(nodes)))
    records = [MetricRecord({"num-examples": n, "pcc": p}) for n, p in honest] + [MetricRecord(m) for m in fuzzed]
    replies = [
        Message(RecordDict({"metrics": r, "site": ConfigRecord({"modality": modality})}), reply_to=m)
        for r, m in zip(records, out)
    ]
    metrics = strategy.aggregate_evaluate(1, replies)
    if metrics is not None and "pcc" in metrics:
        assert math.isfinite(metrics["pcc"]) and -1.0 <= metrics["pcc"] <= 1.0
    report = strategy.report[MessageType.EVALUATE]
    failed = {f["node"]: f["reason"] for f in report["failed"]}
    assert all(str(m.metadata.dst_node_id) in report["sites"] or failed[m.metadata.dst_node_id] for m in out)


# ----------------------------------------------------------------------------------------------
# The ServerApp's queries: class names and ridge statistics


class QueryGrid:
    """Answers each query with ``answers[node](message)``."""

    def __init__(self, answers):
        self.answers = answers

    def get_node_ids(self):
        return list(self.answers)

    def send_and_receive(self, messages, *, timeout=None):
        return [self.answers[m.metadata.dst_node_id](m) for m in messages]


def _answer(records: dict):
    return lambda out: Message(RecordDict(records), reply_to=out)


_MODEL = []  # the tiny model, built once for the statistics fuzzer (only its shapes are read)
_stat_names = st.sampled_from(["train.n", "train.sx", "train.sy", "train.sxx", "val.syy", "val.n", "x", "train."])
_config_values = st.one_of(
    st.sampled_from(["fmri", "fnirs", "eeg", ""]),
    st.integers(-3, 3),
    st.floats(),
    st.booleans(),
    st.binary(max_size=4),
    st.lists(st.text(alphabet="S1_D hbo", max_size=6), max_size=3),
    st.lists(st.integers(-3, 3), max_size=3),
)


@settings(_FUZZ, max_examples=1000)
@given(
    statistics=st.one_of(st.none(), st.dictionaries(_stat_names, _arrays, max_size=8)),
    site=st.one_of(
        st.none(), st.dictionaries(st.sampled_from(["modality", "points", "classes"]), _config_values, max_size=3)
    ),
    private=st.one_of(st.none(), _metric_values),
    stowaway=st.booleans(),
)
def test_fuzzed_statistics_messages_are_read_or_refused_with_a_reason(
    statistics, site, private, stowaway, task_identity
):
    """``read_statistics_reply`` on real flwr Messages: records missing, of the wrong kind or
    holding anything: a checked reply of the model's shapes, or ``StatisticsRefused`` with a reason."""
    from fedneurogen.server.app import read_statistics_reply
    from fedneurogen.server.statistics import StatisticsRefused
    from fedneurogen.shared.model import NeuroGenModel

    if not _MODEL:
        _MODEL.append(NeuroGenModel("tiny", device="cpu"))
    width, points = _MODEL[0].modality_heads["fmri"].mean.ridge.coef.shape
    content = RecordDict()
    if statistics is not None:
        content["statistics"] = ArrayRecord({k: Array(v) for k, v in statistics.items()})
    if site is not None:
        content["site"] = ConfigRecord(site)
    if private is not None:
        content["metrics"] = MetricRecord({"private": private})
    if stowaway:
        content["stowaway"] = ConfigRecord({"statistics": 1})
    query = Message(RecordDict({"request": ConfigRecord({"kind": "x"})}), dst_node_id=1, message_type=MessageType.QUERY)
    try:
        got = read_statistics_reply(Message(content, reply_to=query), _MODEL[0])
    except StatisticsRefused as err:
        assert str(err)
        return
    assert got.train.sxx.shape == (width, width) and np.isfinite(got.train.sxy).all()  # (not reached by chance)


def test_class_names_from_a_hostile_site_are_filtered(task_identity):
    from fedneurogen.server.app import site_classes

    grid = QueryGrid(
        {
            1: _answer({"site": ConfigRecord({"classes": ["faces", "houses"]})}),
            2: _answer({"site": ConfigRecord({"classes": "faces"})}),  # a string, not a list
            3: _answer({"site": ConfigRecord({"classes": ["left_hand", "/data/site-01/sub-03", "sub-03", "x" * 200]})}),
            4: _answer({}),  # no site record
        }
    )
    assert site_classes(grid, 4, 1.0, 8) == ["faces", "houses", "left_hand"]


def test_the_ridge_path_is_solved_from_the_honest_sites_only(task_identity):
    """Three sites answer the statistics query: one honest, one NaN, one scaled to capture the
    sum. The path is solved from the honest one (the same as from it alone), and nothing raises."""
    from flwr.app import Array, ArrayRecord

    from fedneurogen.server.app import solve_global_ridge
    from fedneurogen.shared.model import NeuroGenModel
    from fedneurogen.shared.ridge import RidgeStatistics

    torch_model = NeuroGenModel("tiny", device="cpu")
    width, points = torch_model.modality_heads["fmri"].mean.ridge.coef.shape
    rng = np.random.default_rng(0)

    def statistics(rows):
        x = rng.standard_normal((rows, width)).astype(np.float32)
        y = (x[:, :8] @ rng.standard_normal((8, points)) * 0.1 + rng.standard_normal((rows, points))).astype(np.float32)
        return RidgeStatistics.from_rows(x, y)

    honest = {f"train.{k}": v for k, v in statistics(80).as_arrays().items()}
    honest |= {f"val.{k}": v for k, v in statistics(30).as_arrays().items()}
    nan = {k: v.copy() for k, v in honest.items()}
    nan["train.sxy"][0, 0] = np.nan
    scaled = {k: v * 1e12 if not k.endswith(".n") else v for k, v in honest.items()}

    def statistics_reply(arrays):
        record = ArrayRecord({k: Array(np.atleast_1d(v)) for k, v in arrays.items()})
        return _answer({"statistics": record, "site": ConfigRecord({"modality": "fmri"})})

    hostile = QueryGrid(
        {
            1: statistics_reply(honest),
            2: statistics_reply(nan),
            3: statistics_reply(scaled),
            4: _answer({"statistics": ArrayRecord()}),
        }
    )
    chosen = solve_global_ridge(hostile, torch_model, 4, 1.0)
    assert chosen["fmri"]["sites"] == 1
    reasons = {r["node"]: r["reason"] for r in chosen["refused"]}  # public, in round 1's history
    assert set(reasons) == {2, 3, 4} and "NaN" in reasons[2] and "no site record" in reasons[4]
    alone = NeuroGenModel("tiny", device="cpu")
    solve_global_ridge(QueryGrid({1: statistics_reply(honest)}), alone, 1, 1.0)
    np.testing.assert_array_equal(
        torch_model.modality_heads["fmri"].mean.ridge.coef.detach().numpy(),
        alone.modality_heads["fmri"].mean.ridge.coef.detach().numpy(),
    )


def test_fedadam_keeps_the_global_model_float32_across_rounds(task_identity):
    """Flower's FedAdam multiplies by NumPy float64 scalars; the aggregate is cast back, so the
    sites' float32 updates of the next round are not refused as the wrong dtype."""
    strategy = make_strategy(RunConfig(strategy="fedadam", min_available_nodes=1, min_train_nodes=1))
    sites = {1: ("fmri", 10, {BACKBONE: 1.0, FMRI: 1.0}), 2: ("fmri", 10, {BACKBONE: 2.0, FMRI: 2.0})}
    arrays = ArrayRecord({k: Array(np.zeros((2, 3), dtype=np.float32)) for k in (BACKBONE, FMRI, FNIRS)})
    for server_round in (1, 2):
        messages = list(strategy.configure_train(server_round, arrays, ConfigRecord({}), FakeGrid(sites)))
        new, _ = strategy.aggregate_train(server_round, [reply(m, *sites[m.metadata.dst_node_id]) for m in messages])
        assert new is not None and {new[k].dtype for k in new.keys()} == {"float32"}
        assert strategy.report[MessageType.TRAIN]["failed"] == []
        arrays = new


def test_a_site_lying_in_its_held_out_score_cannot_choose_early_stoppings_round(task_identity):
    """Three honest sites improve round by round; a fourth claims 0.99 before training and -0.99
    after, over a huge count: early stopping (on the median over sites) keeps the last round, and
    the liar's loss does not veto the residual (a robust spread of the sites' gains)."""
    from fedneurogen.server.early_stopping import ResidualEarlyStopping

    strategy = make_strategy(RunConfig(min_available_nodes=1, min_evaluate_nodes=1))
    stopping = ResidualEarlyStopping(patience=1)
    arrays = ArrayRecord({BACKBONE: Array(np.zeros((2, 3), dtype=np.float32))})
    for server_round, honest_score in ((0, 0.10), (1, 0.15), (2, 0.20)):
        messages = list(strategy.configure_evaluate(server_round, arrays, ConfigRecord({}), FakeGrid([1, 2, 3, 4])))
        messages.sort(key=lambda m: m.metadata.dst_node_id)  # each node keeps its score's place: node 4 lies
        scores = [honest_score, honest_score + 0.01, honest_score - 0.01, 0.99 if server_round == 0 else -0.99]
        replies = [
            Message(
                RecordDict(
                    {
                        "metrics": MetricRecord({"num-examples": 20 if i < 3 else 10**9, "pcc": score}),
                        "site": ConfigRecord({"modality": "fmri"}),
                    }
                ),
                reply_to=m,
            )
            for i, (score, m) in enumerate(zip(scores, messages))
        ]
        pcc = strategy.aggregate_evaluate(server_round, replies)["pcc"]
        stopping.offer(server_round, pcc, arrays, strategy.report[MessageType.EVALUATE]["sites"])
    assert stopping.best_round == 2 and not stopping.stopped and stopping.best_score == pytest.approx(0.195)
    assert stopping.summary()["sites"] == 4 and stopping.keeps_best


def test_too_few_valid_replies_end_the_run_but_spent_budgets_do_not(task_identity):
    """min-train-replies = 2: two sites refused leave one valid reply, which ends the run (the
    reason names both); two sites whose DP budget is spent reply validly without examples, so the
    round keeps the global model and the run goes on."""
    sites = {
        1: ("fmri", 10, {BACKBONE: 1.0, FMRI: 1.0}),
        2: ("fmri", 10, {BACKBONE: 1.0, FMRI: 1.0}, {"num-examples": [1]}),  # garbage
        3: ("fmri", 10, None),  # an error reply
    }
    strategy = make_strategy(RunConfig(min_available_nodes=3, min_train_nodes=3, min_train_replies=2))
    arrays = ArrayRecord({k: Array(np.zeros((2, 3), dtype=np.float32)) for k in (BACKBONE, FMRI, FNIRS)})
    messages = list(strategy.configure_train(1, arrays, ConfigRecord({}), FakeGrid(sites)))
    new, _ = strategy.aggregate_train(1, [reply(m, *sites[m.metadata.dst_node_id]) for m in messages])
    ended = strategy.shortfall()
    assert new is None and ended.startswith("1 valid training reply where min-train-replies = 2 (failed or refused:")
    assert "node 2: malformed reply: metric num-examples" in ended and "node 3: error reply: site raised" in ended

    spent = {1: sites[1], 2: ("fmri", 0, {BACKBONE: 1.0, FMRI: 1.0}), 3: ("fmri", 0, {BACKBONE: 1.0, FMRI: 1.0})}
    messages = list(strategy.configure_train(2, arrays, ConfigRecord({}), FakeGrid(spent)))
    new, _ = strategy.aggregate_train(2, [reply(m, *spent[m.metadata.dst_node_id]) for m in messages])
    assert new is None and strategy.shortfall() is None  # one update is too few to aggregate, not a reason to end


class StreamingGrid(QueryGrid):
    """A grid that hands out one reply per pull, as replies trickle in from hundreds of sites."""

    pull_interval = 0.0

    def __init__(self, answers):
        super().__init__(answers)
        self.queued: dict[str, Message] = {}

    def push_messages(self, messages):
        ids = []
        for i, message in enumerate(messages):
            self.queued[str(i)] = self.answers[message.metadata.dst_node_id](message)
            ids.append(str(i))
        return ids

    def pull_messages(self, message_ids):
        for key in sorted(message_ids):
            if key in self.queued:
                reply = self.queued.pop(key)
                meta = reply.metadata
                metadata = Metadata(
                    meta.run_id,
                    f"reply-{key}",
                    meta.src_node_id,
                    meta.dst_node_id,
                    key,
                    "",
                    0.0,
                    60.0,
                    meta.message_type,
                )
                return [Message(content=reply.content, metadata=metadata)]
        return []


def test_statistics_gathered_one_reply_at_a_time_give_the_same_path(task_identity, tmp_path, monkeypatch):
    """The server reads the sites' statistics one reply at a time and keeps their matrices in files
    of its own until it sums them: the path is the one from all replies at once, bit for bit, and
    the files are gone afterwards."""
    import tempfile

    from flwr.app import Array, ArrayRecord

    from fedneurogen.server.app import solve_global_ridge
    from fedneurogen.server.statistics import SpilledStatistics
    from fedneurogen.shared.model import NeuroGenModel
    from fedneurogen.shared.ridge import RidgeStatistics, sum_statistics

    width, points = NeuroGenModel("tiny", device="cpu").modality_heads["fmri"].mean.ridge.coef.shape
    rng = np.random.default_rng(1)
    weights = rng.standard_normal((8, points))

    def statistics(rows):
        x = rng.standard_normal((rows, width))
        return RidgeStatistics.from_rows(x, x[:, :8] @ weights * 0.1 + rng.standard_normal((rows, points)))

    sites = {node: (statistics(60), statistics(20)) for node in (1, 2, 3, 4)}

    def reply(train, val):
        arrays = {f"train.{k}": v for k, v in train.as_arrays().items()} | {
            f"val.{k}": v for k, v in val.as_arrays().items()
        }
        record = ArrayRecord({k: Array(np.atleast_1d(v)) for k, v in arrays.items()})
        return _answer({"statistics": record, "site": ConfigRecord({"modality": "fmri"})})

    answers = {node: reply(*parts) for node, parts in sites.items()}
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    models = []
    for grid in (QueryGrid(answers), StreamingGrid(answers)):
        models.append(NeuroGenModel("tiny", device="cpu"))
        assert solve_global_ridge(grid, models[-1], 4, 120.0)["fmri"]["sites"] == 4
    coefs = [m.modality_heads["fmri"].mean.ridge.coef.detach().numpy() for m in models]
    np.testing.assert_array_equal(coefs[0], coefs[1])
    assert list(tmp_path.iterdir()) == []  # the spilled matrices went with the run's temporary folder

    train = sites[1][0]
    spilled = SpilledStatistics(train, tmp_path)
    assert not {"sxx", "sxy"} & set(vars(spilled))  # the matrices are not held in memory
    for name, value in train.as_arrays().items():
        np.testing.assert_array_equal(spilled.as_arrays()[name], value)
    total = sum_statistics([spilled, sites[2][0]])
    np.testing.assert_array_equal(total.sxy, (train + sites[2][0]).sxy)
