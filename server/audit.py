"""What left each site: an audit log of every message the server receives, and a leak checker.

``AuditedGrid(grid, log_path)`` stands in for the Flower ``Grid`` the ServerApp is given. It
passes every call through; for each reply the server receives (``send_and_receive`` or
``pull_messages``) it appends one JSON line to ``log_path`` (``run-dir/audit/received.jsonl``)
that describes the reply without its numbers::

    {"time": ..., "round": 3, "message_type": "train", "src_node_id": 1234, "run_id": 7,
     "error": null,
     "records": {"arrays":  {"type": "array", "arrays": {"dit.blocks.0.weight":
                                {"shape": [64, 64], "dtype": "float32", "bytes": 16512}, ...}},
                 "metrics": {"type": "metric", "values": {"loss": "float", "num-examples": "int"}},
                 "site":    {"type": "config", "values": {"modality": "fmri"}}}}

A consortium can read from it exactly what left every site, and ``find_leaks`` checks it:
arrays must be the model's own parameters (names and shapes), metrics numeric scalars, config
values short strings without paths, subject ids or site names, and no array may be shaped like
a recording window. ``fedneurogen audit LOG`` prints a log's summary and its problems.

The grid also counts the array bytes sent and received per round (``begin_round`` /
``round_bytes``), which the server stores in each history entry as ``bytes``.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from flwr.app import ArrayRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedneurogen.server.wrapped_grid import WrappedGrid
from fedneurogen.shared.errors import ConfigError
from fedneurogen.shared.records import config_value, describe_content
from fedneurogen.shared.transport import EVALUATED_PREFIX, FROZEN_HASH
from fedneurogen.shared.workflows.departure import DEPARTURE_METRICS
from fedneurogen.shared.config import PreprocessConfig

AUDIT_FILE = Path("audit") / "received.jsonl"


def array_bytes(record: ArrayRecord) -> int:
    """Bytes of an ArrayRecord's arrays as serialized (what travels)."""
    return sum(len(array.data) for array in record.values())


def content_bytes(content: RecordDict) -> int:
    return sum(array_bytes(record) for record in content.array_records.values())


def describe_message(msg: Message, server_round: int | None = None) -> dict[str, Any]:
    meta = msg.metadata
    entry: dict[str, Any] = {
        "time": round(time.time(), 3),
        "round": server_round,
        "message_type": meta.message_type,
        "src_node_id": meta.src_node_id,
        "run_id": meta.run_id,
        "error": None,
        "records": {},
    }
    if msg.has_error():
        entry["error"] = {"code": int(msg.error.code), "reason": config_value(str(msg.error.reason))}
    else:
        entry["records"] = describe_content(msg.content)
    return entry


class AuditedGrid(WrappedGrid):
    """A Flower ``Grid`` that logs every received message (``log_path``; None: no log) and
    counts the array bytes sent and received per round; everything else is the wrapped grid's."""

    def __init__(self, grid: Grid, log_path: str | Path | None):
        super().__init__(grid)
        self.log_path = Path(log_path) if log_path is not None else None
        self.server_round: int | None = None
        self._lock = threading.Lock()
        self._sent = 0
        self._received = 0
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)

    # -- per-round byte counts -------------------------------------------------------------------

    def begin_round(self, server_round: int) -> None:
        """Label what follows with ``server_round`` and reset the byte counts."""
        with self._lock:
            self.server_round, self._sent, self._received = server_round, 0, 0

    def round_bytes(self) -> dict[str, int]:
        """Array bytes sent and received since ``begin_round``."""
        with self._lock:
            return {"sent": int(self._sent), "received": int(self._received)}

    # -- interception ----------------------------------------------------------------------------

    def _count_sent(self, messages: Iterable[Message]) -> list[Message]:
        messages = list(messages)
        # messages of one round usually share one content object; count each message: each is sent
        sent = sum(content_bytes(m.content) for m in messages if not m.has_error())
        with self._lock:
            self._sent += sent
        return messages

    def _record(self, replies: Iterable[Message]) -> list[Message]:
        replies = list(replies)
        lines = []
        received = 0
        for msg in replies:
            if not msg.has_error():
                received += content_bytes(msg.content)
            if self.log_path is not None:
                lines.append(json.dumps(describe_message(msg, self.server_round), separators=(",", ":")) + "\n")
        with self._lock:
            self._received += received
            if lines:
                append_lines(self.log_path, lines)
        return replies

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self._record(self._grid.send_and_receive(self._count_sent(messages), timeout=timeout))

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(self._count_sent(messages))

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._record(self._grid.pull_messages(message_ids))


def append_lines(path: Path, lines: Sequence[str]) -> None:
    """Append whole lines with one ``write`` on an ``O_APPEND`` descriptor, then fsync: a crash
    leaves the earlier lines intact and at most the last one cut (``read_log`` skips it)."""
    data = "".join(lines).encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The entries of an audit log; a last line cut by a crash is left out."""
    entries = []
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise
    return entries


# -- the checker ---------------------------------------------------------------------------------

# points: fNIRS channel names (with the ridge statistics); train-runs/val-runs: content hashes of the
# runs a site trains and validates on (client/site.py split_report), 64 hex digits each; frozen-hash:
# the frozen records a site holds (shared/transport.py)
DEFAULT_CONFIG_KEYS = ("modality", "classes", "points", "train-runs", "val-runs", FROZEN_HASH)
_EVALUATE_KEYS = ("num-examples", "loss", "pcc")  # client/site.py evaluate
#: Every metric a site sends: client/site.py (train, evaluate), client/app.py (the statistics
#: reply's private/epsilon, evaluation withheld under DP). Any other key is flagged.
METRIC_KEYS = (
    "num-examples",
    "loss",
    "pcc",
    "steps",
    "budget_exhausted",
    "train-seconds",
    "noise-multiplier",
    "epsilon",
    "private",
    "withheld",
    "skipped-runs",
    "noise-scale",
    *DEPARTURE_METRICS,  # the last evaluation's departure shares and the noise model's spread
    *(EVALUATED_PREFIX + key for key in _EVALUATE_KEYS),  # folded evaluation, in training replies
)
PATH_SEPARATORS = ("/", "\\")


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)


def _contains(shape: Sequence[int], window: Sequence[int]) -> bool:
    """Whether ``window`` is a contiguous run of ``shape``'s dims, or ``shape``'s trailing dims
    flatten to exactly one window (a window sent reshaped)."""
    shape, window = tuple(shape), tuple(window)
    n = len(window)
    if n and any(shape[i : i + n] == window for i in range(len(shape) - n + 1)):
        return True
    size = math.prod(window)
    return size > 1 and any(math.prod(shape[i:]) == size for i in range(len(shape)))


def _recording_like(shape: Sequence[int], window: Sequence[int]) -> bool:
    """Whether ``shape`` has the window's point axis (EEG channels, target vertices or
    channels) and, on another axis, at least a window's worth of samples: a whole recording."""
    shape = list(shape)
    if len(window) < 2 or len(shape) < 2 or window[0] not in shape:
        return False
    rest = list(shape)
    rest.remove(window[0])
    return any(d >= window[-1] for d in rest)


#: The most scalars a reply's metric record holds (a site sends about a dozen).
MAX_METRICS = 64
#: What a class name (a task label) looks like: one token, no spaces.
LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,47}")

#: Arrays of the ridge-statistics reply (``client/site.ridge_statistics``): sums over a site's frames.
RIDGE_STATISTIC = re.compile(r"(train|val)\.(n|sx|sy|sxx|sxy|syy)")


def _released_widths(design_width: int) -> set[int]:
    """Feature widths a statistics reply may have: the design's, or the private path's (pooled
    scalp regions; their gain groups) under DP (``shared/private_path.py``)."""
    from fedneurogen.shared.private_path import N_REGIONS, pooling_matrix

    try:
        pooled = pooling_matrix(design_width).shape[0]
    except ConfigError:  # a design with no private path
        return {design_width}
    return {design_width, pooled, pooled // N_REGIONS}


#: The parameter holding the class offsets (``shared.model.mean.RidgePath.class_intercept``).
CLASS_OFFSET_PARAMETER = ".mean.ridge.class_intercept"
#: Arrays of the class-residuals reply (``client/site.class_residual_statistics``): per-class sums.
CLASS_RESIDUAL = re.compile(r"(train|val)\.(sums|squares|windows|subjects)")


def _class_residual_problem(key: str, shape: Sequence[int]) -> str | None:
    """What is wrong with an array of a ``class-residuals`` record (per-class sums over windows)."""
    match = CLASS_RESIDUAL.fullmatch(key)
    if match is None:
        return "is not a per-class residual sum"
    dims = 3 if match.group(2) in ("sums", "squares") else 1
    return None if len(shape) == dims else f"is not shaped like the per-class {match.group(2)}"


#: Arrays of the noise reply (``client/site.noise_statistics``): a sketch of the summed second
#: moment of a site's residuals over all its training frames (``shared.model.noise.NoiseSketch``).
NOISE_SKETCH_DIMS = {"rows": 1, "squares": 1, "components": 2, "temporal": 2, "temporal_count": 1}


def _noise_problem(key: str, shape: Sequence[int]) -> str | None:
    """What is wrong with an array of a ``noise`` record (a residual covariance sketch)."""
    dims = NOISE_SKETCH_DIMS.get(key)
    if dims is None:
        return "is not part of a residual covariance sketch"
    if len(shape) != dims or (key in ("rows", "temporal_count") and tuple(shape) != (1,)):
        return f"is not shaped like the sketch's {key}"
    if key == "temporal" and shape[0] != shape[1]:
        return "is not the frames' square product matrix"
    return None


def _local_problem(record: str, key: str, shape: Sequence[int]) -> str | None:
    """What is wrong with an array of a ``local`` (local-path statistics) or ``mixing`` record."""
    if record == "mixing":
        return None if key == "mixing" and len(shape) == 2 and shape[0] == 6 else "is not the [6, N] mixing sums"
    if key == "layout.columns":
        return None if len(shape) == 2 else "is not a [points, columns] layout"
    stat = key.split(".", 1)[1] if RIDGE_STATISTIC.fullmatch(key) else None
    dims = {"n": 1, "sx": 1, "sy": 1, "syy": 1, "sxx": 3, "sxy": 3}.get(stat or "")
    return None if dims is not None and len(shape) == dims else "is not a local-path statistic"


def _statistic_problem(key: str, shape: Sequence[int], design_width: int | None) -> str | None:
    """What is wrong with a ridge statistic's shape (None: nothing). ``design_width`` (the
    model's design features, when known) fixes the feature axes; the point axes are free."""
    stat = key.split(".", 1)[1]
    dims = {"n": 1, "sx": 1, "sy": 1, "syy": 1, "sxx": 2, "sxy": 2}[stat]
    if len(shape) != dims or (stat == "n" and tuple(shape) != (1,)):
        return f"is not shaped like the statistic {stat}"
    feature_axes = {"sx": shape[:1], "sxx": shape, "sxy": shape[:1]}.get(stat, ())
    if design_width is not None and any(d not in _released_widths(design_width) for d in feature_axes):
        return f"does not have the model's {design_width} design features"
    return None


def _check_arrays(
    where: str,
    rname: str,
    record: Mapping[str, Any],
    parameter_shapes: dict[str, tuple[int, ...]] | None,
    design_width: int | None,
    windows: list[tuple[int, ...]],
    problems: list[str],
    texts: list[str],
) -> None:
    """Check an array record's shapes (``find_leaks``): add its problems to ``problems``, its keys to ``texts``."""
    for key, info in record.get("arrays", {}).items():
        shape = tuple(info.get("shape", ()))
        texts.append(key)
        if rname in ("local", "mixing", "class-residuals", "noise"):  # sums over subjects' windows too
            if rname == "noise":
                problem = _noise_problem(key, shape)
            elif rname == "class-residuals":
                problem = _class_residual_problem(key, shape)
            else:
                problem = _local_problem(rname, key, shape)
            if problem:
                problems.append(f"{where}: array {rname}/{key} {list(shape)} {problem}")
            continue
        if RIDGE_STATISTIC.fullmatch(key):  # sums over all of a site's frames
            problem = _statistic_problem(key, shape, design_width)
            if problem:
                problems.append(f"{where}: array {rname}/{key} {list(shape)} {problem}")
            continue
        if parameter_shapes is not None:
            if key not in parameter_shapes:
                problems.append(f"{where}: array {rname}/{key} {list(shape)} is not a model parameter")
            elif parameter_shapes[key] != shape:
                problems.append(
                    f"{where}: array {rname}/{key} has shape {list(shape)}, the parameter {list(parameter_shapes[key])}"
                )
        is_parameter = parameter_shapes is not None and parameter_shapes.get(key) == shape
        # the class offsets are window-shaped by nature: each class's mean over the
        # windows of >= MIN_CLASS_SUBJECTS subjects, set by the server from the sites'
        # checked sums and returned as received (frozen); no other parameter may be
        class_means = is_parameter and key.endswith(CLASS_OFFSET_PARAMETER)
        for window in windows:
            if _contains(shape, window) and not class_means:
                problems.append(
                    f"{where}: array {rname}/{key} {list(shape)} is shaped like a data window {list(window)}"
                )
            elif not is_parameter and _recording_like(shape, window):
                problems.append(
                    f"{where}: array {rname}/{key} {list(shape)} is shaped like a recording ({window[0]} points)"
                )


def _check_metrics(
    where: str,
    rname: str,
    record: Mapping[str, Any],
    allowed_metrics: set[str],
    max_metrics: int,
    problems: list[str],
    texts: list[str],
) -> None:
    """Check a metric record (known keys, numeric scalars, not too many): problems to ``problems``, keys to ``texts``."""
    if len(record.get("values", {})) > max_metrics:
        problems.append(
            f"{where}: metric record {rname} holds {len(record['values'])} values (at most {max_metrics} expected)"
        )
    unknown = sorted(set(record.get("values", {})) - allowed_metrics)
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        problems.append(f"{where}: metric record {rname} holds keys that are not among the known metrics: {shown}")
    for key, vtype in record.get("values", {}).items():
        texts.append(key)
        if vtype not in ("int", "float"):
            problems.append(f"{where}: metric {rname}/{key} is a {vtype}, not a numeric scalar")


def _check_config(
    where: str,
    rname: str,
    record: Mapping[str, Any],
    allowed_config: set[str],
    max_string: int,
    problems: list[str],
    texts: list[str],
) -> None:
    """Check a config record (known keys, short strings, task-like class names): problems to ``problems``,
    keys and strings to ``texts``."""
    for key, value in record.get("values", {}).items():
        if key not in allowed_config:
            problems.append(f"{where}: config {rname}/{key} is not one of the known keys {sorted(allowed_config)}")
        if key == "classes":
            for label in value if isinstance(value, list) else [value]:
                if isinstance(label, str) and not LABEL.fullmatch(label):
                    problems.append(f"{where}: class name {label[:40]!r} does not look like a task label")
        values = value if isinstance(value, list) else [value]
        for v in values:
            if isinstance(v, dict):  # cut string or bytes
                problems.append(
                    f"{where}: config {rname}/{key} holds {'bytes' if 'bytes' in v else 'a long string'} ({v.get('bytes', v.get('length'))})"
                )
            elif not isinstance(v, str):
                problems.append(f"{where}: config {rname}/{key} holds a {type(v).__name__}, not a string")
            elif len(v) > max_string:
                problems.append(f"{where}: config {rname}/{key} holds a string of {len(v)} characters")
        texts.append(key)
        texts.extend(_strings(value))


def _check_texts(where: str, texts: list[str], forbidden: list[str], problems: list[str]) -> None:
    """Add to ``problems`` every string in ``texts`` that holds a path separator or a forbidden string."""
    for text in texts:
        if any(sep in text for sep in PATH_SEPARATORS):
            problems.append(f"{where}: string {text[:80]!r} contains a path separator")
        for bad in forbidden:
            if bad.lower() in text.lower():
                problems.append(f"{where}: string {text[:80]!r} contains {bad!r}")


def find_leaks(
    entries: Iterable[Mapping[str, Any]],
    *,
    parameter_shapes: Mapping[str, Sequence[int]] | None = None,
    window_shapes: Iterable[Sequence[int]] = (),
    forbidden_strings: Iterable[str] = (),
    config_keys: Iterable[str] = DEFAULT_CONFIG_KEYS,
    metric_keys: Iterable[str] = METRIC_KEYS,
    max_string: int = 64,
    max_metrics: int = MAX_METRICS,
) -> list[str]:
    """Problems in audit-log entries (``read_log``); an empty list means nothing but model
    parameters, the known numeric scalars and short labels left the sites. This is a structural
    check of the messages: it cannot tell what the weights themselves memorised of the data
    (DP-SGD is what bounds that).

    parameter_shapes:  the model's parameters (``{name: shape}``); arrays must be among them
                       with the same shape (None: not checked), or be the ridge statistics
                       (``train.sxx`` ...: sums over all a site's frames, shapes checked)
    window_shapes:     per-window shapes of the sites' data, e.g. ``eeg.shape[1:]`` (channels x
                       samples) and ``target.shape[1:]`` (vertices or channels x frames) of
                       their ``PairedWindows``: no array may hold one
    forbidden_strings: text that must not appear in any string (data roots, site folder names,
                       subject ids); path separators and BIDS ``sub-`` entities are always checked
    config_keys:       the only keys a config record may hold
    metric_keys:       the only keys a metric record may hold
    max_metrics:       the most scalars one metric record may hold (more could spell out data)

    Class names (config ``classes``) must look like task labels (``LABEL`` pattern: one token of
    letters, digits, ``_ . -``), not like names or free text."""
    parameter_shapes = None if parameter_shapes is None else {k: tuple(v) for k, v in parameter_shapes.items()}
    design_width = next((v[0] for k, v in (parameter_shapes or {}).items() if k.endswith(".mean.ridge.coef")), None)
    windows = [tuple(int(d) for d in w) for w in window_shapes]
    forbidden = [s for s in forbidden_strings if s] + ["sub-"]
    allowed_config, allowed_metrics = set(config_keys), set(metric_keys)
    problems: list[str] = []
    for i, entry in enumerate(entries):
        where = (
            f"entry {i} (round {entry.get('round')}, {entry.get('message_type')} from node {entry.get('src_node_id')})"
        )
        texts = list(_strings(entry.get("error") or {}))
        for rname, record in (entry.get("records") or {}).items():
            kind = record.get("type")
            texts.append(rname)
            if kind == "array":
                _check_arrays(where, rname, record, parameter_shapes, design_width, windows, problems, texts)
            elif kind == "metric":
                _check_metrics(where, rname, record, allowed_metrics, max_metrics, problems, texts)
            elif kind == "config":
                _check_config(where, rname, record, allowed_config, max_string, problems, texts)
            else:
                problems.append(f"{where}: record {rname} of unexpected type {kind!r}")
        _check_texts(where, texts, forbidden, problems)
    return problems


def summarize(entries: Sequence[Mapping[str, Any]]) -> str:
    """One line per received message: round, type, node, and what it held."""
    out = []
    for e in entries:
        if e.get("error"):
            held = f"error {e['error'].get('code')}: {e['error'].get('reason')}"
        else:
            parts = []
            for name, r in (e.get("records") or {}).items():
                if r.get("type") == "array":
                    parts.append(
                        f"{name}: {len(r['arrays'])} arrays, {sum(a['bytes'] for a in r['arrays'].values())} bytes"
                    )
                else:
                    parts.append(f"{name}: {r.get('values')}")
            held = "; ".join(parts) or "(empty)"
        out.append(f"round {e.get('round')} {e.get('message_type')} node {e.get('src_node_id')}: {held}")
    return "\n".join(out)


def default_window_shapes() -> list[tuple[int, int]]:
    """Per-window shapes of data a site may hold with the default preprocessing: EEG of the
    common caps (channels x window samples) and the fMRI target (ico4 vertices x frames)."""
    config = PreprocessConfig()
    eeg_samples = int(round(config.window_seconds * config.eeg_sfreq))
    frames = int(round(config.window_seconds * config.target_sfreq("fmri")))
    return [*((channels, eeg_samples) for channels in (19, 32, 64, 128, 256)), (5124, frames)]


def preset_shapes(entries: Sequence[Mapping[str, Any]], preset: str | None) -> tuple[dict | None, list[str]]:
    """The parameter shapes to check arrays against: ``preset``'s, or else those of the one preset
    whose parameters every received array is (a problem when none is)."""
    import torch

    from fedneurogen.shared.model import PRESETS, NeuroGenModel

    def shapes_of(name: str) -> dict:
        shapes = {}
        for local in (False, True):  # with source features the model has a local path too
            config = PRESETS[name].model_copy(update={"local_path": local})
            with torch.device("meta"):  # shapes only: nothing allocated
                model = NeuroGenModel(config, fmri_positions=None, device="meta")
            shapes |= {k: tuple(p.shape) for k, p in model.named_parameters()}
        return shapes

    if preset:
        return shapes_of(preset), []
    names = {
        key
        for e in entries
        for r in (e.get("records") or {}).values()
        if r.get("type") == "array"
        for key in r.get("arrays", {})
        if not RIDGE_STATISTIC.fullmatch(key)
    }
    for name in PRESETS:
        shapes = shapes_of(name)
        if names <= set(shapes):
            return shapes, []
    return None, [
        f"the received arrays are not the parameters of any preset ({', '.join(PRESETS)}); pass --preset to check each one"
    ]


class LogCheck(NamedTuple):
    """What ``check_log`` found: the messages read, one summary line each, and the problems."""

    messages: int
    summary: str
    problems: list[str]


def check_log(log: Path, preset: str | None = None, forbidden_strings: Sequence[str] = ()) -> LogCheck:
    """Check an audit log as ``fedneurogen audit LOG`` does: returns the summary of what each
    site sent and the problems ``find_leaks`` finds (array names and shapes against ``preset``,
    inferred from the array names when None; the default window shapes; ``forbidden_strings``
    that no config value may contain, e.g. a data root or a site's name)."""
    entries = read_log(log)
    shapes, problems = preset_shapes(entries, preset)
    problems += find_leaks(
        entries,
        parameter_shapes=shapes,
        window_shapes=default_window_shapes(),
        forbidden_strings=list(forbidden_strings),
    )
    return LogCheck(len(entries), summarize(entries), problems)


# -- the site's own log: what it was asked -------------------------------------------------------

SITE_LOG = "sent.jsonl"  # in a site's state folder (client/app.py)
#: Run-config keys that must not change between messages of one run: seeds, which and how many
#: windows, the preprocessing that cuts them, where the site's ledger and subset key are found,
#: and the DP settings. A change lets a coordinator difference two releases over other windows
#: (or reset a subset or ledger) within a run the site believes is one.
WATCHED_RUN_CONFIG = (
    "seed", "max-windows", "eval-pcc-windows", "preprocess", "run-dir", "cache-dir",
    "dp-enabled", "dp-target-epsilon", "dp-delta", "dp-max-grad-norm", "dp-rounds", "dp-statistics-share",
)  # fmt: skip


def run_config_changes(entries: Sequence[Mapping[str, Any]], keys: Sequence[str] = WATCHED_RUN_CONFIG) -> list[str]:
    """Every watched run-config key whose value changed between messages of one run.

    Parameters
    ----------
    entries : sequence of mapping
        A site's ``sent.jsonl`` entries, in order (each with ``run_id`` and ``run_config``).
    keys : sequence of str
        The keys to watch (default ``WATCHED_RUN_CONFIG``).

    Returns
    -------
    list of str
        One line per change: the run, the key, the value of the run's first message and the
        changed one, and which message (1-based, in the log) changed it.
    """
    first: dict[Any, tuple[int, dict[str, Any]]] = {}
    problems = []
    for i, entry in enumerate(entries, start=1):
        config = entry.get("run_config")
        if not isinstance(config, Mapping):
            continue
        run = entry.get("run_id")
        if run not in first:
            first[run] = (i, dict(config))
            continue
        start, seen = first[run]
        for key in keys:
            if config.get(key) != seen.get(key):
                problems.append(
                    f"run {run}: the run config changed {key} from {seen.get(key)!r} (message {start}) to "
                    f"{config.get(key)!r} (message {i}, {entry.get('message_type')})"
                )
                seen[key] = config.get(key)  # report each further change once, from the last value
    return problems


def check_site_log(log: Path) -> LogCheck:
    """Check a site's own ``sent.jsonl`` as ``fedneurogen audit`` does for it: the summary of what
    the site sent, and the problems: run configs that changed seeds, windows, preprocessing or DP
    settings between messages of one run (``run_config_changes``).

    Parameters
    ----------
    log : Path
        The site's ``sent.jsonl`` (its state folder).

    Returns
    -------
    LogCheck
        Messages read, summary and problems.
    """
    entries = read_log(log)
    return LogCheck(len(entries), summarize(entries), run_config_changes(entries))
