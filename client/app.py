"""FedNeuroGen ClientApp: a site trains the global model on its own data and evaluates it.

Replies carry weights and aggregate numbers only (examples, losses, PCC, epsilon, the target
modality, class names that are one token: ``shared.records.sendable_label``) and, in a training
reply outside DP, the content hashes of the runs the site trains and validates on
(``site.split_report``): never raw data, file paths or subject identifiers. Under DP the example
count is not the site's window count but ``DP_EXAMPLES`` (the same for every site).

A site's own randomness is never the coordinator's: on a deployed site (its node config names
its ``data-path``) the batches and the DP noise draw from OS entropy, the ``max-windows``
subset from the site's secret key, and its subjects' train/validation split from a keyed hash
of their ids (``privacy.site_key``, ``splits.keyed_split_subjects``); only a simulated node (a partition id, no data path) takes a
``site-seed`` from its node config (``simulations/drills.py`` gives every simulated node one),
so simulations repeat (and splits its subjects by the run's ``seed``, as the benchmarks do).
The run config's ``seed`` and a message's ``server-round`` choose none of a deployed site's. Nor does the run config choose where a deployed site writes: its ``cache-dir`` is ignored
there (the node config's ``cache-dir``, if any, is the cache).

Each message's run config is validated once (``_guarded``; an invalid one is refused with the
reason) and the handlers and the functions below them read the typed ``RunConfig``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from logging import ERROR, INFO
from pathlib import Path

import numpy as np
import torch
from collections.abc import Sequence

from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod
from flwr.common import log
from flwr.common.constant import ErrorCode

from fedneurogen.client import privacy, site
from fedneurogen.client.refusal import SiteRefusal, check_run, exact_statistics_floor, site_run_config
from fedneurogen.shared.transport import EVALUATE_FIRST, EVALUATED_PREFIX, FROZEN_HASH, FROZEN_RECORD, FrozenStore
from fedneurogen.shared.io import write_json_atomic
from fedneurogen.shared.records import describe_content, sendable_label
from fedneurogen.shared.local_path import MIXING_REQUEST
from fedneurogen.shared.model.crossfit import CLASS_RESIDUALS_REQUEST
from fedneurogen.shared.model.noise import NOISE_REQUEST
from fedneurogen.shared.workflows.departure import DEPARTURE_WINDOWS
from fedneurogen.shared.ridge import STATISTICS_REQUEST
from fedneurogen.shared.run_config import RunConfig


SITE_SEED = "site-seed"  # a simulated node's seed of its own randomness (node config)
#: The ``num-examples`` a site sends under DP, in training and evaluation replies alike: a window
#: count is a function of its subjects' recordings that no DP mechanism covers (it tells the
#: coordinator when a subject is added or removed, and how many windows a subject has), so every
#: DP site counts as one and FedAvg weighs the DP sites of a run equally. (0 stays 0: a round the
#: site did not train because its budget is spent.)
DP_EXAMPLES = 1


def split_record_path(ledger_file: Path) -> Path:
    """Where a DP site keeps its own record of a run's split: ``split-<run>.json`` beside the
    run's ledger ``privacy-<run>.json`` (not matching the ledgers' pattern)."""
    return ledger_file.with_name(ledger_file.name.replace("privacy-", "split-", 1))


#: Training metrics a DP site keeps to itself: each is a function of its window count.
DP_WITHHELD = ("steps", "train-seconds", "noise-multiplier")


def _deployed(node: dict) -> bool:
    """A deployed site names its own data (``--node-config data-path=...``); a simulated node
    has a partition id instead (``site.data_path``)."""
    return "data-path" in node


def _site_seed(node: dict) -> int | None:
    """A simulated node's ``site-seed`` (else its partition id, so that `flwr run .` against a
    local simulation repeats too); None on a deployed site (OS entropy, its secret key)."""
    if _deployed(node):
        return None
    if SITE_SEED in node:
        return int(node[SITE_SEED])
    return int(node["partition-id"]) if "partition-id" in node else None


def _site(context: Context, run: RunConfig) -> site.SiteSplit:
    """The site's data, once it has checked the preset its operator pinned, its privacy policy and
    its bounds on the run config (``check_run``)."""
    node = context.node_config
    check_run(node, run)
    path = site.data_path(node, run)
    # a deployed site writes preprocessed patient windows only where its operator said (node config, else
    # its default cache): never where a run config points
    cache_dir = str(node.get("cache-dir", "")) if _deployed(node) else run.cache_dir
    subset_seed = _site_seed(node)
    if run.max_windows and subset_seed is None:  # the subset is the site's: keyed by its secret, per run
        subset_seed = privacy.keyed_seed(site.state_dir(node, run, path), "max-windows", run.run_dir)
    # a deployed site splits its subjects by its own key, the same for every run; a simulated node
    # by the run's seed (reproducible, and the split the centralized benchmarks use)
    split_key = privacy.site_key(site.state_dir(node, run, path), "split") if _deployed(node) else None
    return site.load(
        path,
        seed=run.seed,
        max_windows=run.max_windows,
        cache_dir=cache_dir,
        preprocess=run.preprocess_config(),
        subset_seed=subset_seed,
        split_key=split_key,
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


def _asked(value: object) -> object:
    """A run-config or message-config value as ``sent.jsonl`` records it: in full (a change of one
    character must show), bytes as their length and SHA-256."""
    if isinstance(value, (list, tuple)):
        return [_asked(v) for v in value]
    if isinstance(value, bytes):
        return {"bytes": len(value), "sha256": hashlib.sha256(value).hexdigest()}
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return value if isinstance(value, (str, int, float, bool)) or value is None else repr(value)


def _record_sent(context: Context, msg: Message, reply: Message, run: RunConfig | None) -> None:
    """Append what this reply holds (array names and shapes, metric keys, config values; no
    numbers) to ``sent.jsonl`` in the site's state folder: the site's own record of what left
    it, in the form of the coordinator's audit log, kept by the site rather than by the party
    it audits. Next to it, what was asked: the run config the site acted on (``run_config``, every
    key as received) and the message's config records (``message_config``: the round, class
    names, a statistics request), so the site can see a coordinator that changed seeds, windows or
    preprocessing between messages of one run (``fedneurogen audit .../sent.jsonl``,
    ``server.audit.check_site_log``). A site whose state folder cannot be found or written logs
    that and goes on. ``run`` is None when the run config was refused: the folder is then found
    from the keys that locate it alone."""
    try:
        if run is None:
            run = site_run_config({k: v for k, v in context.run_config.items() if k in _LOCATION_KEYS})
        node = context.node_config
        folder = site.state_dir(node, run, site.data_path(node, run))
        entry = {
            "time": round(time.time(), 3), "run_id": msg.metadata.run_id, "message_type": msg.metadata.message_type,
            "error": {"code": int(reply.error.code), "reason": str(reply.error.reason)} if reply.has_error() else None,
            "records": {} if reply.has_error() else describe_content(reply.content),
            "run_config": {str(k): _asked(v) for k, v in context.run_config.items()},
            "message_config": {
                name: {str(k): _asked(v) for k, v in record.items()}
                for name, record in (msg.content.config_records.items() if msg.has_content() else [])
            },
        }  # fmt: skip
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / SENT_LOG, "a", encoding="utf-8") as out:
            out.write(json.dumps(entry) + "\n")
    except Exception:  # noqa: BLE001 - the log must never stop a reply
        log(ERROR, "could not record the reply in the site's %s:\n%s", SENT_LOG, traceback.format_exc())


def _global_parameters(msg: Message, context: Context, run: RunConfig) -> tuple[dict[str, torch.Tensor], str | None]:
    """The global model's parameters: the trained ones the message carries and the frozen records
    it names by hash (``shared/transport.py``), received now (checked against the hash and kept in
    the site's state folder) or kept from an earlier message; and that hash (None from a server
    that sends everything)."""
    received = msg.content["arrays"].to_torch_state_dict()
    config = msg.content.config_records.get("config")
    digest = config.get(FROZEN_HASH) if config is not None else None
    if digest is None:
        return received, None
    node = context.node_config
    store = FrozenStore(site.state_dir(node, run, site.data_path(node, run)) / "frozen")
    if FROZEN_RECORD in msg.content.array_records:
        frozen = {k: a.numpy() for k, a in msg.content[FROZEN_RECORD].items()}
        try:
            store.save(str(digest), frozen)
        except ValueError as err:  # not what the hash names: never used
            raise SiteRefusal(f"the frozen records received do not match their hash: {err}") from None
    else:
        frozen = store.load(str(digest))
        if frozen is None:  # the server sends them again after this refusal
            raise SiteRefusal(f"frozen records {str(digest)[:12]} are not held here; they must be re-sent")
    return received | {k: torch.from_numpy(np.array(v)) for k, v in frozen.items()}, str(digest)


def _reply(
    msg: Message,
    data: site.SiteSplit,
    metrics: dict,
    arrays: ArrayRecord | None = None,
    split: bool = False,
    frozen_hash: str | None = None,
) -> Message:
    """``split``: with the content hashes of what the site trains and validates on (a training
    reply outside DP; ``site.split_report`` says what they reveal), for the checkpoint's record;
    ``frozen_hash``: the frozen records this site holds (the server sends them only when not)."""
    if data.skipped_runs:  # how many runs the site could not use (which ones: its own log)
        metrics = {**metrics, "skipped-runs": data.skipped_runs}
    info = {"modality": data.modality, **(site.split_report(data) if split else {})}
    if frozen_hash is not None:
        info[FROZEN_HASH] = frozen_hash
    content = RecordDict({"metrics": MetricRecord(metrics), "site": ConfigRecord(info)})
    if arrays is not None:
        content["arrays"] = arrays
    return Message(content=content, reply_to=msg)


@_guarded
def query(msg: Message, context: Context, run: RunConfig) -> Message:
    """The site's target modality and class names, so the server can fix one label index; or,
    asked for ``ridge-statistics``, the sums the server solves the global ridge path (and the
    local path, with source features) from; or, asked for ``mixing-statistics`` with the solved
    paths, the sums that choose their mix on the site's held-out subjects."""
    data = _site(context, run)
    request = msg.content.config_records.get("request")
    exact = {  # exact sums over the training windows against the server's model: never in a DP run, whoever asks
        CLASS_RESIDUALS_REQUEST: ("class-residuals", site.class_residual_statistics, "per-class residual sums"),
        NOISE_REQUEST: ("noise", site.noise_statistics, "the residuals' covariance sketch"),
    }
    if request is not None and request.get("kind") in exact:
        record, statistics, what = exact[request.get("kind")]
        if run.dp_enabled:
            raise SiteRefusal(f"{what}: exact statistics over subjects, not released in a DP run")
        floor = exact_statistics_floor(context.node_config)
        model = site.build_model(run.preset_config(), msg.content["arrays"].to_torch_state_dict())
        names = [str(c) for c in request.get("class-names", [])]
        arrays = ArrayRecord({k: torch.from_numpy(v) for k, v in statistics(data, model, names, floor).items()})
        info = ConfigRecord({"modality": data.modality})
        return Message(content=RecordDict({record: arrays, "site": info}), reply_to=msg)
    if request is not None and request.get("kind") == MIXING_REQUEST:
        # exact sums over the held-out subjects: only where the site allows exact statistics, and
        # never in a DP run (the coordinator could ask a DP site for them all the same)
        if run.dp_enabled:
            raise SiteRefusal("mixing sums are exact sums over held-out subjects: not released in a DP run")
        floor = exact_statistics_floor(context.node_config)
        model = site.build_model(run.preset_config(), msg.content["arrays"].to_torch_state_dict())
        mixing = site.mixing_statistics(data, model, floor)
        arrays = {} if mixing is None else {"mixing": torch.from_numpy(mixing)}
        return Message(content=RecordDict({"mixing": ArrayRecord(arrays)}), reply_to=msg)
    if request is not None and request.get("kind") == STATISTICS_REQUEST:
        local: dict[str, np.ndarray] = {}
        # the release's noise: OS entropy on a deployed site, a simulated node's site-seed (round 0)
        with _privacy(context, run, noise_seed=_site_seed(context.node_config)) as (dp, ledger, ledger_file):
            if dp is None:  # exact sums only where the site's policy allows them, over enough subjects
                floor = exact_statistics_floor(context.node_config)
                statistics = site.ridge_statistics(data, floor)
                local = site.local_statistics(data, floor)
            else:
                prior = run.dp_prior == "simulated"
                if prior and str(context.node_config.get("dp-allow-prior", "true")).lower() in ("0", "false", "no"):
                    raise SiteRefusal(
                        "this site's policy does not allow the public prior (dp-allow-prior = false); "
                        "run with dp-prior = none"
                    )
                statistics = site.private_ridge_statistics(data, dp, ledger, ledger_file, prior)
                # the split stays here (DP protects membership), for `evaluate --site-record`
                if data.own_record is not None:
                    write_json_atomic(split_record_path(ledger_file), data.own_record)
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
        if dp is not None:  # public: what the server's penalty floor needs (private_path.penalty_floor)
            privacy_metrics["noise-scale"] = float(ledger.statistics["noise_multiplier"] * ledger.statistics["clip"])
        content = RecordDict(
            {"statistics": arrays, "site": ConfigRecord(info), "metrics": MetricRecord(privacy_metrics)}
        )
        if local:
            content["local"] = ArrayRecord({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in local.items()})
        return Message(content=content, reply_to=msg)
    classes = [c for c in data.classes if sendable_label(c)]
    if len(classes) < len(data.classes):  # their windows train without a label; the names stay here
        log(ERROR, "class names not sent (not one token): %s", sorted(set(data.classes) - set(classes)))
    content = RecordDict({"site": ConfigRecord({"modality": data.modality, "classes": classes})})
    return Message(content=content, reply_to=msg)


@contextmanager
def _privacy(
    context: Context, run: RunConfig, noise_seed: int | None = None
) -> Iterator[tuple[privacy.DPSettings | None, privacy.PrivacyLedger | None, Path | None]]:
    """DP settings and this site's ledger for the run (from the site's disk), for the length of
    the ``with`` block: the run's whole target reserved first (``privacy.reserve``: checked with
    every other run's against ``dp-lifetime-epsilon``, at the policy's one delta), and the ledger
    held by this message alone (``privacy.run_lock``)."""
    if not run.dp_enabled:
        yield None, None, None
        return
    node = context.node_config
    secure = str(node.get("dp-secure-mode", "false")).lower() in ("1", "true", "yes")
    dp = privacy.dp_settings(run, secure_mode=secure, noise_seed=noise_seed)
    state = site.state_dir(node, run, site.data_path(node, run))
    path = privacy.ledger_path(state, run.run_dir)
    cap = float(node["dp-lifetime-epsilon"]) if "dp-lifetime-epsilon" in node else None
    delta = float(node.get("dp-max-delta", privacy.LIFETIME_DELTA))
    if cap is not None and dp.delta > delta:  # its target would understate its epsilon at the ledger's delta
        raise SiteRefusal(
            f"the run's dp-delta = {dp.delta:g} is above the delta {delta:g} this site states its lifetime limit at"
        )
    with privacy.run_lock(path):
        yield dp, privacy.reserve(state, path, dp, delta, cap), path


@_guarded
def train(msg: Message, context: Context, run: RunConfig) -> Message:
    """One round of local training from the received global weights; replies with this site's
    parameters (the shared ones and its modality's) and the round's metrics."""
    config = msg.content["config"]
    data = _site(context, run)
    received, frozen_hash = _global_parameters(msg, context, run)
    model = site.build_model(run.preset_config(), received)
    train_config, server_round = site.train_config(run), int(config["server-round"])
    evaluated = {}
    if int(config.get(EVALUATE_FIRST, 0)) and not run.dp_enabled:  # folded evaluation: the received model first
        scores = _scores(model, data, config, run)
        evaluated = {f"{EVALUATED_PREFIX}{k}": v for k, v in scores.items()}
    # Where this site is in the learning-rate schedule (warm-up), from the round number rather
    # than from state kept in memory, so a resumed run or a restarted site daemon continues it.
    start_step = (
        (server_round - 1) * train_config.epochs * privacy.steps_per_epoch(len(data.train), train_config.batch_size)
    )
    # batches and DP noise: OS entropy on a deployed site; a simulated node's site-seed, per round
    site_seed = _site_seed(context.node_config)
    seed = None if site_seed is None else site_seed + 1000 * server_round
    with _privacy(context, run, noise_seed=seed) as (dp, ledger, ledger_file):
        metrics = site.train(
            model,
            data,
            config=train_config,
            epochs=train_config.epochs,
            class_names=list(config.get("class-names", [])),
            seed=seed,
            start_step=start_step,
            proximal_mu=float(config.get("proximal-mu", 0.0)),  # sent by FedProx with the round
            # stop early enough to reply before the server stops waiting for this round
            deadline=time.time() + 0.8 * run.round_timeout,
            dp=dp,
            ledger=ledger,
        )
        if dp:
            privacy.save_ledger(ledger_file, ledger)
            if data.own_record is not None:  # what it trained on stays here (evaluate --site-record)
                write_json_atomic(split_record_path(ledger_file), data.own_record)
            if server_round >= run.num_server_rounds:  # the run's last round: it is finished
                privacy.release(ledger_file.parent, ledger_file)
            if metrics["num-examples"] > 0:  # not the window count (DP_EXAMPLES)
                metrics["num-examples"] = DP_EXAMPLES
            # nor what follows from it: the steps (epochs x batches), the time they took, and the
            # noise calibrated to the sample rate; the site's log keeps them
            log(INFO, "DP round %d: %s", server_round, {k: metrics.get(k) for k in DP_WITHHELD})
            metrics = {k: v for k, v in metrics.items() if k not in DP_WITHHELD}
    frozen = set(received) - set(msg.content["arrays"].keys())  # what came as frozen records
    trained = ArrayRecord(site.site_parameters(model, data.modality, frozen))
    return _reply(msg, data, metrics | evaluated, trained, split=not dp, frozen_hash=frozen_hash)


@_guarded
def evaluate(msg: Message, context: Context, run: RunConfig) -> Message:
    """The received global model scored on this site's held-out subjects (withheld under DP)."""
    config = msg.content["config"]
    data = _site(context, run)
    received, frozen_hash = _global_parameters(msg, context, run)
    if run.dp_enabled:
        # The held-out loss and PCC are functions of the held-out subjects' recordings that no
        # DP mechanism covers (and a site with few subjects has few held-out ones): withheld.
        # Nor is the window count sent (DP_EXAMPLES).
        return _reply(msg, data, {"num-examples": DP_EXAMPLES, "withheld": 1}, frozen_hash=frozen_hash)
    model = site.build_model(run.preset_config(), received)
    return _reply(msg, data, _scores(model, data, config, run), frozen_hash=frozen_hash)


def _scores(model, data: site.SiteSplit, config: ConfigRecord, run: RunConfig) -> dict:
    """The model's scores on this site's held-out subjects (an evaluate reply's metrics); the
    departure shares' CRPS where the message asks for them (the run's last evaluation)."""
    return site.evaluate(
        model,
        data,
        class_names=list(config.get("class-names", [])),
        batch_size=site.train_config(run).batch_size,
        seed=run.seed,
        pcc_windows=run.eval_pcc_windows,
        departure_windows=min(int(config.get(DEPARTURE_WINDOWS, 0)), run.departure_windows),
    )


def client_app(mods: Sequence[Mod] = ()) -> ClientApp:
    """The site's ClientApp. ``mods`` (Flower mods) wrap every handler: the local simulation
    adds its simulated node settings and drills this way (``fedneurogen/simulation_app.py``)."""
    site_app = ClientApp(mods=list(mods))
    site_app.query()(query)
    site_app.train()(train)
    site_app.evaluate()(evaluate)
    return site_app


app = client_app()
