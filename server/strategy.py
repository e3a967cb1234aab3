"""Per-modality aggregation around Flower's strategies.

The model has a shared backbone and one head per target modality (``parameter_modality``). A
site sends the backbone and its own head. Each part is aggregated by its own instance of the
chosen Flower strategy (FedAvg, FedProx, FedAdam, FedMedian, FedTrimmedAvg, Krum, MultiKrum or
Bulyan): the
backbone over every site, a head over the sites that have that modality only, so an EEG-fNIRS
site never dilutes the fMRI unpatcher. Separate instances keep separate server-optimizer state
(FedAdam's moments) per part.

The wrapper also keeps the round's per-site report (anonymous node ids only) and names the
sites that failed: an error reply, a malformed reply, or no reply before the round timeout.
It trusts no update: non-finite values, a missing, unknown, misshapen or non-float32 parameter,
a metric that is not one number, and an example count above the site's first-round declaration
or ``max-examples-per-site`` make a reply unusable (FedAvg would otherwise move to the weights
of a site claiming 10^9 examples). With three or more sites, a count above ``MAX_COUNT_RATIO``
times the round's median counts as that much (training and evaluation alike, so one site owns
neither the average nor the held-out mean ``pcc-mean``; early stopping's held-out ``pcc`` is the
median over the sites, which one site moves only within the others' range), and an update longer than
``max-update-norm`` or, by default, ``MAX_NORM_RATIO`` times the round's median update is scaled
down to it (norm bounding, as Flower's server-side fixed clipping does, without the noise) and
named in the report. An aggregate that is not finite is never sent or saved.

Only what changes travels (``shared/transport.py``): the messages carry the trained parameters and
the frozen records' hash, the frozen records only to a site that has not said it holds that hash
(its replies name the hash it holds; an error reply makes the server send them again), and a
reply holding a frozen record is refused: no site rewrites the ridge path.

The departure shares are scored by at most ``DEPARTURE_SITES`` of the evaluated sites (a seeded
choice; ``_ask_departure``), and only the sites asked contribute those metrics to the aggregate.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from logging import INFO, WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.exception import AggregationError
from flwr.serverapp.strategy import (
    Bulyan,
    FedAdam,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    Krum,
    MultiKrum,
    Strategy,
)
from flwr.serverapp.strategy.fedopt import FedOpt

from fedneurogen.shared.transport import EVALUATED_PREFIX, FROZEN_HASH, FROZEN_RECORD, content_hash
from fedneurogen.shared.model import MODALITIES, parameter_modality
from fedneurogen.shared.run_config import RunConfig
from fedneurogen.shared.workflows.departure import DEPARTURE_METRICS, DEPARTURE_WINDOWS

BACKBONE = "backbone"
PARTS = (BACKBONE, *MODALITIES)
#: A site's example count above this many times the round's median counts as that much.
MAX_COUNT_RATIO = 4.0
#: Without max-update-norm, an update longer than this many times the round's median is scaled to it.
MAX_NORM_RATIO = 3.0
#: The most sites asked to score the departure shares in the last evaluation (each on its
#: ``departure-windows`` held-out windows: 512 in all by default). A site's scoring has a fixed
#: cost of about a second on a CPU beyond its windows; choosing one of three shares needs no more
#: sites at 256 than at 32.
DEPARTURE_SITES = 32
STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan")


def part_of(name: str) -> str:
    return parameter_modality(name) or BACKBONE


def aggregate_metrics(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """Example-weighted means; the privacy spent is the largest of any site, not a mean."""
    weights = np.array([float(r["metrics"][weight_key]) for r in records])
    total = weights.sum()
    out = MetricRecord({weight_key: int(total)})
    for key in common_keys(records):
        if key in (weight_key, "skipped-runs"):  # skipped runs are a per-site count (in the history), not a mean
            continue
        values = np.array([float(r["metrics"][key]) for r in records])
        if key in ("epsilon", "budget_exhausted"):
            out[key] = float(values.max())
        elif total > 0:
            finite = np.isfinite(values)
            out[key] = (
                float((values[finite] * weights[finite]).sum() / max(weights[finite].sum(), 1e-12))
                if finite.any()
                else 0.0
            )
    return out


def common_keys(records: list[RecordDict]) -> list[str]:
    """Metric names every reply has (a site sending more or fewer must not stop the round)."""
    keys = [set(r["metrics"].keys()) for r in records]
    return sorted(set.intersection(*keys)) if keys else []


def make_base_strategy(run: RunConfig) -> Callable[[], FedAvg]:
    """A factory of the run's Flower strategy (``run.strategy``) with its sampling settings."""
    common = dict(
        fraction_train=run.fraction_train,
        fraction_evaluate=run.fraction_evaluate,
        min_train_nodes=run.min_train_nodes,
        min_evaluate_nodes=run.min_evaluate_nodes,
        min_available_nodes=run.min_available_nodes,
        train_metrics_aggr_fn=aggregate_metrics,
        evaluate_metrics_aggr_fn=aggregate_metrics,
    )
    malicious = run.krum_malicious
    specific: dict[str, Callable[[], FedAvg]] = {
        "fedavg": lambda: FedAvg(**common),
        "fedprox": lambda: FedProx(**common, proximal_mu=run.proximal_mu),
        "fedadam": lambda: FedAdam(**common, eta=run.server_lr, tau=run.server_tau),
        "fedmedian": lambda: FedMedian(**common),
        "fedtrimmedavg": lambda: FedTrimmedAvg(**common, beta=run.trim_beta),
        "krum": lambda: Krum(**common, num_malicious_nodes=malicious),
        "multikrum": lambda: MultiKrum(**common, num_malicious_nodes=malicious, num_nodes_to_select=run.krum_select),
        # Bulyan needs 4 x krum-malicious + 3 updates; a part with fewer keeps its global weights
        "bulyan": lambda: Bulyan(**common, num_malicious_nodes=malicious),
    }
    if run.strategy not in specific:
        raise ValueError(f"unknown strategy {run.strategy!r}; expected one of {', '.join(STRATEGIES)}")
    return specific[run.strategy]


def make_strategy(run: RunConfig, frozen: Iterable[str] = ()) -> ModalityStrategy:
    """The run's per-modality strategy: ``make_base_strategy`` per part, and the reply checks
    (``min-train-replies``, ``max-examples-per-site``, ``max-update-norm``); ``frozen``: the
    parameters training never changes (``shared.frozen.frozen_names``), sent once per site."""
    return ModalityStrategy(
        make_base_strategy(run),
        frozen=frozen,
        min_replies=run.min_train_replies,
        max_examples=run.max_examples_per_site,
        max_update_norm=run.max_update_norm,
        # a DP site counts 1 (DP_EXAMPLES in client/app.py): sites weigh alike, and a larger claim
        # is a site trying to outweigh the others (with two sites no median cap catches it)
        max_examples_per_reply=1 if run.dp_enabled else 0,
        seed=run.seed,
    )


class ModalityStrategy(Strategy):
    """Runs one instance of a Flower strategy per model part (backbone, fMRI head, fNIRS head)."""

    def __init__(
        self,
        factory: Callable[[], FedAvg],
        min_replies: int = 1,
        *,
        frozen: Iterable[str] = (),
        max_examples: int = 0,
        max_update_norm: float = 0.0,
        max_examples_per_reply: int = 0,
        departure_sites: int = DEPARTURE_SITES,
        seed: int = 0,
    ):
        self.parts = {part: factory() for part in PARTS}
        self.frozen = frozenset(frozen)  # parameters never trained: sent once, never taken from a reply
        self.held: dict[int, str] = {}  # node -> the frozen records' hash it says it holds
        self.min_replies = max(1, min_replies)  # fewer usable updates than this: keep the global model
        self.max_examples = max_examples  # 0: no fixed cap
        self.max_update_norm = max_update_norm  # 0: no bound
        self.max_examples_per_reply = max_examples_per_reply  # 0: no bound (under DP: 1)
        self.declared: dict[int, float] = {}  # node -> training examples claimed in its first usable update
        self.sampler = self.parts[BACKBONE]  # samples nodes and builds the messages
        self.current: ArrayRecord = ArrayRecord()
        self.sent: dict[str, set[int]] = {}
        self.report: dict[str, dict] = {}  # per message type: sites, failures, aggregate
        self.warned_skips: set[int] = set()  # sites whose skipped runs the log has named
        self.departure_sites, self.seed = max(1, departure_sites), seed
        self.departure_asked: set[int] = set()  # the nodes asked to score the departure shares

    def summary(self) -> None:
        log(INFO, "\t├──> Per-modality aggregation: backbone over all sites, heads over their modality's sites")
        self.sampler.summary()

    # -- sending --------------------------------------------------------------------------------

    def _remember(self, kind: str, messages: Iterable[Message]) -> list[Message]:
        messages = list(messages)
        self.sent[kind] = {m.metadata.dst_node_id for m in messages}
        return messages

    def _split_frozen(self, arrays: ArrayRecord, config: ConfigRecord) -> tuple[ArrayRecord, ArrayRecord | None]:
        """The trained parameters, and the frozen records (None without any), their hash put in ``config``."""
        if not self.frozen:
            return arrays, None
        trained = ArrayRecord({k: a for k, a in arrays.items() if k not in self.frozen})
        frozen = ArrayRecord({k: a for k, a in arrays.items() if k in self.frozen})
        config[FROZEN_HASH] = content_hash({k: a.numpy() for k, a in frozen.items()})
        return trained, frozen

    def _with_frozen(self, messages: list[Message], frozen: ArrayRecord | None, digest: str) -> list[Message]:
        """The messages, each to a site that does not hold ``digest`` with the frozen records added."""
        if frozen is None:
            return messages
        out = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            if self.held.get(node) != digest:  # content is shared by the messages: a copy for this one
                content = RecordDict({**dict(msg.content.items()), FROZEN_RECORD: frozen})
                msg = Message(content=content, dst_node_id=node, message_type=msg.metadata.message_type)
            out.append(msg)
        return out

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.current = arrays
        trained, frozen = self._split_frozen(arrays, config)
        messages = self.sampler.configure_train(server_round, trained, config, grid)
        messages = self._with_frozen(list(messages), frozen, str(config.get(FROZEN_HASH, "")))
        self.departure_asked = set()
        for part, strategy in self.parts.items():
            if isinstance(strategy, FedOpt):  # its server optimizer steps from this part's current weights
                strategy.current_arrays = {k: a.numpy() for k, a in trained.items() if part_of(k) == part}
        return self._remember(MessageType.TRAIN, messages)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        trained, frozen = self._split_frozen(arrays, config)
        departure_windows = int(config.get(DEPARTURE_WINDOWS, 0))
        if DEPARTURE_WINDOWS in config:  # asked of a few sites only (``_ask_departure``)
            config = ConfigRecord({k: v for k, v in config.items() if k != DEPARTURE_WINDOWS})
        messages = self.sampler.configure_evaluate(server_round, trained, config, grid)
        messages = self._with_frozen(list(messages), frozen, str(config.get(FROZEN_HASH, "")))
        messages = self._ask_departure(messages, departure_windows, server_round)
        return self._remember(MessageType.EVALUATE, messages)

    def _ask_departure(self, messages: list[Message], windows: int, server_round: int) -> list[Message]:
        """The messages, with ``departure-windows = windows`` in the config of at most
        ``departure_sites`` of them: a choice seeded by the run's seed and the round over the
        sorted node ids, so it repeats; the rest evaluate as in any round."""
        nodes = sorted(m.metadata.dst_node_id for m in messages)
        if windows <= 0:
            self.departure_asked = set()
        elif len(nodes) <= self.departure_sites:
            self.departure_asked = set(nodes)
        else:
            rng = np.random.default_rng([self.seed % 2**32, server_round])
            self.departure_asked = {nodes[i] for i in rng.choice(len(nodes), self.departure_sites, replace=False)}
        out = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            if node in self.departure_asked:  # content is shared by the messages: a copy for this one
                key = self.sampler.configrecord_key
                config = ConfigRecord({**dict(msg.content[key].items()), DEPARTURE_WINDOWS: windows})
                content = RecordDict({**dict(msg.content.items()), key: config})
                msg = Message(content=content, dst_node_id=node, message_type=msg.metadata.message_type)
            out.append(msg)
        return out

    # -- receiving ------------------------------------------------------------------------------

    def _problem(self, msg: Message, is_train: bool) -> str | None:
        """Why a reply cannot be used, or None."""
        if msg.has_error():  # keep the last line of a runtime's traceback
            lines = [line.strip() for line in str(msg.error.reason).splitlines() if line.strip()] or ["(no reason)"]
            if lines[-1].startswith("site refused:"):  # the site's own reason (client/refusal.py)
                return lines[-1][:400]
            return f"error reply: {lines[-1][:300]}"
        content = msg.content
        if "metrics" not in content.metric_records or "num-examples" not in content["metrics"]:
            return "malformed reply: no metrics with num-examples"
        for key, value in content["metrics"].items():  # one number each: a list would break every mean
            if isinstance(value, bool) or not isinstance(value, int | float):
                return f"malformed reply: metric {str(key)[:40]} is {str(value)[:40]}, not a number"
        examples = float(content["metrics"]["num-examples"])
        if not math.isfinite(examples) or examples < 0:
            return f"malformed reply: num-examples is {examples}"
        pcc = content["metrics"].get("pcc")
        if pcc is not None and math.isfinite(pcc) and not -1.0 <= float(pcc) <= 1.0:
            return f"malformed reply: pcc {float(pcc):g} is not a correlation"
        if self.max_examples_per_reply and examples > self.max_examples_per_reply:
            return f"refused reply: num-examples {examples:g} under DP, where every site counts at most {self.max_examples_per_reply}"
        declared = self.declared.get(msg.metadata.src_node_id)
        if is_train and declared is not None and examples > declared:
            return f"refused update: num-examples {examples:g} is more than the {declared:g} this site declared in its first round"
        if is_train and self.max_examples and examples > self.max_examples:
            return f"refused update: num-examples {examples:g} is above max-examples-per-site = {self.max_examples}"
        modality = content["site"]["modality"] if "site" in content.config_records else None
        if modality not in MODALITIES:
            return f"malformed reply: unknown modality {modality!r}"
        if is_train:
            if "arrays" not in content.array_records:
                return "malformed reply: no arrays"
            arrays = content["arrays"]
            unknown = [name for name in arrays.keys() if name not in self.current]
            if unknown:
                return f"malformed reply: unknown parameter {unknown[0][:80]}"
            frozen = [name for name in arrays.keys() if name in self.frozen]
            if frozen:
                return f"refused update: parameter {frozen[0][:80]} is frozen (never trained at a site)"
            for name in arrays.keys():  # float64 1e300 passes a finiteness check and is inf as float32
                if arrays[name].dtype != self.current[name].dtype:
                    return f"malformed reply: parameter {name} is {arrays[name].dtype}, not {self.current[name].dtype}"
            for name, array in self.current.items():
                if (
                    name not in self.frozen
                    and part_of(name) in (BACKBONE, modality)
                    and (name not in arrays or tuple(arrays[name].shape) != tuple(array.shape))
                ):
                    return f"malformed reply: parameter {name} missing or of the wrong shape"
            for name in arrays.keys():  # one NaN or inf would make every average NaN, and it would be checkpointed
                if not np.isfinite(arrays[name].numpy()).all():
                    return f"malformed reply: parameter {name} has NaN or infinite values"
        return None

    def _sort_replies(self, kind: str, replies: Iterable[Message]) -> list[Message]:
        """Usable replies (with examples); fills ``self.report[kind]`` with every site's outcome."""
        is_train = kind == MessageType.TRAIN
        sites, failures, usable, clipped = {}, [], [], []
        replied = set()
        for msg in replies:
            node = msg.metadata.src_node_id
            replied.add(node)
            self._note_held(msg)
            problem = self._problem(msg, is_train)
            if problem:
                failures.append({"node": node, "reason": problem})
                continue
            metrics = {k: v for k, v in msg.content["metrics"].items()}
            sites[str(node)] = {"modality": msg.content["site"]["modality"], **metrics}
            if is_train and metrics.get("skipped-runs") and node not in self.warned_skips:
                self.warned_skips.add(node)  # once per site: the count is in every round's history
                log(
                    WARNING,
                    "train: site (node %s) skipped %d run(s) it could not use (named in the site's own log)",
                    node,
                    int(metrics["skipped-runs"]),
                )
            if float(metrics["num-examples"]) > 0:
                if is_train:
                    self.declared.setdefault(node, float(metrics["num-examples"]))
                usable.append(msg)
        if is_train:
            usable = self._bound_updates(usable, clipped)
        usable = self._cap_counts(usable, kind)
        for node in sorted(self.sent.get(kind, set()) - replied):
            failures.append({"node": node, "reason": "no reply before the round timeout"})
        for failure in failures:
            log(WARNING, "%s: site (node %s) failed: %s", kind, failure["node"], failure["reason"])
        self.report[kind] = {"sites": sites, "failed": failures}
        if clipped:
            self.report[kind]["clipped"] = clipped
        # in an order of their content, not of arrival: float sums depend on the order, and the
        # same sites' same replies must give the same global model on one machine or a cluster
        return sorted(usable, key=_content_order)

    def _note_held(self, msg: Message) -> None:
        """Which frozen records the replying site holds now (none after an error: re-sent)."""
        node = msg.metadata.src_node_id
        site = None if msg.has_error() else msg.content.config_records.get("site")
        digest = site.get(FROZEN_HASH) if site is not None else None
        if isinstance(digest, str) and len(digest) == 64:
            self.held[node] = digest
        else:
            self.held.pop(node, None)

    def _cap_counts(self, usable: list[Message], kind: str) -> list[Message]:
        """Replies whose example count is above ``MAX_COUNT_RATIO`` times the round's median
        (three or more sites) count as that much: one site cannot own FedAvg's weights or the
        held-out aggregate (and with it early stopping) by claiming more examples."""
        if len(usable) < 3:
            return usable
        counts = [float(m.content["metrics"]["num-examples"]) for m in usable]
        cap = MAX_COUNT_RATIO * float(np.median(counts))
        out = []
        for msg, count in zip(usable, counts):
            if count > cap:
                log(
                    WARNING,
                    "%s: site (node %s) claims %g examples; counted as %g",
                    kind,
                    msg.metadata.src_node_id,
                    count,
                    cap,
                )
                metrics = MetricRecord({**dict(msg.content["metrics"].items()), "num-examples": int(cap)})
                content = RecordDict({**{k: v for k, v in msg.content.items() if k != "metrics"}, "metrics": metrics})
                msg = Message(content=content, metadata=copy.copy(msg.metadata))
            out.append(msg)
        return out

    def _update_norm(self, msg: Message) -> tuple[float, dict[str, np.ndarray]]:
        arrays = msg.content["arrays"]
        deltas = {
            k: arrays[k].numpy().astype(np.float64) - self.current[k].numpy()
            for k in arrays.keys()
            if k in self.current
        }
        return math.sqrt(sum(float(np.square(d).sum()) for d in deltas.values())), deltas

    def _bound_updates(self, usable: list[Message], clipped: list[dict]) -> list[Message]:
        """The replies with each update (its weights minus the global ones) scaled to L2 norm at
        most the bound, a scaled one recorded in ``clipped``. The bound is ``max_update_norm``
        or, when that is 0 (the default) and three or more sites replied, ``MAX_NORM_RATIO``
        times the round's median update norm: honest updates are alike in size, and one site
        cannot move the median."""
        norms = [self._update_norm(msg) for msg in usable]
        bound = self.max_update_norm
        if not bound and len(usable) >= 3:
            bound = MAX_NORM_RATIO * float(np.median([n for n, _ in norms]))
        if not bound:
            return usable
        out = []
        for msg, (norm, deltas) in zip(usable, norms):
            if norm > bound:
                log(
                    WARNING,
                    "train: site (node %s) update norm %.3g scaled to %.3g",
                    msg.metadata.src_node_id,
                    norm,
                    bound,
                )
                clipped.append({"node": msg.metadata.src_node_id, "norm": norm, "scaled_to": bound})
                arrays, scale = msg.content["arrays"], bound / norm
                bounded = ArrayRecord({
                    # np.asarray: a 0-d parameter plus a 0-d update is a NumPy scalar, which Array refuses
                    k: Array(np.asarray(self.current[k].numpy() + scale * deltas[k], dtype=arrays[k].numpy().dtype)) if k in deltas else arrays[k]
                    for k in arrays.keys()
                })  # fmt: skip
                content = RecordDict({**{k: v for k, v in msg.content.items() if k != "arrays"}, "arrays": bounded})
                msg = Message(content=content, metadata=copy.copy(msg.metadata))
            out.append(msg)
        return out

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        usable = self._sort_replies(MessageType.TRAIN, replies)
        valid = len(self.report[MessageType.TRAIN]["sites"])  # with examples or not (a DP site's budget spent)
        if valid < self.min_replies:  # the run cannot go on (shortfall)
            self.report[MessageType.TRAIN]["too_few"] = {"valid": valid, "required": self.min_replies}
        if len(usable) < self.min_replies:
            log(WARNING, "aggregate_train: %d usable site update(s), %d required", len(usable), self.min_replies)
            return None, None
        merged, metrics = ArrayRecord(), None
        for k in self.frozen & set(self.current.keys()):  # never trained: the global records stay
            merged[k] = self.current[k]
        for part, strategy in self.parts.items():
            keys = [k for k in self.current.keys() if part_of(k) == part and k not in self.frozen]
            members = [m for m in usable if part == BACKBONE or m.content["site"]["modality"] == part]
            if not keys:
                continue
            arrays = None
            if members:
                metric_keys = common_keys([m.content for m in members])
                arrays, part_metrics = strategy.aggregate_train(
                    server_round, [_restrict(m, keys, metric_keys) for m in members]
                )
                if part == BACKBONE:
                    metrics = part_metrics
            for k in keys:  # a head no site of this round trains keeps its global weights
                merged[k] = arrays[k] if arrays is not None else self.current[k]
                if merged[k].dtype != self.current[k].dtype:  # FedAdam's float64 scalars: the model stays float32
                    merged[k] = Array(np.asarray(merged[k].numpy(), dtype=self.current[k].numpy().dtype))
                if tuple(merged[k].shape) != tuple(self.current[k].shape):
                    raise AggregationError(
                        f"{part} aggregation changed the shape of {k}: {merged[k].shape} vs {self.current[k].shape}"
                    )
        merged = ArrayRecord({k: merged[k] for k in self.current.keys()})  # the model's order
        bad = [k for k in merged.keys() if not np.isfinite(merged[k].numpy()).all()]
        if bad:  # never sent to the sites nor checkpointed
            log(WARNING, "aggregate_train: the aggregate of %s is not finite; the global model is kept", bad[0])
            return None, None
        self.report[MessageType.TRAIN]["aggregate"] = dict(metrics or {})
        return merged, metrics

    def shortfall(self) -> str | None:
        """Why the run cannot go on after this round's training replies, or None.

        A valid reply without examples (a DP site whose budget is spent) counts as valid: the
        round then keeps the global model and the run goes on.

        Returns
        -------
        str | None
            With fewer valid replies than ``min-train-replies``: how many there were, and every
            site that failed or was refused with its reason (public, as in the history).
        """
        report = self.report.get(MessageType.TRAIN, {})
        short = report.get("too_few")
        if not short:
            return None
        failed = "; ".join(f"node {f['node']}: {f['reason']}" for f in report.get("failed", []))
        replies = "reply" if short["valid"] == 1 else "replies"
        return f"{short['valid']} valid training {replies} where min-train-replies = {short['required']}" + (
            f" (failed or refused: {failed})" if failed else ""
        )

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        usable = self._sort_replies(MessageType.EVALUATE, replies)
        metrics = aggregate_metrics([m.content for m in usable], "num-examples") if usable else None
        if metrics is not None:  # the departure metrics of the sites asked to score them, and no others
            for key in DEPARTURE_METRICS:
                metrics.pop(key, None)
            asked = [m.content for m in usable if m.metadata.src_node_id in self.departure_asked]
            scored = aggregate_metrics(asked, "num-examples") if asked else {}
            metrics.update({key: scored[key] for key in DEPARTURE_METRICS if key in scored})
            if asked:
                self.report[MessageType.EVALUATE]["departure_sites"] = len(asked)
        scores = [float(m.content["metrics"]["pcc"]) for m in usable] if metrics and "pcc" in metrics else []
        scores = [p for p in scores if math.isfinite(p)]
        if len(scores) >= 3:  # early stopping's score: one site moves a median only within the others' range
            metrics["pcc-mean"], metrics["pcc"] = metrics["pcc"], float(np.median(scores))
        self.report[MessageType.EVALUATE]["aggregate"] = dict(metrics or {})
        return metrics

    def aggregate_folded_evaluate(self, server_round: int, train_replies: Iterable[Message]) -> MetricRecord | None:
        """The held-out scores of the model a training round started from, which the sites put in
        their training replies (``EVALUATED_PREFIX`` metrics): aggregated and checked exactly as an
        evaluate round's replies, reported under ``MessageType.EVALUATE`` for ``server_round``."""
        folded = []
        for msg in train_replies:
            if not msg.has_error() and "metrics" in msg.content.metric_records:
                metrics = {
                    k[len(EVALUATED_PREFIX) :]: v
                    for k, v in msg.content["metrics"].items()
                    if k.startswith(EVALUATED_PREFIX)
                }
                site = msg.content.config_records.get("site", ConfigRecord({}))
                content = RecordDict({"metrics": MetricRecord(metrics), "site": site})
                msg = Message(content=content, metadata=copy.copy(msg.metadata))
            folded.append(msg)
        self.sent[MessageType.EVALUATE] = set(self.sent.get(MessageType.TRAIN, set()))
        return self.aggregate_evaluate(server_round, folded)

    # -- server optimizer state -----------------------------------------------------------------

    def state_dict(self) -> dict[str, np.ndarray]:
        """FedAdam's moments per part (empty for stateless strategies) and the sites' declared example counts."""
        state = {f"declared/{node}": np.asarray(count) for node, count in self.declared.items()}
        for part, strategy in self.parts.items():
            for moment in ("m_t", "v_t"):
                for name, value in (getattr(strategy, moment, None) or {}).items():
                    state[f"{part}/{moment}/{name}"] = np.asarray(value)
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        for key, value in state.items():
            if key.startswith("declared/"):
                self.declared[int(key.split("/", 1)[1])] = float(value)
                continue
            part, moment, name = key.split("/", 2)
            strategy = self.parts[part]
            if getattr(strategy, moment, None) is None:
                setattr(strategy, moment, {})
            getattr(strategy, moment)[name] = value


def _content_order(msg: Message) -> str:
    """A reply's place in an order that depends on its content only (its arrays and metrics)."""
    arrays = msg.content.array_records.get("arrays")
    named = {k: a.numpy() for k, a in arrays.items()} if arrays is not None else {}
    metrics = sorted((str(k), float(v)) for k, v in msg.content["metrics"].items())
    return content_hash(named | {f"metric:{k}": np.asarray(v) for k, v in metrics})


def _restrict(msg: Message, keys: list[str], metric_keys: list[str]) -> Message:
    """A copy of a reply holding only the arrays ``keys`` and metrics ``metric_keys``, for one part."""
    arrays, metrics = msg.content["arrays"], msg.content["metrics"]
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: arrays[k] for k in keys}),
            "metrics": MetricRecord({k: metrics[k] for k in metric_keys}),
        }
    )
    return Message(content=content, metadata=copy.copy(msg.metadata))  # same sender, for the strategy's logs
