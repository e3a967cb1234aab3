"""Everything the server keeps under ``run-dir``, written atomically every round.

    run-dir/rounds/round-0003/   model.safetensors + config.json (a normal model checkpoint),
                                 strategy.safetensors (server optimizer state), history.json,
                                 MANIFEST.sha256 (every file's SHA-256, checked on resume) and
                                 MANIFEST.sha256.sig (signed by the key of the user running the
                                 server, shared/signing.py: resume accepts its own or a trusted key)
    run-dir/latest.json          {"round": 3, "checkpoint": "rounds/round-0003", ...}
    run-dir/checkpoint           symlink to the latest round, for `synthesize`/`evaluate`
    run-dir/history.json         per-round, per-site (anonymous node ids) and aggregated metrics
    run-dir/metrics.png          the metrics by round
    run-dir/tensorboard/         the same as TensorBoard scalars

A round folder is written under a temporary name and renamed into place, then ``latest.json``
is replaced: a crash at any point leaves the previous round resumable. ``resume`` reads the
round folder that ``latest.json`` names, whose history matches its weights.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from logging import WARNING
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.common import log
from safetensors.numpy import load_file, save_file

from fedneurogen.shared.errors import ConfigError
from fedneurogen.shared.splits import (
    HASH_LENGTH,
    HASH_SCHEME,
    MAX_REPORTED_RUNS,
    PROVENANCE_KEY,
    REPORT_KEYS,
    seen_record,
)
from fedneurogen.shared.io import write_json_atomic
from fedneurogen.shared.manifest import MANIFEST_FILE, read_manifest, write_manifest
from fedneurogen.shared.model import EMA, NeuroGenModel, load_checkpoint_into, save_checkpoint
from fedneurogen.shared.signing import HOME_ENV, UntrustedSignature, key_dir, signature_path

STRATEGY_FILE = "strategy.safetensors"
HISTORY_FILE = "history.json"


def clean(value: Any) -> Any:
    """JSON-safe copy: NaN/inf become None, numpy scalars plain numbers."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, (np.generic,)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class RunStore:
    def __init__(self, run_dir: str | Path, keep: int = 3):
        self.dir = Path(run_dir).expanduser()
        self.keep = max(1, keep)

    def latest(self) -> dict | None:
        path = self.dir / "latest.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    def save_round(
        self,
        server_round: int,
        model: NeuroGenModel,
        strategy_state: dict[str, np.ndarray],
        history: list[dict],
        extra: dict[str, Any],
    ) -> Path:
        """Checkpoint the global model, strategy state and history of ``server_round``.

        The checkpoint's EMA weights (what ``synthesize``/``evaluate`` sample from) are the
        global weights themselves: the federated average already is the model's average."""
        rounds = self.dir / "rounds"
        rounds.mkdir(parents=True, exist_ok=True)
        self._remove_leftovers()
        name = f"round-{server_round:04d}"
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=rounds))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700; a round folder is as readable as any output
        try:
            ema = EMA(model, decay=0.0, warmup=False)
            ema.num_updates = server_round
            save_checkpoint(tmp, model, ema=ema, extra=extra)
            if strategy_state:
                save_file(
                    {k: np.array(v, order="C") for k, v in strategy_state.items()}, str(tmp / STRATEGY_FILE)
                )  # keeps 0-d arrays 0-d
            write_json_atomic(tmp / HISTORY_FILE, clean(history))
            # one manifest over the whole round, signed: resume checks the strategy state and history too
            known = read_manifest(tmp) or {}
            own = {MANIFEST_FILE, signature_path(tmp / MANIFEST_FILE).name}
            write_manifest(tmp, sorted(p.name for p in tmp.iterdir() if p.is_file() and p.name not in own), known=known)
            sync_to_disk(tmp)  # the round's files reach the disk before latest.json can name them
            final = rounds / name
            if final.exists():  # left by a run that crashed before naming it in latest.json
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        sync_to_disk(rounds)  # the rename itself
        write_json_atomic(self.dir / "latest.json", {"round": server_round, "checkpoint": f"rounds/{name}"})
        self._link_latest(f"rounds/{name}")
        write_json_atomic(self.dir / HISTORY_FILE, clean(history))
        for old in sorted(rounds.glob("round-*"))[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def _remove_leftovers(self) -> None:
        """Temporary folders, files and links of saves that were killed (never named by
        ``latest.json``; one server writes a run-dir, so none of them is in use)."""
        for stale in (self.dir / "rounds").glob(".round-*"):
            shutil.rmtree(stale, ignore_errors=True)
        for pattern in (".checkpoint.*", ".latest.*.tmp.json", f".{Path(HISTORY_FILE).stem}.*.tmp.json"):
            for stale in self.dir.glob(pattern):
                stale.unlink(missing_ok=True)

    def _link_latest(self, target: str) -> None:
        link = self.dir / "checkpoint"
        tmp = self.dir / f".checkpoint.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        os.symlink(target, tmp)
        os.replace(tmp, link)

    def resume(self, model: NeuroGenModel) -> tuple[int, dict[str, np.ndarray], list[dict], dict[str, Any]]:
        """Load the latest round into ``model``; returns its round, strategy state, history and
        checkpoint config."""
        latest = self.latest()
        if latest is None:
            raise ConfigError(f"nothing to resume in {self.dir}: no latest.json")
        folder = self.dir / str(latest.get("checkpoint", ""))
        rounds = (self.dir / "rounds").resolve()
        if folder.resolve().parent != rounds:  # it names a round folder of this run, nothing else
            raise ConfigError(
                f"{self.dir / 'latest.json'} names {latest.get('checkpoint')!r}, not a round folder under {self.dir / 'rounds'}"
            )
        try:  # never trust_unsigned: the server resumes only what it (or a key its user trusts) signed
            meta = load_checkpoint_into(model, folder, trust_unsigned=False)
        except UntrustedSignature as err:
            raise UntrustedSignature(
                folder,
                err.problem,
                f"the server resumes only rounds signed by the key of the user it runs as ({key_dir()}, "
                f"from ${HOME_ENV}) or a key that user trusts: run it as the user (and {HOME_ENV}) that wrote "
                f"{self.dir}, or start a new run-dir",
            ) from err
        listed = read_manifest(folder) or {}  # verified and signed above: what resume reads must be in it
        unlisted = [f for f in (STRATEGY_FILE, HISTORY_FILE) if (folder / f).is_file() and f not in listed]
        if unlisted:
            raise ConfigError(f"checkpoint {folder}: {', '.join(unlisted)} not listed in its {MANIFEST_FILE}")
        state = load_file(str(folder / STRATEGY_FILE)) if (folder / STRATEGY_FILE).is_file() else {}
        history = json.loads((folder / HISTORY_FILE).read_text(encoding="utf-8"))
        return int(latest["round"]), state, history, meta

    def write_reports(self, history: list[dict]) -> None:
        """TensorBoard scalars of the newest round (and of the round before's evaluation when it
        came folded into the newest round's training replies) and the plot of all rounds."""
        from torch.utils.tensorboard import SummaryWriter

        if history:
            scalars = [(stage, history[-1]) for stage in ("train", "evaluate")]
            if len(history) > 1 and (history[-2].get("evaluate") or {}).get("folded"):
                scalars.append(("evaluate", history[-2]))
            with SummaryWriter(log_dir=str(self.dir / "tensorboard")) as writer:
                for stage, entry in scalars:
                    for key, value in (entry.get(stage, {}).get("aggregate") or {}).items():
                        if isinstance(value, (int, float)) and value is not None and math.isfinite(value):
                            writer.add_scalar(f"{stage}/{key}", value, entry["round"])
                    for node, metrics in (entry.get(stage, {}).get("sites") or {}).items():
                        for key in ("loss", "pcc", "epsilon"):
                            value = metrics.get(key)
                            if isinstance(value, (int, float)) and math.isfinite(value):
                                writer.add_scalar(f"{stage}-sites/{key}/node-{node}", value, entry["round"])
        plot_history(history, self.dir / "metrics.png")


_RUN_HASH = re.compile(f"[0-9a-f]{{{HASH_LENGTH}}}")


def parse_split_report(config: Mapping[str, Any]) -> dict[str, list[str]] | None:
    """A site's report of the runs it trains and validates on (``client/site.py``
    ``split_report``), checked: the server trusts no site, so anything but two lists of at most
    ``MAX_REPORTED_RUNS`` distinct 64-digit lower-case hex strings, no run in both, is refused.

    Parameters
    ----------
    config : Mapping
        The reply's ``site`` config record.

    Returns
    -------
    dict of str to list of str or None
        ``{"train": [...], "val": [...]}``, sorted; None when the reply has no report (a site
        under DP sends none).

    Raises
    ------
    ValueError
        A malformed report; the message names the key and the problem, never the content.
    """
    present = [key for key in REPORT_KEYS.values() if key in config]
    if not present:
        return None
    if len(present) != len(REPORT_KEYS):
        raise ValueError(f"sent {present[0]} alone (expected {' and '.join(REPORT_KEYS.values())})")
    out: dict[str, list[str]] = {}
    for part, key in REPORT_KEYS.items():
        values = config[key]
        if not isinstance(values, (list, tuple)):
            raise ValueError(f"{key} is a {type(values).__name__}, not a list of run hashes")
        if len(values) > MAX_REPORTED_RUNS:
            raise ValueError(f"{key} holds {len(values)} run hashes, more than the {MAX_REPORTED_RUNS} allowed")
        for i, value in enumerate(values):
            if not isinstance(value, str) or not _RUN_HASH.fullmatch(value):
                raise ValueError(f"{key} item {i} is not a {HASH_LENGTH}-digit lower-case hex hash")
        out[part] = sorted(set(values))
    if set(out["train"]) & set(out["val"]):
        raise ValueError("a run hash is in both the training and the validation split")
    return out


class SiteSplits:
    """What each site trained and validated on, by content, for the checkpoint's provenance
    (``splits.PROVENANCE_KEY``), keyed by the sites' anonymous node ids.

    A site's latest valid report (``parse_split_report``) stands for it. A site that trained
    (sent examples) without a valid report is recorded as ``withheld`` with the reason: its
    subjects are unknown, so ``evaluate`` refuses the checkpoint unless told ``--allow-seen``.

    Parameters
    ----------
    provenance : dict, optional
        A resumed checkpoint's provenance: its record is carried on.
    """

    def __init__(self, provenance: dict[str, Any] | None = None):
        self.sites: dict[str, dict[str, Any]] = {}
        record = (provenance or {}).get(PROVENANCE_KEY)
        if isinstance(record, dict) and record.get("scheme") == HASH_SCHEME:
            for entry in record.get("sites") or []:
                if isinstance(entry, dict) and "node" in entry:
                    self.sites[str(entry["node"])] = entry

    def add_released(self, nodes: Iterable[Any]) -> None:
        """Record sites whose data entered the model through a DP release of statistics: they
        send no split (membership is what DP protects), so they are ``withheld`` unless a
        report of theirs is already held; each keeps its own record (``evaluate --site-record``).

        Parameters
        ----------
        nodes : iterable
            The node ids whose releases were used.
        """
        for node in map(str, nodes):
            if "train" not in self.sites.get(node, {}):
                self.sites[node] = {
                    "node": node,
                    "withheld": f"site node {node} released DP statistics and keeps its split (evaluate --site-record)",
                }

    def add(self, replies: Iterable[Any]) -> None:
        """Take the reports of a round's training replies.

        Parameters
        ----------
        replies : iterable of flwr Message
            The round's training replies (errors are skipped).
        """
        for reply in replies:
            if reply.has_error():
                continue
            node = str(reply.metadata.src_node_id)
            metrics = reply.content.metric_records.get("metrics")
            trained = metrics is not None and float(metrics.get("num-examples", 0) or 0) > 0
            try:
                report = parse_split_report(reply.content.config_records.get("site") or {})
            except ValueError as err:
                log(WARNING, "site (node %s) sent an invalid split report: %s", node, err)
                self.sites[node] = {"node": node, "withheld": f"site node {node} sent an invalid split report ({err})"}
                continue
            if report is not None:
                self.sites[node] = {"node": node, **report}
            elif trained and "train" not in self.sites.get(node, {}):
                self.sites[node] = {
                    "node": node,
                    "withheld": f"site node {node} trained without reporting its subjects (a site under DP withholds them)",
                }

    def record(self) -> dict[str, Any]:
        """The record for the checkpoint's provenance.

        Returns
        -------
        dict
            ``splits.seen_record`` of every site's entry, by node id.
        """
        return seen_record([self.sites[node] for node in sorted(self.sites)])


def sync_to_disk(folder: Path) -> None:
    """fsync every file in ``folder`` and the folder itself, so that a power loss after this
    point cannot leave a round that ``latest.json`` names with missing or partial files
    (renames alone only guarantee consistency against crashes of this process)."""
    for path in [*sorted(p for p in folder.iterdir() if p.is_file()), folder]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def plot_history(history: list[dict], path: Path) -> None:
    """Train loss, held-out loss, PCC and epsilon by round: the aggregate bold, each site thin."""
    panels = [
        ("train", "loss", "train loss"),
        ("evaluate", "loss", "held-out loss"),
        ("evaluate", "pcc", "held-out PCC"),
        ("train", "epsilon", "epsilon (cumulative)"),
    ]
    series = []
    for stage, key, title in panels:
        per_site: dict[str, list[tuple[int, float]]] = {}
        agg = []
        for entry in history:
            part = entry.get(stage) or {}
            value = (part.get("aggregate") or {}).get(key)
            if value is not None:
                agg.append((entry["round"], value))
            for node, metrics in (part.get("sites") or {}).items():
                if metrics.get(key) is not None:
                    per_site.setdefault(node, []).append((entry["round"], metrics[key]))
        series.append((title, per_site, agg))
    from fedneurogen.shared.workflows import plots  # matplotlib: not in every ServerApp's start-up

    plots.rounds_figure(series, path)


def model_parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What travels between server and sites: the trainable parameters (buffers such as the
    fixed fMRI patch layout are built identically on both sides)."""
    return {name: p.detach().cpu() for name, p in model.named_parameters()}


def load_parameters(model: torch.nn.Module, parameters: dict[str, np.ndarray | torch.Tensor]) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.as_tensor(np.asarray(parameters[name])).to(p.device, p.dtype))
