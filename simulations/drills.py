"""What only the local simulation does on a site: simulated node settings and drills.

The keys below are declared in the simulation's Flower app (``simulation_app`` in
``simulations/federated.py``), never in the site's: a deployed site has no such keys in its run
config and no code that reads them. ``simulation_mod`` applies them around the site's own
handlers: the simulation's ClientApp (``fedneurogen/simulation_app.py``) is the site's app with
this mod. Before a request reaches the site's handlers, the mod gives a simulated node its
``sim-node-config`` entries and lets the fault drill's node fail its rounds; after a training
request, it replaces the attack drill's node's update by a poisoned one.

- ``sim-node-config``: ``"1:data-path=/x;2:preset=small"`` gives simulated node 1 (its
  partition id) the data path ``/x`` and node 2 a pinned preset, as ``--node-config`` does for a
  site daemon. It applies only to simulated nodes (a partition id and no data path of their
  own), so a run config can never redirect a deployed site.
- ``site-seed`` (a node setting, e.g. ``sim-node-config="0:site-seed=7"``): the seed of a
  simulated node's own randomness (batches, DP noise, the ``max-windows`` subset). The mod gives
  every simulated node one, its partition id, so a simulation repeats; a deployed site has none
  and draws from OS entropy and its secret key, whatever the run config's ``seed`` says.
- ``allow-exact-statistics`` and ``min-subjects-per-release=1``: every simulated node may send
  its (simulated) ridge statistics exactly, so the local simulation runs without DP; a deployed
  site does so only when its own node config says so (``client/refusal.py``).
- ``fault-partition``: that node fails every training and evaluation request (tests the
  server's failure handling); it still answers queries (classes, ridge statistics).
- ``attack-partition`` with ``attack-mode``: that node (or those of a list, ``"1,2"``) lies,
  for ``benchmarks/robustness.py`` and the integrity tests. Its training update: ``scale``
  (global + ``attack-scale`` x (local - global)), ``random`` (Gaussian noise with the update's
  per-tensor std x scale), ``sign-flip`` (global - scale x (local - global)), ``float64-huge``
  (float64 arrays of 1e300: finite, inf once cast), ``count-inflate`` (its example count x
  scale). Its evaluation: ``eval-lie`` (PCC 0.99 before training and -0.99 after, over scale x
  its windows: early stopping, if it trusted it, would keep the untrained residual). Its ridge
  statistics: ``statistics-scale`` (every array x scale), ``statistics-crafted`` (``XᵀY = XᵀX·B``
  for a ``B`` of its choosing, with ``Σy²`` raised to pass Cauchy-Schwarz) and ``statistics-nan``.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any, Literal, get_args

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Context, Error, Message
from flwr.common import MessageType
from flwr.common.constant import ErrorCode
from pydantic import BaseModel, ConfigDict, field_validator

from fedneurogen.shared.errors import ConfigError
from fedneurogen.shared.run_config import validate_run_config

AttackMode = Literal[
    "scale", "random", "sign-flip", "float64-huge", "count-inflate", "eval-lie",
    "statistics-scale", "statistics-crafted", "statistics-nan",
]  # fmt: skip
UPDATE_ATTACKS = ("scale", "random", "sign-flip", "float64-huge", "count-inflate")
ATTACK_MODES: tuple[str, ...] = get_args(AttackMode)
NO_NODE = -1
SITE_SEED = "site-seed"  # the node setting client/app.py seeds a simulated node's randomness from
EXACT_STATISTICS, MIN_SUBJECTS = "allow-exact-statistics", "min-subjects-per-release"  # a site's policy keys
FAULT_REASON = "injected fault (fault-partition drill)"
ROUND_MESSAGES = (MessageType.TRAIN, MessageType.EVALUATE)  # what the fault drill fails (queries are answered)


class SimulationConfig(BaseModel):
    """The simulation's own run-config keys (``fault-partition`` is field ``fault_partition``);
    every other key of the run config is the site's and is ignored here."""

    model_config = ConfigDict(
        alias_generator=lambda name: name.replace("_", "-"), populate_by_name=True, extra="ignore", frozen=True
    )

    sim_node_config: str = ""
    fault_partition: int = NO_NODE
    attack_partition: int | str = NO_NODE  # one partition id, or several: "1,2"
    attack_mode: AttackMode = "scale"
    attack_scale: float = 100.0

    @field_validator("attack_partition")
    @classmethod
    def _partitions(cls, value: int | str) -> int | str:
        if isinstance(value, str) and not re.fullmatch(r"\s*-?\d+(\s*,\s*-?\d+)*\s*", value):
            raise ValueError("must be a partition id or a comma-separated list of them (e.g. 1,2)")
        return value

    @property
    def attack_partitions(self) -> tuple[int, ...]:
        """The attack drill's nodes (``attack-partition``: one id or a comma-separated list)."""
        if isinstance(self.attack_partition, int):
            return (self.attack_partition,)
        return tuple(int(p) for p in self.attack_partition.split(","))

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> "SimulationConfig":
        """The typed keys, or ``ConfigError`` naming a bad one and what is allowed."""
        return validate_run_config(dict(run_config), model=cls)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """``{run-config key: default}``: what the simulation's app declares in its pyproject."""
        return {field.alias or name: field.default for name, field in cls.model_fields.items()}


def is_node(partition: int, node_config: Mapping[str, Any]) -> bool:
    """Whether ``partition`` names this simulated node (a node without a partition id is none)."""
    return partition != NO_NODE and partition == int(node_config.get("partition-id", NO_NODE - 1))


def simulated_node_config(node_config: Mapping[str, Any], spec: str) -> dict[str, Any]:
    """The node config plus this simulated node's ``sim-node-config`` entries (see the module
    docstring); a node that has its own ``data-path`` is a deployed site and is left as it is."""
    spec = spec.strip()
    if not spec or "partition-id" not in node_config or "data-path" in node_config:
        return dict(node_config)
    merged = dict(node_config)
    for item in filter(None, (part.strip() for part in spec.split(";"))):
        node, sep, setting = item.partition(":")
        key, eq, value = setting.partition("=")
        if not (sep and eq and node.strip().lstrip("-").isdigit() and key.strip()):
            raise ConfigError(f"run config: sim-node-config entry {item!r} is not PARTITION:KEY=VALUE")
        if int(node) == int(node_config["partition-id"]):
            merged[key.strip()] = value.strip()
    return merged


def poison(
    drill: SimulationConfig, local: dict[str, torch.Tensor], received: dict[str, torch.Tensor], seed: int
) -> dict[str, torch.Tensor]:
    """The attack drill's update: ``local`` turned into a poisoned one (see the module docstring)."""
    generator = torch.Generator().manual_seed(seed)
    poisoned = {}
    for name, weights in local.items():
        start = received[name].to(weights.dtype)
        update = weights - start
        if drill.attack_mode == "scale":
            poisoned[name] = start + drill.attack_scale * update
        elif drill.attack_mode == "sign-flip":
            poisoned[name] = start - drill.attack_scale * update
        elif drill.attack_mode in ("float64-huge", "count-inflate"):
            poisoned[name] = weights  # changed after the fact (dtype, count): see lie()
        else:
            noise = torch.randn(weights.shape, generator=generator, dtype=weights.dtype)
            # a one-element tensor (the model's learned scalars) has no std: only the floor applies
            spread = update.std() if update.numel() > 1 else update.new_zeros(())
            poisoned[name] = start + drill.attack_scale * spread.nan_to_num(0.0).clamp_min(1e-3) * noise
    return poisoned


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
    if "partition-id" in node_config and "data-path" not in node_config:  # a simulated node: repeatable
        node_config.setdefault(SITE_SEED, int(node_config["partition-id"]))
        # simulated subjects: their ridge statistics may leave exactly (a deployed site's policy
        # allows that only when its operator says so), over as few subjects as a small simulated site has
        node_config.setdefault(EXACT_STATISTICS, "true")
        node_config.setdefault(MIN_SUBJECTS, 1)
    # the handlers see this node's settings; the state stays the one Flower keeps between rounds
    node_context = copy.copy(context)
    node_context.node_config = node_config
    reply = call_next(msg, node_context)
    if any(is_node(p, node_config) for p in drill.attack_partitions) and not reply.has_error():
        lie(drill, msg, reply)
    return reply


def lie(drill: SimulationConfig, msg: Message, reply: Message) -> None:
    """The attack drill's node turns its honest ``reply`` to ``msg`` into its attack, in place."""
    kind, content, mode = msg.metadata.message_type, reply.content, drill.attack_mode
    if kind == MessageType.TRAIN and mode in UPDATE_ATTACKS:
        local = content["arrays"].to_torch_state_dict()
        received = msg.content["arrays"].to_torch_state_dict()
        server_round = int(msg.content["config"]["server-round"])
        content["arrays"] = ArrayRecord(poison(drill, local, received, seed=server_round))
        if mode == "float64-huge":
            content["arrays"] = ArrayRecord({k: Array(np.full(a.shape, 1e300)) for k, a in content["arrays"].items()})
        if mode == "count-inflate":
            content["metrics"]["num-examples"] = int(content["metrics"]["num-examples"] * drill.attack_scale)
    elif kind == MessageType.EVALUATE and mode == "eval-lie" and "metrics" in content.metric_records:
        config = msg.content.config_records.get("config")
        before_training = int(config.get("server-round", 0)) == 0 if config is not None else True
        content["metrics"]["pcc"] = 0.99 if before_training else -0.99  # early stopping would keep round 0
        content["metrics"]["num-examples"] = int(content["metrics"]["num-examples"] * drill.attack_scale)
    elif kind == MessageType.QUERY and mode.startswith("statistics-") and "statistics" in content.array_records:
        arrays = {k: a.numpy().astype(np.float64) for k, a in content["statistics"].items()}
        for prefix in ("train.", "val."):
            if prefix + "sxy" in arrays:
                _forge(arrays, prefix, mode, drill.attack_scale)
        content["statistics"] = ArrayRecord({k: Array(v) for k, v in arrays.items()})


def _forge(arrays: dict[str, np.ndarray], prefix: str, mode: str, scale: float) -> None:
    sxx, sxy = arrays[prefix + "sxx"], arrays[prefix + "sxy"]
    if mode == "statistics-scale":
        for name in ("sx", "sy", "sxx", "sxy", "syy"):
            arrays[prefix + name] = arrays[prefix + name] * scale
    elif mode == "statistics-nan":
        sxy[0, 0] = np.nan
    else:  # crafted: coefficients B of the attacker's choosing (here: every feature drives every point)
        chosen = np.full(sxy.shape, scale / sxy.shape[0])
        arrays[prefix + "sxy"] = sxx @ chosen
        need = (arrays[prefix + "sxy"] ** 2 / np.maximum(np.diag(sxx)[:, None], 1e-12)).max(0)
        arrays[prefix + "syy"] = np.maximum(arrays[prefix + "syy"], need * 1.01)
