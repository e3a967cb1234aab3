"""A site that declines to work for a run, and the reason it may tell the server.

A refusal has two texts: ``public``, sent to the server in the error reply (``site refused:
<public>``, named in the server's log and history), built only from fixed phrases, model
parameter names and run-config values, never from file paths or subject identifiers; and
``detail``, the full message for the site's own log (it names the file and the problem).

Reasons (see ``client/site.py``): the site's data path is missing or unreadable, its dataset
cannot be used (the kind of problem), its target modality is not one the model generates, the
run's preset differs from the one the site's operator pinned (``--node-config 'preset="small"'``)
or the received weights do not fit the site's model, or the run config itself is invalid.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from collections.abc import Mapping
from typing import Any

from fedneurogen.shared.errors import ConfigError, DataError, FedNeuroGenError
from fedneurogen.shared.model import MODALITIES
from fedneurogen.shared.run_config import RunConfig, validate_run_config

#: BIDS datatype folders; only these names are ever reported (a folder name could be anything).
BIDS_DATATYPES = ("anat", "beh", "dwi", "fmap", "func", "ieeg", "meg", "micr", "motion", "mrs", "nirs", "perf", "pet")
_NOT_TARGETS = {"eeg", "anat", "beh", "fmap", "dwi"}  # never a target, named only when nothing else is

#: Kinds of dataset problem, matched against a DataError's text, first match wins.
_DATA_PROBLEMS = (
    (r"no fMRI or fNIRS recording to pair with", "EEG runs without an fMRI or fNIRS recording to pair with"),
    (r"different target modalities", "runs of more than one target modality"),
    (r"does not match the EEG run", "EEG and target durations differ"),
    (r"share no channel", "runs share no channels"),
    (
        r"EDF|BDF|as EEG|EEG channel|no EEG channels|NaN/inf samples|holds no samples|EEG preprocessing",
        "unreadable or corrupt EEG files",
    ),
    (r"GIFTI|NIfTI|BOLD|RepetitionTime|vertices|volume", "unreadable or unusable fMRI files"),
    (r"SNIRF|HbO|HbR|optode|CW intensity", "unreadable or unusable fNIRS files"),
    (r"events|onset|duration|tab-separated|column", "unreadable events tables"),
    (r"JSON|sidecar", "unreadable JSON sidecars"),
    (r"file not found|cannot be read", "files missing or unreadable"),
)


class SiteRefusal(FedNeuroGenError):
    """The site does not take part in this request; ``public`` may be sent, ``detail`` stays."""

    def __init__(self, public: str, detail: str | None = None):
        self.public = public
        self.detail = detail or public
        super().__init__(self.detail)


def data_problem_kind(problem: str) -> str | None:
    """A fixed phrase for the kind of a dataset problem (None: not recognised)."""
    for pattern, kind in _DATA_PROBLEMS:
        if re.search(pattern, problem):
            return kind
    return None


def check_data_path(path: Path) -> None:
    """Refuse when the data path is missing, not a folder or not readable."""
    if not path.exists():
        raise SiteRefusal("data path not found (see the site's log)", f"data path {path} does not exist")
    if not path.is_dir():
        raise SiteRefusal(
            "data path is not a folder (see the site's log)",
            f"data path {path} is not a folder (expected a BIDS dataset)",
        )
    if not os.access(path, os.R_OK | os.X_OK):
        raise SiteRefusal(
            "data path not readable: permission denied (see the site's log)",
            f"data path {path} cannot be read (permission denied)",
        )


def data_refusal(err: DataError) -> SiteRefusal:
    """A refusal for a dataset ``load_site`` could not use; the detail keeps the whole message."""
    text = err.problem
    if text.startswith("empty dataset"):
        public = "dataset unreadable: no EEG runs found (see the site's log)"
    elif text.startswith("no usable runs"):
        kind = data_problem_kind(text)
        public = f"dataset unreadable: no usable runs ({kind or 'every run was skipped'}; see the site's log)"
    else:
        kind = data_problem_kind(text)
        public = f"dataset unreadable: {kind or 'see the site' + chr(39) + 's log'}"
    return SiteRefusal(public, f"dataset cannot be used: {err}")


def _datatypes(site_dir: Path) -> set[str]:
    """BIDS datatype folders found under the site's subjects (and sessions)."""
    found: set[str] = set()
    for subject in site_dir.glob("sub-*"):
        for folder in [*subject.glob("*"), *subject.glob("ses-*/*")]:
            if folder.is_dir() and folder.name in BIDS_DATATYPES + ("eeg",):
                found.add(folder.name)
    return found


def unsupported_target(site_dir: Path, runs: list) -> SiteRefusal | None:
    """A refusal when the site has EEG runs but none with a target the model generates."""
    if not runs or any(r.target_modality in MODALITIES for r in runs):
        return None
    others = sorted(_datatypes(site_dir) - _NOT_TARGETS)
    allowed = ", ".join(MODALITIES)
    if len(others) == 1 and others[0] not in ("func", "nirs"):
        public = f"target modality {others[0]!r} not in the model ({allowed})"
    else:
        found = ", ".join(others) or "EEG only"
        public = f"no target modality the model has ({allowed}) paired with the EEG (found: {found})"
    return SiteRefusal(
        public, f"{site_dir}: {len(runs)} EEG run(s), none with an fMRI or fNIRS recording to pair with; {public}"
    )


def check_modality(modality: object, site_dir: Path) -> None:
    """Refuse windows whose target modality the model has no head for."""
    if modality not in MODALITIES:
        shown = str(modality) if re.fullmatch(r"[A-Za-z0-9_-]{1,24}", str(modality)) else "unknown"
        raise SiteRefusal(
            f"target modality {shown!r} not in the model ({', '.join(MODALITIES)})",
            f"{site_dir}: windows have target modality {modality!r}; the model generates {', '.join(MODALITIES)}",
        )


def _flag(value: object) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


#: A site's bounds on what a run may make it do: ``(node-config key, run-config key, default)``.
#: ``max-*`` caps a run-config value; ``min-train-windows`` is the fewest training windows a run
#: may cut the site down to (``max-windows`` is 0, all windows, or at least this).
RUN_LIMITS = (
    ("max-local-epochs", "local-epochs", 20),
    ("max-round-timeout", "round-timeout", 86400.0),
    ("max-eval-pcc-windows", "eval-pcc-windows", 1024),
    ("max-departure-windows", "departure-windows", 64),
    ("min-train-windows", "max-windows", 8),
)

#: The fewest subjects a sum of exact (not DP) statistics covers, unless the site's
#: ``min-subjects-per-release`` says otherwise.
MIN_SUBJECTS_PER_RELEASE = 5

#: The node-config keys of a site's policy (client/app.py reads dp-lifetime-epsilon and
#: dp-secure-mode, and dp-max-delta as the one delta of its lifetime ledger; allow-exact-statistics
#: and min-subjects-per-release decide whether ridge statistics may leave without DP).
POLICY_KEYS = (
    "dp-required", "dp-max-epsilon", "dp-max-delta", "dp-lifetime-epsilon", "dp-secure-mode",
    "allow-exact-statistics", "min-subjects-per-release",
) + tuple(key for key, _, _ in RUN_LIMITS)  # fmt: skip


def dp_required(node_config: Mapping[str, Any]) -> bool:
    """Whether this site's policy requires DP: ``dp-required=true``, or any ``dp-max-*`` limit
    (a limit on epsilon or delta means nothing for a run without DP).

    Parameters
    ----------
    node_config : Mapping
        The site's node config.

    Returns
    -------
    bool
        True when a run without DP must be refused.
    """
    return _flag(node_config.get("dp-required", False)) or any(str(k).startswith("dp-max-") for k in node_config)


def exact_statistics_floor(node_config: Mapping[str, Any]) -> int:
    """The fewest subjects a sum of *exact* ridge statistics must cover at this site.

    Exact (not differentially private) statistics leave a site only when its own policy says so:
    ``allow-exact-statistics=true`` and DP not required (``dp_required``); every released sum then
    covers at least ``min-subjects-per-release`` subjects (default ``MIN_SUBJECTS_PER_RELEASE``).

    Parameters
    ----------
    node_config : Mapping
        The site's node config.

    Returns
    -------
    int
        The floor, at least 1.

    Raises
    ------
    SiteRefusal
        When the site's policy does not allow exact statistics at all.
    """
    if dp_required(node_config) or not _flag(node_config.get("allow-exact-statistics", False)):
        raise SiteRefusal(
            "this site releases ridge statistics only through the Gaussian mechanism (its policy does not allow "
            "exact statistics); a DP run with dp-statistics-share > 0 gets them"
        )
    return max(1, int(node_config.get("min-subjects-per-release", MIN_SUBJECTS_PER_RELEASE)))


def check_privacy_policy(node_config: dict, run: RunConfig) -> None:
    """Refuse a run that asks for less privacy than this site's own policy allows: its operator
    sets it with ``--node-config`` (``dp-required=true``, ``dp-max-epsilon=8``,
    ``dp-max-delta=1e-5``), so the coordinator cannot lower it from the run config. Any
    ``dp-max-*`` limit implies ``dp-required``."""
    if dp_required(node_config) and not run.dp_enabled:
        raise SiteRefusal(
            "this site trains only under differential privacy (its policy: dp-required, or a dp-max-* limit); "
            "the run has dp-enabled=false"
        )
    limits = (
        ("dp-max-epsilon", "dp-target-epsilon", run.dp_target_epsilon),
        ("dp-max-delta", "dp-delta", run.dp_delta),
    )
    for policy_key, run_key, value in limits:
        if run.dp_enabled and policy_key in node_config and value > float(node_config[policy_key]):
            raise SiteRefusal(
                f"the run's {run_key} = {value:g} is above this site's limit {policy_key} = {float(node_config[policy_key]):g}"
            )


def check_run_limits(node_config: dict, run: RunConfig) -> None:
    """Refuse a run whose ``local-epochs``, ``round-timeout``, ``eval-pcc-windows`` or
    ``max-windows`` is outside this site's bounds (``RUN_LIMITS``; its node config may change
    each default): the run config must not make a site train, wait or score without end, nor
    cut its training set down to a handful of windows.

    Parameters
    ----------
    node_config : dict
        The site's node config.
    run : RunConfig
        The run's typed config.

    Raises
    ------
    SiteRefusal
        With a public reason naming the run-config key, its value and the site's bound.
    """
    for policy_key, run_key, default in RUN_LIMITS:
        value, limit = run.get(run_key), float(node_config.get(policy_key, default))
        if policy_key.startswith("max-") and value > limit:
            raise SiteRefusal(f"the run's {run_key} = {value:g} is above this site's limit {policy_key} = {limit:g}")
        if policy_key.startswith("min-") and 0 < value < limit:
            raise SiteRefusal(
                f"the run's {run_key} = {value:g} is below this site's floor {policy_key} = {limit:g} (0: all windows)"
            )


def site_run_config(run_config: Mapping[str, Any]) -> RunConfig:
    """The run config a site received, typed; an invalid one is refused with the reason
    (``invalid run config: strategy = 'fedsgd' is not allowed; ...``)."""
    try:
        return validate_run_config(run_config)
    except ConfigError as err:  # run-config values came from the server: safe to send back
        raise SiteRefusal(f"invalid {err}", str(err)) from None


def check_run(node_config: dict, run: RunConfig) -> None:
    """Refuse a run whose preset is not the one this site pinned, one that asks for less
    privacy than the site's policy (``check_privacy_policy``) or one outside the site's bounds
    (``check_run_limits``). (An invalid run config never gets
    here: ``site_run_config`` refuses it.)"""
    pinned = node_config.get("preset")
    if pinned is not None and str(pinned) != run.preset:
        raise SiteRefusal(
            f"preset mismatch — this site runs {str(pinned)!r}, the run asks for {run.preset!r}",
            f"the run asks for preset {run.preset!r} but this site's node config pins preset={pinned!r}",
        )
    check_privacy_policy(node_config, run)
    check_run_limits(node_config, run)
