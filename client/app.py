"""FedNeuroGen ClientApp: a site trains the global model on its own data and evaluates it.

Replies carry weights and aggregate numbers only (examples, losses, PCC, epsilon, the target
modality): never raw data, file paths or subject identifiers.
"""

from __future__ import annotations

import functools
import json
import time
import traceback
from logging import ERROR
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common import log
from flwr.common.constant import ErrorCode

from fedneurogen.client import drills, privacy, site
from fedneurogen.client.refusal import SiteRefusal, check_run, simulated_node_config
from fedneurogen.shared.records import describe_content
from fedneurogen.shared.ridge import STATISTICS_REQUEST
from fedneurogen.shared.training import TRAIN_PRESETS

app = ClientApp()


def _node_config(context: Context) -> dict:
    """This site's node config (a simulated node's gets the run config's ``sim-node-config``)."""
    return simulated_node_config(context.node_config, context.run_config)


def _site(context: Context) -> site.SiteData:
    """The site's data, once it has checked the run config and the preset its operator pinned."""
    run, node = context.run_config, _node_config(context)
    check_run(node, run)
    path = site.data_path(node, run)
    return site.load(path, seed=int(run["seed"]), max_windows=int(run.get("max-windows", 0)), cache_dir=str(run.get("cache-dir", "")))


def _guarded(handler):
    """A failing site replies with the kind of error only: exception messages can name the
    site's files, so the full traceback stays in the site's own log. Every reply, error or not,
    is described in the site's own log of what it sent (``_record_sent``)."""

    @functools.wraps(handler)
    def wrapper(msg: Message, context: Context) -> Message:
        try:
            reply = handler(msg, context)
        except SiteRefusal as err:  # a reason the site may tell; the detail (paths) stays here
            log(ERROR, "site refused %s: %s", msg.metadata.message_type, err.detail)
            reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=f"site refused: {err.public}"), reply_to=msg)
        except Exception as err:  # noqa: BLE001 - every failure becomes an error reply
            log(ERROR, "site failed handling %s:\n%s", msg.metadata.message_type, traceback.format_exc())
            reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=f"site raised {type(err).__name__}"), reply_to=msg)
        _record_sent(context, msg, reply)
        return reply

    return wrapper


SENT_LOG = "sent.jsonl"


def _record_sent(context: Context, msg: Message, reply: Message) -> None:
    """Append what this reply holds (array names and shapes, metric keys, config values; no
    numbers) to ``sent.jsonl`` in the site's state folder: the site's own record of what left
    it, in the form of the coordinator's audit log, kept by the site rather than by the party
    it audits. A site whose state folder cannot be found or written logs that and goes on."""
    try:
        node, run = _node_config(context), context.run_config
        folder = site.state_dir(node, run, site.data_path(node, run))
        entry = {
            "time": round(time.time(), 3), "run_id": msg.metadata.run_id, "message_type": msg.metadata.message_type,
            "error": {"code": int(reply.error.code), "reason": str(reply.error.reason)} if reply.has_error() else None,
            "records": {} if reply.has_error() else describe_content(reply.content),
        }  # fmt: skip
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / SENT_LOG, "a", encoding="utf-8") as out:
            out.write(json.dumps(entry) + "\n")
    except Exception:  # noqa: BLE001 - the log must never stop a reply
        log(ERROR, "could not record the reply in the site's %s:\n%s", SENT_LOG, traceback.format_exc())


def _reply(msg: Message, data: site.SiteData, metrics: dict, arrays: ArrayRecord | None = None) -> Message:
    content = RecordDict({"metrics": MetricRecord(metrics), "site": ConfigRecord({"modality": data.modality})})
    if arrays is not None:
        content["arrays"] = arrays
    return Message(content=content, reply_to=msg)


@app.query()
@_guarded
def query(msg: Message, context: Context) -> Message:
    """The site's target modality and class names, so the server can fix one label index; or,
    asked for ``ridge-statistics``, the sums the server solves the global ridge path from."""
    data = _site(context)
    request = msg.content.config_records.get("request")
    if request is not None and request.get("kind") == STATISTICS_REQUEST:
        dp, ledger, ledger_file = _privacy(context)
        if dp is None:
            statistics = site.ridge_statistics(data)
        else:
            statistics = site.private_ridge_statistics(data, dp, ledger, ledger_file)
            context.state["privacy"] = ConfigRecord({"ledger": json.dumps(ledger.to_json())})
        arrays = ArrayRecord({k: torch.from_numpy(v) for k, v in statistics.items()})
        info = {"modality": data.modality, **({"points": list(data.train.target_names)} if data.modality == "fnirs" else {})}
        # whether the sums went through the Gaussian mechanism, and the site's epsilon after it
        privacy_metrics = {"private": int(dp is not None), "epsilon": float(ledger.epsilon(dp.delta)) if dp is not None else 0.0}
        content = RecordDict({"statistics": arrays, "site": ConfigRecord(info), "metrics": MetricRecord(privacy_metrics)})
        return Message(content=content, reply_to=msg)
    content = RecordDict({"site": ConfigRecord({"modality": data.modality, "classes": data.classes})})
    return Message(content=content, reply_to=msg)


def _privacy(context: Context) -> tuple[privacy.DPSettings | None, privacy.PrivacyLedger | None, Path | None]:
    """DP settings and this site's ledger for the run: from context.state between rounds, from
    the site's disk when the run (or the site daemon) was restarted."""
    run = context.run_config
    if not bool(run.get("dp-enabled", False)):
        return None, None, None
    dp = privacy.DPSettings(
        target_epsilon=float(run["dp-target-epsilon"]), delta=float(run["dp-delta"]), max_grad_norm=float(run["dp-max-grad-norm"]),
        planned_rounds=int(run.get("dp-rounds", 0)) or int(run["num-server-rounds"]), accountant=str(run.get("dp-accountant", "rdp")),
        statistics_share=float(run.get("dp-statistics-share", 0.1)), statistics_clip=float(run.get("dp-statistics-clip", 600.0)),
        secure_mode=str(_node_config(context).get("dp-secure-mode", "false")).lower() in ("1", "true", "yes"),
    )
    node = _node_config(context)
    state = site.state_dir(node, run, site.data_path(node, run))
    path = privacy.ledger_path(state, str(run["run-dir"]))
    if "privacy" in context.state:
        ledger = privacy.PrivacyLedger.from_json(json.loads(context.state["privacy"]["ledger"]))
    else:
        ledger = privacy.load_ledger(path, dp.accountant)
    if "dp-lifetime-epsilon" in node and not ledger.history:  # before the run spends anything (once per run)
        cap, spent = float(node["dp-lifetime-epsilon"]), privacy.other_runs_epsilon(state, path, dp.delta)
        if spent + dp.target_epsilon > cap:
            raise SiteRefusal(
                f"privacy budget: this site's data has spent epsilon {spent:.2f} in earlier runs; with this run's "
                f"{dp.target_epsilon:g} it would exceed the site's lifetime limit {cap:g}"
            )
    return dp, ledger, path


@app.train()
@_guarded
def train(msg: Message, context: Context) -> Message:
    drills.check_fault(context.run_config, context.node_config)
    run, config = context.run_config, msg.content["config"]
    data = _site(context)
    received = msg.content["arrays"].to_torch_state_dict()
    model = site.build_model(str(run["preset"]), received)
    train_config, epochs, server_round = TRAIN_PRESETS[str(run["preset"])], int(run["local-epochs"]), int(config["server-round"])
    # Where this site is in the learning-rate schedule (warm-up), from the round number rather
    # than from state kept in memory, so a resumed run or a restarted site daemon continues it.
    start_step = (server_round - 1) * epochs * privacy.steps_per_epoch(len(data.train), train_config.batch_size)
    dp, ledger, ledger_file = _privacy(context)
    timeout = float(run.get("round-timeout", 0))
    metrics = site.train(
        model, data, config=train_config, epochs=epochs,
        class_names=list(config.get("class-names", [])), seed=int(run["seed"]) + 1000 * server_round,
        start_step=start_step, proximal_mu=float(config.get("proximal-mu", 0.0)),
        # stop early enough to reply before the server stops waiting for this round
        deadline=time.time() + 0.8 * timeout if timeout > 0 else None, dp=dp, ledger=ledger,
    )
    if dp:
        context.state["privacy"] = ConfigRecord({"ledger": json.dumps(ledger.to_json())})
        privacy.save_ledger(ledger_file, ledger)
    update = drills.poison(run, context.node_config, site.site_parameters(model, data.modality), received, seed=server_round)
    return _reply(msg, data, metrics, ArrayRecord(update))


@app.evaluate()
@_guarded
def evaluate(msg: Message, context: Context) -> Message:
    drills.check_fault(context.run_config, context.node_config)
    run, config = context.run_config, msg.content["config"]
    data = _site(context)
    if bool(run.get("dp-enabled", False)):
        # The held-out loss and PCC are functions of the held-out subjects' recordings that no
        # DP mechanism covers (and a site with few subjects has few held-out ones): withheld.
        return _reply(msg, data, {"num-examples": len(data.val), "withheld": 1})
    model = site.build_model(str(run["preset"]), msg.content["arrays"].to_torch_state_dict())
    metrics = site.evaluate(
        model, data, class_names=list(config.get("class-names", [])), batch_size=TRAIN_PRESETS[str(run["preset"])].batch_size,
        seed=int(run["seed"]), pcc_windows=int(run.get("eval-pcc-windows", 0)),
    )
    return _reply(msg, data, metrics)
