"""The site's ClientApp given whatever a hostile or broken coordinator can send: every message is
answered (a reply or an error reply with a reason), nothing raises out of the app, and the site's
data is never touched."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_data_safety import fingerprint

from fedneurogen.client import app as client_app
from fedneurogen.shared.run_config import RunConfig
from fedneurogen.simulations.simulator import simulate_dataset

PARAM = "dit.blocks.0.attn.proj.weight"


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """A small site and the fingerprint of its files as the simulator wrote them."""
    (folder,) = simulate_dataset(
        tmp_path_factory.mktemp("fuzz-site"), n_sites=1, subjects_per_site=3, seed=8, run_seconds=60.0, progress=False
    )
    return folder, fingerprint(folder)


@pytest.fixture
def site(simulated):
    return simulated[0]


_scalars = st.one_of(
    st.integers(-(2**31), 2**31), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12), st.booleans()
)
_config = st.dictionaries(
    st.sampled_from(["server-round", "class-names", "kind", "proximal-mu", "lr", "x", "request"]),
    st.one_of(_scalars, st.lists(st.text(max_size=6), max_size=4), st.lists(st.integers(-3, 3), max_size=4)),
    max_size=5,
)
_arrays = st.dictionaries(
    st.sampled_from([PARAM, "modality_heads.fmri.mean.ridge.coef", "bogus", "x.y"]),
    st.tuples(
        st.sampled_from([np.float32, np.float64, np.int32]),
        st.sampled_from([(1,), (2, 3), (0,), (4, 4, 4)]),
        st.floats(allow_nan=True, allow_infinity=True, width=32),
    ),
    max_size=3,
)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(
    kind=st.sampled_from([MessageType.TRAIN, MessageType.EVALUATE, MessageType.QUERY]),
    config=_config,
    arrays=_arrays,
    record_name=st.sampled_from(["config", "request", "arrays", "other"]),
    run_changes=st.dictionaries(
        st.sampled_from(["local-epochs", "max-windows", "preset", "dp-enabled", "eval-pcc-windows", "modality"]),
        _scalars,
        max_size=2,
    ),
)
def test_any_message_gets_a_reply_and_never_raises(
    site, tmp_path_factory, task_identity, kind, config, arrays, record_name, run_changes
):
    state = tmp_path_factory.getbasetemp() / "fuzz-state"
    node = {"data-path": str(site), "state-dir": str(state)}
    run_config = {**RunConfig(preset="tiny").model_dump(by_alias=True), **run_changes}
    context = Context(run_id=1, node_id=3, node_config=node, state=RecordDict(), run_config=run_config)
    content = RecordDict()
    if record_name in ("config", "request", "other"):
        content[record_name] = ConfigRecord(config)
    if arrays or record_name == "arrays":
        content["arrays"] = ArrayRecord(
            {name: Array(np.full(shape, value).astype(dtype)) for name, (dtype, shape, value) in arrays.items()}
        )
    handler = {MessageType.TRAIN: client_app.train, MessageType.EVALUATE: client_app.evaluate}.get(
        kind, client_app.query
    )
    reply = handler(Message(content, dst_node_id=3, message_type=kind), context)
    assert isinstance(reply, Message)
    if reply.has_error():  # a reason, never a traceback or a path of the site's
        assert reply.error.reason and "Traceback" not in reply.error.reason and str(site) not in reply.error.reason


def test_fuzzing_left_the_site_as_it_was(simulated, tmp_path_factory, task_identity):
    """After the property above (same module, same site): the site's files are those the
    simulator wrote, and one more plain query changes nothing either."""
    site, written = simulated
    context = Context(
        run_id=1,
        node_id=3,
        node_config={"data-path": str(site), "state-dir": str(tmp_path_factory.getbasetemp() / "fuzz-state")},
        state=RecordDict(),
        run_config=RunConfig(preset="tiny").model_dump(by_alias=True),
    )
    reply = client_app.query(Message(RecordDict(), dst_node_id=3, message_type=MessageType.QUERY), context)
    assert not reply.has_error(), reply.error.reason
    assert fingerprint(site) == written
