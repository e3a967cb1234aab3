"""What the server sets in closed form after the ridge path: class offsets, the noise model, the
samples' share of the DiT's departure from it.

The class offsets and the noise model come from queries to the sites whose statistics are in
the ridge path (``ask_path_sites``: the model goes out with its paths set, each site answers with
one array record, checked before it is used). The departure share comes from the CRPS of each
share's samples that the sites' last evaluation replies carry. Each is installed in the server's model, whose frozen
parameters then travel to the sites once.
"""

from __future__ import annotations

from collections.abc import Callable
from logging import INFO, WARNING

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.common import log
from flwr.serverapp import Grid

from fedneurogen.server.checkpointing import load_parameters, model_parameters
from fedneurogen.server.class_offsets import check_part, solve_class_offsets
from fedneurogen.server.noise_statistics import check_sketch, solve_noise_model
from fedneurogen.server.statistics import StatisticsRefused
from fedneurogen.shared.model import NeuroGenModel
from fedneurogen.shared.model.crossfit import CLASS_RESIDUALS_REQUEST, MIN_CLASS_SUBJECTS
from fedneurogen.shared.model.noise import NOISE_REQUEST
from fedneurogen.shared.workflows.departure import DEPARTURES, SPREAD_KEY, crps_key, set_departure, set_spread


def error_reason(reply: Message) -> str:
    """The last line of an error reply's reason (a traceback's message), at most 300 characters."""
    return (str(reply.error.reason).strip().splitlines() or ["(no reason)"])[-1][:300]


def ask_path_sites(
    grid: Grid, model: NeuroGenModel, ridge: dict, kind: str, class_names: list[str], record: str, timeout: float,
    check: Callable[[str, dict], object],
) -> tuple[dict[str, list], list[dict]]:  # fmt: skip
    """Send ``model`` with a ``kind`` query to the sites whose statistics are in ``ridge``'s paths
    and check each reply's ``record`` with ``check(modality, arrays)`` (which raises
    ``StatisticsRefused``). Returns the checked results per modality (None results left out)
    and the refused sites with why."""
    arrays = ArrayRecord(model_parameters(model))
    request = ConfigRecord({"kind": kind, "class-names": list(class_names)})
    targets = {
        node: modality
        for modality, choice in ridge.items()
        if isinstance(choice, dict) and "nodes" in choice and not choice.get("switched_off")
        for node in choice["nodes"]
    }
    messages = [
        Message(RecordDict({"request": request, "arrays": arrays}), dst_node_id=node, message_type=MessageType.QUERY)
        for node in targets
    ]
    got: dict[str, list] = {m: [] for m in set(targets.values())}
    refused = []
    for reply in grid.send_and_receive(messages, timeout=timeout):
        node = reply.metadata.src_node_id
        if node not in targets:
            continue
        if reply.has_error() or record not in reply.content.array_records:
            reason = f"error reply: {error_reason(reply)}" if reply.has_error() else f"no {record} record"
            refused.append({"node": node, "reason": reason})
            continue
        try:
            checked = check(targets[node], {k: a.numpy() for k, a in reply.content[record].items()})
        except StatisticsRefused as err:
            log(WARNING, "%s: site (node %s) refused: %s", record, node, err)
            refused.append({"node": node, "reason": f"refused {record}: {err}"})
            continue
        if checked is not None:
            got[targets[node]].append(checked)
    return got, refused


def _solved_points(model: NeuroGenModel, modality: str) -> int:
    """The points the modality's ridge path was solved for."""
    return int((model.modality_heads[modality].mean.ridge.keys >= 0).sum())


def choose_class_offsets(
    grid: Grid, model: NeuroGenModel, ridge: dict, class_names: list[str], timeout: float
) -> dict:  # fmt: skip
    """Each class's offset of the point prediction, from the sites' per-class residual sums.

    The solved paths go to the sites whose statistics are in them; each answers its training
    and held-out windows' per-class sums (``ClassResiduals``; exact sums: refused in a DP run,
    no class of fewer subjects than the site's ``min-subjects-per-release``), which
    ``server/class_offsets.py`` checks and sums. Returns per modality what
    ``install_class_offsets`` did, the refused sites and why."""

    def check(modality: str, arrays: dict):
        classes, frames, _ = model.modality_heads[modality].mean.ridge.class_intercept.shape
        shape = (classes - 1, frames, _solved_points(model, modality))
        scale = float(ridge[modality].get("target_mean_square") or 1.0)
        train, val = check_part(arrays, "train", shape, scale), check_part(arrays, "val", shape, scale)
        return None if train is None else (train, val)

    got, refused = ask_path_sites(
        grid, model, ridge, CLASS_RESIDUALS_REQUEST, class_names, "class-residuals", timeout, check
    )  # fmt: skip
    out: dict = {}
    for modality, replies in sorted(got.items()):
        if replies:
            out[modality] = solve_class_offsets(model.modality_heads[modality].mean, replies, MIN_CLASS_SUBJECTS)
            offsets = out[modality]["classes_with_offset"]
            out[modality]["classes_with_offset"] = [class_names[i] for i in offsets if i < len(class_names)]
    if refused:
        out["refused"] = refused
    return out


def choose_noise_model(
    grid: Grid, model: NeuroGenModel, ridge: dict, class_names: list[str], timeout: float
) -> dict:  # fmt: skip
    """The residual's noise model (the diffusion's coordinates), from the sites' sketches.

    The model, paths and class offsets set, goes to the sites whose statistics are in the path;
    each answers a sketch of its training windows' residual covariance (``NoiseSketch``; exact
    sums: refused in a DP run, nothing from fewer subjects than the site's
    ``min-subjects-per-release``), which ``server/noise_statistics.py`` checks and combines.
    Returns per modality what was installed, the refused sites and why."""

    def check(modality: str, arrays: dict):
        head = model.modality_heads[modality]
        scale = float(ridge[modality].get("target_mean_square") or 1.0)
        n_frames, rank = head.noise.temporal.shape[0], head.noise.basis.shape[1]
        return check_sketch(arrays, _solved_points(model, modality), n_frames, rank, scale)

    got, refused = ask_path_sites(grid, model, ridge, NOISE_REQUEST, class_names, "noise", timeout, check)
    out: dict = {
        m: solve_noise_model(model.modality_heads[m], sketches) for m, sketches in sorted(got.items()) if sketches
    }
    if refused:
        out["refused"] = refused
    return out


def choose_departure(model: NeuroGenModel, arrays: ArrayRecord, evaluated: dict) -> tuple[ArrayRecord, dict]:
    """The final model with each fitted noise model's ``departure`` (``shared/workflows/departure.py``)
    set to the share of the least CRPS that the sites' last evaluation replies averaged over their
    held-out windows (the DiT is shared, so every modality takes the same share), and its
    ``spread`` to the root of their averaged whitened mean square where they sent it; the arrays
    unchanged without those scores. Returns the arrays and what was set."""
    if any(crps_key(share) not in evaluated for share in DEPARTURES):
        return arrays, {}
    load_parameters(model, {k: a.numpy() for k, a in arrays.items()})
    scores = {share: float(evaluated[crps_key(share)]) for share in DEPARTURES}
    chosen = {m: set_departure(model, m, scores) for m in model.modality_heads}
    chosen = {m: c for m, c in chosen.items() if c is not None}
    if SPREAD_KEY in evaluated:
        for modality in chosen:
            chosen[modality].update(set_spread(model, modality, float(evaluated[SPREAD_KEY])) or {})
    if not chosen:
        return arrays, {}
    log(INFO, "Samples' share of the DiT's departure from the noise model's Gaussian: %s", chosen)
    return ArrayRecord(model_parameters(model)), chosen
