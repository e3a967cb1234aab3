"""FedNeuroGen ClientApp: a site trains the global model on its own data and evaluates it.

Replies carry weights and aggregate numbers only (examples, losses, PCC, epsilon, the target
modality): never raw data, file paths or subject identifiers.

Each message's run config is validated once (``_guarded``; an invalid one is refused with the
reason) and the handlers and the functions below them read the typed ``RunConfig``.
"""

from __future__ import annotations

import functools
import json
import time
import traceback
from logging import ERROR
from pathlib import Path

import torch
from collections.abc import Sequence

from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod
from flwr.common import log
from flwr.common.constant import ErrorCode

from fedneurogen.client import privacy, site
from fedneurogen.client.refusal import SiteRefusal, check_run, site_run_config
from fedneurogen.shared.records import describe_content
from fedneurogen.shared.ridge import STATISTICS_REQUEST
from fedneurogen.shared.run_config import RunConfig


def _site(context: Context, run: RunConfig) -> site.SiteData:
    """The site's data, once it has checked the preset its operator pinned and its privacy policy."""
    node = context.node_config
    check_run(node, run)
    path = site.data_path(node, run)
    return site.load(
        path, seed=run.seed, max_windows=run.max_windows, cache_dir=run.cache_dir, preprocess=run.preprocess_config()
    )


def _guarded(handler):
    """Validates the message's run config once and calls ``handler(msg, context, run)`` with the
    typed ``RunConfig``; an invalid run config is refused with the reason. A failing site
    replies with the kind of error only: exception messages can name the site's files, so the
    full traceback stays in the site's own log. Every reply, error or not, is described in the
    site's own log of what it sent (``_record_sent``)."""

    @functools.wraps(handler)
    def wrapper(msg: Message, context: Context) -> Message:
        run = None
        try:
            run = site_run_config(context.run_config)
            reply = handler(msg, context, run)
        except SiteRefusal as err:  # a reason the site may tell; the detail (paths) stays here
            log(ERROR, "site refused %s: %s", msg.metadata.message_type, err.detail)
            reply = Message(
                Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=f"site refused: {err.public}"), reply_to=msg
            )
        except Exception as err:  # noqa: BLE001 - every failure becomes an error reply
            log(ERROR, "site failed handling %s:\n%s", msg.metadata.message_type, traceback.format_exc())
            reply = Message(
                Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=f"site raised {type(err).__name__}"),
                reply_to=msg,
            )
        _record_sent(context, msg, reply, run)
        return reply

    return wrapper


SENT_LOG = "sent.jsonl"
_LOCATION_KEYS = ("data-root", "site-state-dir")  # where a site's state folder is


def _record_sent(context: Context, msg: Message, reply: Message, run: RunConfig | None) -> None:
    """Append what this reply holds (array names and shapes, metric keys, config values; no
    numbers) to ``sent.jsonl`` in the site's state folder: the site's own record of what left
    it, in the form of the coordinator's audit log, kept by the site rather than by the party
    it audits. A site whose state folder cannot be found or written logs that and goes on.
    ``run`` is None when the run config was refused: the folder is then found from the keys
    that locate it alone."""
    try:
        if run is None:
            run = site_run_config({k: v for k, v in context.run_config.items() if k in _LOCATION_KEYS})
        node = context.node_config
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
    if data.skipped_runs:  # how many runs the site could not use (which ones: its own log)
        metrics = {**metrics, "skipped-runs": data.skipped_runs}
    content = RecordDict({"metrics": MetricRecord(metrics), "site": ConfigRecord({"modality": data.modality})})
    if arrays is not None:
        content["arrays"] = arrays
    return Message(content=content, reply_to=msg)


@_guarded
def query(msg: Message, context: Context, run: RunConfig) -> Message:
    """The site's target modality and class names, so the server can fix one label index; or,
    asked for ``ridge-statistics``, the sums the server solves the global ridge path from."""
    data = _site(context, run)
    request = msg.content.config_records.get("request")
    if request is not None and request.get("kind") == STATISTICS_REQUEST:
        dp, ledger, ledger_file = _privacy(context, run)
        if dp is None:
            statistics = site.ridge_statistics(data)
        else:
            statistics = site.private_ridge_statistics(data, dp, ledger, ledger_file)
            context.state["privacy"] = ConfigRecord({"ledger": json.dumps(ledger.to_json())})
        arrays = ArrayRecord({k: torch.from_numpy(v) for k, v in statistics.items()})
        info = {
            "modality": data.modality,
            **({"points": list(data.train.target_names)} if data.modality == "fnirs" else {}),
        }
        # whether the sums went through the Gaussian mechanism, and the site's epsilon after it
        privacy_metrics = {
            "private": int(dp is not None),
            "epsilon": float(ledger.epsilon(dp.delta)) if dp is not None else 0.0,
        }
        content = RecordDict(
            {"statistics": arrays, "site": ConfigRecord(info), "metrics": MetricRecord(privacy_metrics)}
        )
        return Message(content=content, reply_to=msg)
    content = RecordDict({"site": ConfigRecord({"modality": data.modality, "classes": data.classes})})
    return Message(content=content, reply_to=msg)


def _privacy(
    context: Context, run: RunConfig
) -> tuple[privacy.DPSettings | None, privacy.PrivacyLedger | None, Path | None]:
    """DP settings and this site's ledger for the run: from context.state between rounds, from
    the site's disk when the run (or the site daemon) was restarted."""
    if not run.dp_enabled:
        return None, None, None
    node = context.node_config
    dp = privacy.dp_settings(run, secure_mode=str(node.get("dp-secure-mode", "false")).lower() in ("1", "true", "yes"))
    state = site.state_dir(node, run, site.data_path(node, run))
    path = privacy.ledger_path(state, run.run_dir)
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


@_guarded
def train(msg: Message, context: Context, run: RunConfig) -> Message:
    """One round of local training from the received global weights; replies with this site's
    parameters (the shared ones and its modality's) and the round's metrics."""
    config = msg.content["config"]
    data = _site(context, run)
    received = msg.content["arrays"].to_torch_state_dict()
    model = site.build_model(run.preset, received)
    train_config, server_round = site.train_config(run), int(config["server-round"])
    # Where this site is in the learning-rate schedule (warm-up), from the round number rather
    # than from state kept in memory, so a resumed run or a restarted site daemon continues it.
    start_step = (
        (server_round - 1) * train_config.epochs * privacy.steps_per_epoch(len(data.train), train_config.batch_size)
    )
    dp, ledger, ledger_file = _privacy(context, run)
    metrics = site.train(
        model,
        data,
        config=train_config,
        epochs=train_config.epochs,
        class_names=list(config.get("class-names", [])),
        seed=run.seed + 1000 * server_round,
        start_step=start_step,
        proximal_mu=float(config.get("proximal-mu", 0.0)),  # sent by FedProx with the round
        # stop early enough to reply before the server stops waiting for this round
        deadline=time.time() + 0.8 * run.round_timeout,
        dp=dp,
        ledger=ledger,
    )
    if dp:
        context.state["privacy"] = ConfigRecord({"ledger": json.dumps(ledger.to_json())})
        privacy.save_ledger(ledger_file, ledger)
    return _reply(msg, data, metrics, ArrayRecord(site.site_parameters(model, data.modality)))


@_guarded
def evaluate(msg: Message, context: Context, run: RunConfig) -> Message:
    """The received global model scored on this site's held-out subjects (withheld under DP)."""
    config = msg.content["config"]
    data = _site(context, run)
    if run.dp_enabled:
        # The held-out loss and PCC are functions of the held-out subjects' recordings that no
        # DP mechanism covers (and a site with few subjects has few held-out ones): withheld.
        return _reply(msg, data, {"num-examples": len(data.val), "withheld": 1})
    model = site.build_model(run.preset, msg.content["arrays"].to_torch_state_dict())
    metrics = site.evaluate(
        model,
        data,
        class_names=list(config.get("class-names", [])),
        batch_size=site.train_config(run).batch_size,
        seed=run.seed,
        pcc_windows=run.eval_pcc_windows,
    )
    return _reply(msg, data, metrics)


def client_app(mods: Sequence[Mod] = ()) -> ClientApp:
    """The site's ClientApp. ``mods`` (Flower mods) wrap every handler: the local simulation
    adds its simulated node settings and drills this way (``fedneurogen/simulation_app.py``)."""
    site_app = ClientApp(mods=list(mods))
    site_app.query()(query)
    site_app.train()(train)
    site_app.evaluate()(evaluate)
    return site_app


app = client_app()
