"""The ClientApp the local simulation installs: the site's own app (``client/app.py``) wrapped
in one Flower mod that applies what only a simulation has (``simulations/drills.py``).

Before a request reaches the site's handlers, the mod gives a simulated node its
``sim-node-config`` entries and lets the fault drill's node fail its rounds; after a training request, it
replaces the attack drill's node's update by a poisoned one. Everything else is the deployed
site's code, unchanged. ``run_federated`` runs this app (``simulation_app``); a deployment's
``flwr run .`` runs ``fedneurogen.client.app:app`` and never loads this module.
"""

from __future__ import annotations

import copy

from flwr.app import ArrayRecord, Context, Error, Message
from flwr.common import MessageType
from flwr.common.constant import ErrorCode

from fedneurogen.client.app import client_app
from fedneurogen.shared.errors import ConfigError
from fedneurogen.simulations.drills import SimulationConfig, is_node, poison, simulated_node_config

FAULT_REASON = "injected fault (fault-partition drill)"
ROUND_MESSAGES = (MessageType.TRAIN, MessageType.EVALUATE)  # what the fault drill fails (queries are answered)


def _error_reply(msg: Message, reason: str) -> Message:
    return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg)


def simulation_mod(msg: Message, context: Context, call_next) -> Message:  # noqa: ANN001 - Flower's mod signature
    """Simulated node settings and drills around the site's handler ``call_next``."""
    try:
        drill = SimulationConfig.from_run_config(context.run_config)
        node_config = simulated_node_config(context.node_config, drill.sim_node_config)
    except ConfigError as err:  # the run config came from the server: safe to send back
        return _error_reply(msg, f"site refused: invalid {err}")
    if is_node(drill.fault_partition, node_config) and msg.metadata.message_type in ROUND_MESSAGES:
        return _error_reply(msg, FAULT_REASON)
    # the handlers see this node's settings; the state stays the one Flower keeps between rounds
    node_context = copy.copy(context)
    node_context.node_config = node_config
    reply = call_next(msg, node_context)
    attacking = is_node(drill.attack_partition, node_config)
    if attacking and msg.metadata.message_type == MessageType.TRAIN and not reply.has_error():
        local = reply.content["arrays"].to_torch_state_dict()
        received = msg.content["arrays"].to_torch_state_dict()
        server_round = int(msg.content["config"]["server-round"])
        reply.content["arrays"] = ArrayRecord(poison(drill, local, received, seed=server_round))
    return reply


app = client_app(mods=[simulation_mod])
