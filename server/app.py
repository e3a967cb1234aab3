"""FedNeuroGen ServerApp: rounds of site training and evaluation, checkpointed every round.

1. ask the sites for their class names (once; a resumed run reads them from its checkpoint),
   so that every site maps labels to the same index, and for the sufficient statistics of the
   point prediction's ridge path, which it solves exactly (``solve_global_ridge``; under DP the
   sites release them through the Gaussian mechanism, ``client/privacy.py``);
2. each round: send the global weights (the trained part; the frozen ridge path once per site,
   ``shared/transport.py``), aggregate per modality (``strategy.py``), score the model on the
   sites' held-out subjects (in the next round's training replies, the last round's in an
   evaluate round), keep the point prediction's residual of the best round
   (``early_stopping.py``), then write checkpoint, history and plots (``checkpointing.py``).
A site that fails or does not answer in ``round-timeout`` is named in the log and the history;
the run goes on with the others. A round with fewer valid training replies than
``min-train-replies`` ends the run cleanly (``end_run``): the reason in the log and the history, the last good
checkpoint kept.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from logging import ERROR, INFO, WARNING
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.common import log
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy.strategy_utils import sample_nodes

from fedneurogen.server.audit import AUDIT_FILE, AuditedGrid
from fedneurogen.server.checkpointing import (
    HISTORY_FILE,
    RunStore,
    SiteSplits,
    clean,
    load_parameters,
    model_parameters,
)
from fedneurogen.server.closed_form import choose_class_offsets, choose_departure, choose_noise_model, error_reason
from fedneurogen.server.early_stopping import ResidualEarlyStopping
from fedneurogen.server.local_statistics import check_mixing, solve_local
from fedneurogen.server.pacing import PacedGrid, receive_each, simulation_in_flight
from fedneurogen.server.statistics import (
    MAX_SHARE_RATIO,
    SiteStatistics,
    SpilledStatistics,
    StatisticsRefused,
    cap_shares,
    read_reply,
    screen_sites,
)
from fedneurogen.server.strategy import ModalityStrategy, make_strategy
from fedneurogen.shared.transport import EVALUATE_FIRST, content_hash, frozen_names
from fedneurogen.shared.workflows.departure import DEPARTURE_WINDOWS
from fedneurogen.shared.config import PreprocessConfig
from fedneurogen.shared.errors import ConfigError
from fedneurogen.shared.io import write_json_atomic
from fedneurogen.shared.model import NeuroGenModel
from fedneurogen.shared.records import sendable_label
from fedneurogen.shared.local_path import MIXING_REQUEST
from fedneurogen.shared.model.mean import set_mixing, solve_private_path, solve_ridge_path
from fedneurogen.shared.private_path import PrivateReduction, private_reduction, release_noise_std
from fedneurogen.shared.ridge import STATISTICS_REQUEST, sum_statistics
from fedneurogen.shared.run_config import RunConfig, validate_run_config
from fedneurogen.shared.splits import PROVENANCE_KEY

app = ServerApp()


#: Why a site named by the leave-one-site-out check is left out (history, round 1's ridge_path).
INCONSISTENT_REASON = (
    "inconsistent statistics: alone they move the pooled ridge solution more than 3x the median site's "
    "(leave-one-site-out); left out (drop-inconsistent-sites)"
)
MAX_CLASSES_PER_SITE = 64  # the server trusts no site: a few short tokens (shared/records.py LABEL) each


def site_classes(grid: Grid, min_nodes: int, timeout: float, num_classes: int) -> list[str]:
    """The sorted union of the sites' class names (names only, no counts), at most
    ``num_classes`` of them (the model's label embeddings)."""
    _, nodes = sample_nodes(grid, min_nodes, min_nodes)
    messages = [Message(RecordDict(), dst_node_id=node, message_type=MessageType.QUERY) for node in nodes]
    names: set[str] = set()
    for reply in grid.send_and_receive(messages, timeout=timeout):
        node = reply.metadata.src_node_id
        if reply.has_error():
            log(WARNING, "query: site (node %s) failed: %s", node, reply.error.reason)
            continue
        site = reply.content.config_records.get("site")
        sent = site.get("classes") if site is not None else None
        if not isinstance(sent, list) or len(sent) > MAX_CLASSES_PER_SITE:
            log(
                WARNING,
                "query: site (node %s) refused: its classes are not a list of at most %d",
                node,
                MAX_CLASSES_PER_SITE,
            )
            continue
        kept = {c for c in sent if sendable_label(c)}
        if len(kept) < len(set(sent)):
            log(
                WARNING,
                "query: site (node %s): %d class name(s) that are not short names left out",
                node,
                len(set(sent)) - len(kept),
            )
        names.update(kept)
    classes = sorted(names)
    if len(classes) > num_classes:
        log(
            WARNING,
            "%d classes but the model has %d label embeddings; %s get the null label",
            len(classes),
            num_classes,
            classes[num_classes:],
        )
    return classes[:num_classes]


def read_statistics_reply(
    reply: Message, model: NeuroGenModel, private: PrivateReduction | None = None
) -> SiteStatistics:
    """A site's statistics reply, checked (``server/statistics.py``): records present and of the
    right kinds, arrays of the model's shapes (under DP, ``private``'s regression), finite and
    consistent. Raises ``StatisticsRefused``."""
    content = reply.content
    if "statistics" not in content.array_records or "site" not in content.config_records:
        raise StatisticsRefused("malformed reply: no statistics or no site record")
    metrics = content.metric_records.get("metrics")
    flag = metrics.get("private", 0) if metrics is not None else 0
    if not isinstance(flag, int | float) or isinstance(flag, bool):
        raise StatisticsRefused(f"malformed reply: private is {flag!r}")
    width, n_points = model.modality_heads["fmri"].mean.ridge.coef.shape
    if private is not None:
        width, n_points = private.n_inputs, private.n_outputs(n_points)
    arrays = {k: a.numpy() for k, a in content["statistics"].items()}
    site = dict(content["site"].items())
    return read_reply(arrays, site, bool(flag), width, n_points, noise_scale=release_noise_scale(reply))


def release_noise_scale(reply: Message) -> float:
    """The noise multiplier x clip a DP site says its release used (0 when absent or malformed)."""
    metrics = reply.content.metric_records.get("metrics")
    value = metrics.get("noise-scale", 0.0) if metrics is not None else 0.0
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    return float(value) if ok else 0.0


def solve_global_ridge(
    grid: Grid,
    model: NeuroGenModel,
    min_nodes: int,
    timeout: float,
    drop_inconsistent: bool = True,
    private_prior: bool | None = None,
) -> dict:
    """The ridge path of every modality, solved from the sum of the sites' statistics: exactly
    the regression on their pooled training subjects, its penalty, band weights and rank chosen
    on their pooled held-out subjects (under DP: of the sites' noisy releases, and switched off
    where the noise leaves it no better than the mean). Installed in ``model``; returns the choices
    per modality and, under ``refused``, each site whose reply was not used and why. A site whose
    statistics alone move the pooled solution (leave-one-site-out) is named in
    ``inconsistent_sites`` and, with ``drop_inconsistent`` (run-config ``drop-inconsistent-sites``),
    left out of the sum and named under ``refused`` too.

    Under DP (``private_prior`` not None) the sites release the private path's small regression
    (``shared.private_path``; adapting the public prior when ``private_prior``), solved with the
    penalty never below the noise: the largest noise any site states sets the floor, so a site
    can raise it (more shrinkage toward the prior) but not lower it alone."""
    _, nodes = sample_nodes(grid, min_nodes, min_nodes)
    width, n_fmri = model.modality_heads["fmri"].mean.ridge.coef.shape
    reductions = (
        {}
        if private_prior is None
        else {
            "fmri": private_reduction("fmri", width, n_fmri, private_prior),
            "fnirs": private_reduction("fnirs", width, 0, False),  # the prior is fMRI's only
        }
    )
    with tempfile.TemporaryDirectory(prefix="fedneurogen-statistics-") as spill:
        gathered = gather_statistics(grid, nodes, model, reductions, timeout, Path(spill))
        return solve_from_statistics(grid, model, gathered, reductions, drop_inconsistent, timeout)


@dataclass
class GatheredStatistics:
    """The sites' checked statistics replies (``gather_statistics``).

    Attributes
    ----------
    sites : dict of str to list of (int, str, SiteStatistics)
        Per modality: (node, content hash of its training statistics, its checked reply).
    refused : list of dict
        Each site whose reply was not used, and the public reason.
    noise_scale : float
        The largest noise multiplier x clip a DP site states.
    local_arrays : dict of int to dict
        Per node, its local-path statistics (source features; exact releases only).
    """

    sites: dict[str, list[tuple[int, str, SiteStatistics]]]
    refused: list[dict]
    noise_scale: float
    local_arrays: dict[int, dict]


def gather_statistics(
    grid: Grid, nodes: list[int], model: NeuroGenModel, reductions: dict, timeout: float, spill: Path
) -> GatheredStatistics:
    """Ask ``nodes`` for their ridge statistics and check each reply as it arrives; the
    matrices of those that pass go to files in ``spill`` (``SpilledStatistics``)."""
    request = ConfigRecord({"kind": STATISTICS_REQUEST})
    messages = [
        Message(RecordDict({"request": request}), dst_node_id=node, message_type=MessageType.QUERY) for node in nodes
    ]
    gathered = GatheredStatistics({}, [], 0.0, {})
    for reply in receive_each(grid, messages, timeout, simulation_in_flight(grid)):
        node = reply.metadata.src_node_id
        if reply.has_error():
            log(WARNING, "ridge statistics: site (node %s) failed: %s", node, reply.error.reason)
            gathered.refused.append({"node": node, "reason": f"error reply: {error_reason(reply)}"})
            continue
        try:  # the server trusts no site: every reply is checked before it is summed
            modality = str(reply.content.config_records["site"].get("modality", "")) if reductions else ""
            got = read_statistics_reply(reply, model, reductions.get(modality))
        except (StatisticsRefused, KeyError) as err:
            log(WARNING, "ridge statistics: site (node %s) refused: %s", node, err)
            gathered.refused.append({"node": node, "reason": f"refused statistics: {err}"})
            continue
        digest = content_hash(got.train.as_arrays())
        got.train = SpilledStatistics(got.train, spill)
        got.val = None if got.val is None else SpilledStatistics(got.val, spill)
        gathered.sites.setdefault(got.modality, []).append((node, digest, got))
        gathered.noise_scale = max(gathered.noise_scale, release_noise_scale(reply))
        if "local" in reply.content.array_records and not got.private:
            gathered.local_arrays[node] = {k: a.numpy() for k, a in reply.content["local"].items()}
    return gathered


def solve_from_statistics(
    grid: Grid,
    model: NeuroGenModel,
    gathered: GatheredStatistics,
    reductions: dict,
    drop_inconsistent: bool,
    timeout: float,
) -> dict:
    """``solve_global_ridge``'s solution from the gathered replies (its docstring says what)."""
    sites, refused, noise_scale, local_arrays = (
        gathered.sites,
        gathered.refused,
        gathered.noise_scale,
        gathered.local_arrays,
    )
    n_fmri = model.modality_heads["fmri"].mean.ridge.coef.shape[1]
    chosen = {}
    for modality, replies in sorted(sites.items()):
        # in an order of their content, not of arrival: without held-out subjects the penalty is
        # chosen on alternate sites (``ridge.fit_ridge_selected``), and a run must repeat
        replies = [(node, got) for node, _, got in sorted(replies, key=lambda reply: reply[1])]
        nodes = [node for node, _ in replies]
        points = [got.points for _, got in replies]
        if (
            len({(got.train.sx.shape, got.train.sy.shape) for _, got in replies}) > 1
            or len({tuple(p or ()) for p in points}) > 1
        ):
            log(WARNING, "ridge path: the %s sites have different target points; it is left unfitted", modality)
            continue
        # no site outweighs the others; one that alone moves the solution is named (and dropped)
        screened = screen_sites(
            [got.train for _, got in replies], any(got.private for _, got in replies), drop_inconsistent
        )
        for i in screened.capped:
            log(
                WARNING,
                "ridge statistics: site (node %s) claimed far more rows than the others; weighed down",
                nodes[i],
            )
        outliers = [nodes[i] for i in screened.inconsistent]
        for node in outliers:
            log(
                WARNING,
                "ridge statistics: site (node %s) alone moves the pooled solution (leave-one-site-out)%s",
                node,
                "; left out (drop-inconsistent-sites)" if drop_inconsistent else "",
            )
            if drop_inconsistent:
                refused.append({"node": node, "reason": INCONSISTENT_REASON})
        weighed_down = [nodes[i] for i in screened.capped]
        factors = [part.n / replies[i][1].train.n for i, part in zip(screened.kept, screened.parts)]
        replies, trains = [replies[i] for i in screened.kept], screened.parts
        vals, _ = cap_shares([got.val for _, got in replies if got.val is not None])  # they choose the penalty
        val = sum_statistics(vals) if vals else None
        if not reductions:  # exact statistics
            chosen[modality] = solve_ridge_path(model, modality, trains, val, points[0])
            # the scale the class residuals are checked against: Σy² and n alone (no matrix read back)
            rows, squares = sum(part.n for part in trains), sum(float(part.syy.sum()) for part in trains)
            chosen[modality]["target_mean_square"] = squares / (rows * len(trains[0].syy))
            if model.modality_heads[modality].mean.local is not None:
                local_sites = [
                    (node, local_arrays.get(node, {}), got.train.n, got.val.n if got.val is not None else None, factor)
                    for (node, got), factor in zip(replies, factors)
                ]
                local = solve_local(model, modality, local_sites, chosen[modality])
                for item in local.get("refused", []):
                    log(
                        WARNING,
                        "local path: site (node %s) %s; left out of the local path",
                        item["node"],
                        item["reason"],
                    )
                chosen[modality]["local_path"] = local
        else:  # independent noise from every site in the sum
            noise_std = release_noise_std(noise_scale, 1.0, "sxx") * math.sqrt(len(trains))
            n_points = n_fmri if modality == "fmri" else len(points[0] or ())
            reduction = reductions[modality]
            chosen[modality] = solve_private_path(
                model, modality, trains, val, reduction, noise_std, n_points, points[0]
            )
        chosen[modality].update(
            sites=len(replies),
            private_sites=sum(got.private for _, got in replies),
            weighed_down=weighed_down,
            nodes=[node for node, _ in replies],  # whose statistics are in the path
            inconsistent_sites=outliers,
            dropped_sites=outliers if drop_inconsistent else [],
        )
    mixing_nodes = {  # modality -> (the nodes in its paths, its target points)
        modality: (choice["nodes"], n_fmri if modality == "fmri" else len(sites[modality][0][2].points or ()))
        for modality, choice in chosen.items()
        if "local_path" in choice and choice["local_path"].get("fitted", True)
    }
    if mixing_nodes:
        choose_local_share(grid, model, mixing_nodes, chosen, timeout)
    if refused:
        chosen["refused"] = refused
    return chosen


def choose_local_share(
    grid: Grid, model: NeuroGenModel, nodes: dict[str, tuple[list[int], int]], chosen: dict, timeout: float
) -> None:
    """The local path's share of each modality's linear prediction, chosen on the sites'
    held-out subjects: the solved paths go to the sites whose statistics are in them, each
    answers the mixing sums of its held-out subjects (``server/local_statistics.py`` checks
    them; no site's weighs more than ``MAX_SHARE_RATIO`` times the median's), and the share with
    the smallest summed error is set. Without answers the share stays as ``solve_local_path``
    left it (the path of smaller validation error)."""
    arrays = ArrayRecord(model_parameters(model))
    request = ConfigRecord({"kind": MIXING_REQUEST})
    targets = {node: modality for modality, (ns, _) in nodes.items() for node in ns}
    messages = [
        Message(RecordDict({"request": request, "arrays": arrays}), dst_node_id=node, message_type=MessageType.QUERY)
        for node in targets
    ]
    sums: dict[str, list] = {m: [] for m in nodes}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        node = reply.metadata.src_node_id
        if reply.has_error() or node not in targets or "mixing" not in reply.content.array_records:
            continue
        record = reply.content["mixing"]
        if "mixing" not in record:
            continue  # no held-out subjects there
        modality = targets[node]
        try:
            got = check_mixing(record["mixing"].numpy(), nodes[modality][1])
        except StatisticsRefused as err:
            log(WARNING, "mixing sums: site (node %s) refused: %s", node, err)
            continue
        sums[modality].append(got)
    for modality, parts in sums.items():
        if parts:
            yy = np.array([p[0].sum() for p in parts])
            cap = MAX_SHARE_RATIO * float(np.median(yy))
            scaled = [p * min(1.0, cap / max(float(v), 1e-12)) for p, v in zip(parts, yy)]
            chosen[modality]["local_path"]["weight"] = set_mixing(model, modality, np.sum(scaled, axis=0))
            chosen[modality]["local_path"]["mixing_sites"] = len(parts)


def checkpoint_extra(
    run: RunConfig, class_names: list[str], server_round: int, sites_count: int, split_subjects: dict | None = None
) -> dict:
    """What a round checkpoint says about itself (``synthesize``/``evaluate`` read it);
    ``split_subjects``: what the sites trained and validated on, by content (``SiteSplits.record``)."""
    extra = {
        "class_names": class_names,
        "preprocess": run.preprocess_config().model_dump(mode="json"),  # what every site's loader applies
        "provenance": {
            "trained_by": "federated",
            "rounds": server_round,
            "num_server_rounds": run.num_server_rounds,
            "strategy": run.strategy,
            "sites_count": sites_count,
            "local_epochs": run.local_epochs,
            "dp": {"target_epsilon": run.dp_target_epsilon, "delta": run.dp_delta} if run.dp_enabled else None,
            # A simulated site splits subjects with split_subjects(seed), a deployed one by a keyed
            # hash under its own key; which subjects (by content) is in split_subjects, which is
            # what `evaluate` goes by.
            "seed": run.seed,
            "split_seed": run.seed,
            "val_fraction": 0.15,
            "test_fraction": 0.2,
        },
    }
    if split_subjects is not None:
        extra["provenance"][PROVENANCE_KEY] = split_subjects
    return extra


def fold_evaluation(
    strategy: ModalityStrategy,
    replies: list[Message],
    scored_round: int,
    scored: ArrayRecord,
    stopping: ResidualEarlyStopping,
    history: list[dict],
) -> None:
    """The held-out scores in a round's training replies, of the model of ``scored_round`` (0:
    before training): offered to early stopping, and put in that round's history entry (marked
    ``folded``), as its evaluate round's report would have been."""
    evaluated = strategy.aggregate_folded_evaluate(scored_round, replies) or {}
    stopping.offer(
        scored_round, evaluated.get("pcc"), scored, strategy.report.get(MessageType.EVALUATE, {}).get("sites")
    )
    report = {**strategy.report.get(MessageType.EVALUATE, {}), "folded": True}
    if history and history[-1]["round"] == scored_round:
        history[-1]["evaluate"] = report
    if scored_round == 0:
        log(INFO, "Held-out PCC of the point prediction before training: %s", evaluated.get("pcc"))
    else:
        log(INFO, "Round %d evaluate (in round %d's training replies): %s", scored_round, scored_round + 1, evaluated)


def end_run(
    store: RunStore, history: list[dict], server_round: int, reason: str, train: dict, started: float, grid: AuditedGrid
) -> None:
    """End the run cleanly after a round with too few valid replies: the round goes into the
    history with the reason (``ended``), no checkpoint of it is written (the last good one stays
    the run's checkpoint), and the log says why the run ended and what it keeps.

    Parameters
    ----------
    store : RunStore
        The run's folder.
    history : list of dict
        The rounds so far; this round is appended.
    server_round : int
        The round that ends the run.
    reason : str
        Why (``ModalityStrategy.shortfall``).
    train : dict
        The round's training report: every site's outcome.
    started : float
        When the round started (``time.time()``).
    grid : AuditedGrid
        The grid, for the round's bytes.
    """
    history.append(
        {"round": server_round, "seconds": time.time() - started, "bytes": grid.round_bytes(), "train": train,
         "ended": reason}
    )  # fmt: skip
    write_json_atomic(store.dir / HISTORY_FILE, clean(history))
    latest = store.latest()
    kept = (
        f"the last good checkpoint is round {latest['round']} ({store.dir / 'checkpoint'})"
        if latest is not None
        else "no checkpoint was written (no round had enough valid replies)"
    )
    log(ERROR, "Run ended at round %d: %s; %s", server_round, reason, kept)


def resume_or_start(
    run: RunConfig, store: RunStore, model: NeuroGenModel, strategy: ModalityStrategy
) -> tuple[int, list[dict], list[str] | None, SiteSplits]:
    """The first round to run, the history so far, the class names (None: not yet known) and the
    sites' splits: from the store's last round when ``resume`` (its weights loaded into ``model``,
    its state into ``strategy``), else a fresh start. A run-dir that holds a run without
    ``resume``, or a resume with other preprocessing, is a ``ConfigError``."""
    if store.latest() is None:
        return 1, [], None, SiteSplits()
    if not run.resume:
        raise ConfigError(
            f"{store.dir} already holds a run (round {store.latest()['round']}); set resume=true to continue it or choose another run-dir"
        )
    done, state, history, meta = store.resume(model)
    changed = run.preprocess_config().changed_fields(PreprocessConfig.from_stored(meta.get("preprocess")))
    if changed:  # the sites would load other windows than the rounds so far were trained on
        raise ConfigError(
            f"resume: {store.dir} was trained with other preprocessing ({', '.join(changed)}); "
            "resume with the run config's preprocess as it was"
        )
    strategy.load_state_dict(state)
    log(INFO, "Resuming %s from round %d of %d", store.dir, done, run.num_server_rounds)
    return done + 1, history, list(meta.get("class_names") or []), SiteSplits(meta.get("provenance"))


def solve_paths(grid: Grid, run: RunConfig, model: NeuroGenModel, class_names: list[str], splits: SiteSplits) -> dict:
    """Before round 1: the ridge path from the sites' statistics and, from exact sums only, the
    class offsets and the residual's noise model; installed in ``model``. Under DP the sites whose releases are in the path are
    recorded in ``splits`` as released (their data are in the model, their splits stay with them).
    Returns the choices, for round 1's history."""
    ridge = solve_global_ridge(
        grid,
        model,
        run.min_available_nodes,
        run.round_timeout,
        run.drop_inconsistent_sites,
        private_prior=(run.dp_prior == "simulated") if run.dp_enabled else None,
    )
    log(INFO, "Ridge path from the sites' summed statistics: %s", ridge)
    if not run.dp_enabled and class_names:  # exact sums only: under DP the class stays with the diffusion
        ridge["class_offsets"] = choose_class_offsets(grid, model, ridge, class_names, run.round_timeout)
        log(INFO, "Class offsets from the sites' per-class residual sums: %s", ridge["class_offsets"])
        ridge["noise_model"] = choose_noise_model(grid, model, ridge, class_names, run.round_timeout)
        log(INFO, "Noise model from the sites' residual sketches: %s", ridge["noise_model"])
    if run.dp_enabled:
        splits.add_released(n for v in ridge.values() if isinstance(v, dict) for n in v.get("nodes", []))
    return ridge


def checkpoint_round(
    store: RunStore,
    run: RunConfig,
    model: NeuroGenModel,
    strategy: ModalityStrategy,
    arrays: ArrayRecord,
    history: list[dict],
    class_names: list[str],
    splits: SiteSplits,
) -> Path:
    """Save the round that ``history`` ends with (the global ``arrays`` in ``model``, the strategy's
    state, the history, the provenance) and write its reports; returns the round's folder."""
    server_round = history[-1]["round"]
    load_parameters(model, {k: a.numpy() for k, a in arrays.items()})
    contributed = sum(1 for m in history[-1]["train"].get("sites", {}).values() if m.get("num-examples", 0) > 0)
    # under DP's default the sites' data enter through the private ridge path only (no DP-SGD)
    paths = [v for v in (history[0].get("ridge_path") or {}).values() if isinstance(v, dict)]
    contributed = max(contributed, sum(int(v.get("sites", 0)) for v in paths))
    extra = checkpoint_extra(run, class_names, server_round, contributed, splits.record())
    folder = store.save_round(server_round, model, strategy.state_dict(), history, extra)
    store.write_reports(history)
    return folder


@app.main()
def main(grid: Grid, context: Context) -> None:
    try:  # once: everything below reads the typed config
        run = validate_run_config(context.run_config)  # a bad key stops the run here, named with its allowed values
    except ConfigError as err:
        log(ERROR, "%s", err)
        raise
    num_rounds, timeout = run.num_server_rounds, run.round_timeout
    store = RunStore(run.run_dir, keep=run.keep_checkpoints)
    # every received message described in run-dir/audit/received.jsonl (audit=false: not logged);
    # array bytes sent and received are counted per round either way
    grid = AuditedGrid(grid, store.dir / AUDIT_FILE if run.audit else None)
    grid = PacedGrid(grid)  # a simulation's messages go a few at a time (server/pacing.py)
    torch.manual_seed(run.seed)  # the initial global weights
    model = NeuroGenModel(run.preset_config(), device="cpu")
    strategy = make_strategy(run, frozen=frozen_names(model))  # the ridge path: sent once per site

    first, history, class_names, splits = resume_or_start(run, store, model, strategy)
    if class_names is None and run.classes.strip():  # the consortium's label list
        class_names = sorted({c.strip() for c in run.classes.split(",") if c.strip()})[: model.config.num_classes]
    if class_names is None:  # else the union of the sites' own classes
        class_names = site_classes(grid, run.min_available_nodes, timeout, model.config.num_classes)
    log(INFO, "Classes: %s", class_names)
    ridge = solve_paths(grid, run, model, class_names, splits) if first == 1 else None  # (resumed: in the checkpoint)

    arrays = ArrayRecord(model_parameters(model))
    strategy.summary()
    evaluating = run.fraction_evaluate > 0 and run.eval_pcc_windows > 0
    # The model a round starts from is scored in that round's training replies (one message per
    # site per round); the last round's model in an evaluate round of its own. Not under DP (the
    # scores are withheld), nor where the evaluate sample is meant to be larger than the training one.
    folded = evaluating and not run.dp_enabled and run.fraction_evaluate <= run.fraction_train
    stopping = ResidualEarlyStopping(run.early_stopping_patience if evaluating else 0)
    if stopping.active and first > 1:  # resumed: the residual it resumes from is the best known
        stopping.resume(
            history[-1].get("early_stopping") or {},
            (history[-1].get("evaluate", {}).get("aggregate") or {}).get("pcc"),
            arrays,
        )
    elif stopping.active and not folded:  # the score to beat: the ridge path alone, before training
        grid.begin_round(0)
        replies = grid.send_and_receive(
            strategy.configure_evaluate(0, arrays, ConfigRecord({"class-names": class_names}), grid), timeout=timeout
        )
        stopping.offer(
            0,
            (strategy.aggregate_evaluate(0, replies) or {}).get("pcc"),
            arrays,
            strategy.report.get(MessageType.EVALUATE, {}).get("sites"),
        )
        log(INFO, "Held-out PCC of the point prediction before training: %s", stopping.best_score)
    for server_round in range(first, num_rounds + 1):
        log(INFO, "[ROUND %d/%d]", server_round, num_rounds)
        started = time.time()
        grid.begin_round(server_round)
        # round 1 scores the ridge path alone (the score to beat) only for early stopping
        fold = folded and (server_round > 1 or (stopping.active and first == 1))
        train_config = ConfigRecord({"class-names": class_names, **({EVALUATE_FIRST: 1} if fold else {})})
        started_from = arrays
        replies = list(
            grid.send_and_receive(strategy.configure_train(server_round, arrays, train_config, grid), timeout=timeout)
        )
        splits.add(replies)
        if fold:
            fold_evaluation(strategy, replies, server_round - 1, started_from, stopping, history)
        new_arrays, _ = strategy.aggregate_train(server_round, replies)
        ended = strategy.shortfall()
        if ended:  # too few valid replies: the run ends here, nothing of this round checkpointed
            end_run(store, history, server_round, ended, strategy.report.get(MessageType.TRAIN, {}), started, grid)
            return
        if new_arrays is None:
            log(WARNING, "Round %d: no usable site update; the global model is unchanged", server_round)
        else:
            arrays = new_arrays
        if stopping.stopped:  # the residual stays at its best round; the rest trains on
            arrays = stopping.best_residual(arrays)
        evaluation = {}
        if not folded or server_round == num_rounds:  # else: scored in the next round's training replies
            last = server_round == num_rounds and not run.dp_enabled  # and the departure shares scored
            # the strategy asks a few of the sites to score the departure shares (DEPARTURE_SITES)
            departure = {DEPARTURE_WINDOWS: run.departure_windows} if last and run.departure_windows else {}
            eval_config = ConfigRecord({"class-names": class_names, **departure})
            replies = grid.send_and_receive(
                strategy.configure_evaluate(server_round, arrays, eval_config, grid), timeout=timeout
            )
            evaluated = strategy.aggregate_evaluate(server_round, replies) or {}
            stopping.offer(
                server_round, evaluated.get("pcc"), arrays, strategy.report.get(MessageType.EVALUATE, {}).get("sites")
            )
            evaluation = strategy.report.get(MessageType.EVALUATE, {})
        if stopping.active and (stopping.stopped or server_round == num_rounds):
            arrays = stopping.best_residual(arrays)  # what is checkpointed and sent on
        if server_round == num_rounds and evaluation:  # the samples' share of the DiT's departure
            arrays, evaluation["departure"] = choose_departure(model, arrays, evaluation.get("aggregate") or {})

        report = strategy.report
        history.append(
            {
                "round": server_round,
                "seconds": time.time() - started,
                "bytes": grid.round_bytes(),  # array bytes sent to and received from the sites
                "train": report.get(MessageType.TRAIN, {}),
                "evaluate": evaluation,
                **({"early_stopping": stopping.summary()} if stopping.active else {}),
                **({"ridge_path": ridge} if ridge is not None and server_round == 1 else {}),
            }
        )
        for stage in ("train", "evaluate"):
            log(INFO, "Round %d %s: %s", server_round, stage, history[-1][stage].get("aggregate"))
        folder = checkpoint_round(store, run, model, strategy, arrays, history, class_names, splits)
        log(INFO, "Round %d checkpoint: %s", server_round, folder)
    log(INFO, "Done: %s (history %s)", Path(store.dir) / "checkpoint", store.dir / "history.json")
