"""What a site does in a round: its data (loaded once per process), local training, evaluation.

Nothing here knows about Flower messages; ``client/app.py`` turns records into calls to these
functions and their results back into records.
"""

from __future__ import annotations

import copy
import hashlib
import os
import time
import warnings
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedneurogen.client import privacy
from fedneurogen.client.refusal import SiteRefusal, check_data_path, check_modality, data_refusal, unsupported_target
from fedneurogen.shared.config import PreprocessConfig
from fedneurogen.shared.data import find_runs, load_site_data
from fedneurogen.shared.errors import DataError
from fedneurogen.shared.io import atomic_write
from fedneurogen.shared.metrics import temporal_pcc
from fedneurogen.shared.model import Batch, ModelConfig, NeuroGenModel, parameter_modality
from fedneurogen.shared.recording import PairedWindows
from fedneurogen.shared.run_config import RunConfig
from fedneurogen.shared.splits import (
    REPORT_KEYS,
    keyed_split_subjects,
    seen_record,
    split_record,
    split_subjects,
    subject_keys,
)
from fedneurogen.shared.workflows.training import (
    TRAIN_PRESETS,
    TrainConfig,
    make_optimizer,
    train_epochs,
    validation_loss,
)
from fedneurogen.shared.workflows.departure import site_scores
from fedneurogen.shared.design import global_part, split_design, subject_statistics
from fedneurogen.shared.model.mean import validation_mixing
from fedneurogen.shared.ridge import sum_statistics
from fedneurogen.shared.local_path import subject_local_statistics, windows_layout
from fedneurogen.shared.model.crossfit import class_residuals
from fedneurogen.shared.model.noise import site_sketch
from fedneurogen.shared.private_path import BLOCK_WEIGHTS, private_reduction


@dataclass(frozen=True)
class SiteSplit:
    """A site's windows for a run, split by subject into training and validation (held-out
    subjects), and what the site keeps of the split. Not ``shared.data.LoadedSite``, which is
    everything the loader read from the site's folder before the split."""

    train: PairedWindows
    val: PairedWindows  # held-out subjects of this site
    # paired runs the loader could not use: named in the site's log, the count goes to the server
    skipped_runs: int = 0
    # content hashes of the runs of the training and validation subjects (split_report)
    split_runs: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
    # the site's own record of its split (train, val and held-out subjects' run hashes), for the
    # site's state folder under DP, where none goes to the server (``splits.seen_record``)
    own_record: dict | None = None

    @property
    def modality(self) -> str:
        return self.train.target_modality

    @property
    def classes(self) -> list[str]:
        return sorted(set(self.train.classes) | set(self.val.classes))


#: Sites one process keeps loaded: a simulation's site actor serves many sites in turn, and the
#: ones it served longest ago are released (reloaded from the preprocessed-window cache on their turn).
MAX_SITES_IN_MEMORY = 8
_SITES: dict[tuple, SiteSplit] = {}  # one load per process and data folder, in the order last used
_REFUSED: dict[tuple, SiteRefusal] = {}  # a dataset found unusable is not re-read each round


def data_path(node_config: dict, run: RunConfig) -> Path:
    """A site daemon's ``--node-config data-path=...``; in a local simulation, node ``i`` (its
    partition id) trains on ``data-root/site-0{i+1}``, which ``fedneurogen federate`` (or
    ``fedneurogen simulate``) writes before the run: a site never runs the simulator."""
    if "data-path" in node_config:
        return Path(str(node_config["data-path"]))
    root = Path(run.data_root).expanduser()
    path = root / f"site-{int(node_config['partition-id']) + 1:02d}"
    if not path.exists():
        raise SiteRefusal(
            "no data for this simulated node (see the site's log)",
            f"no site dataset at {path}: give the node its data (--node-config data-path=...) or write simulated sites first: "
            f"fedneurogen simulate --out {root} --sites N",
        )
    return path


def state_dir(node_config: dict, run: RunConfig, data: Path) -> Path:
    """Where the site keeps its privacy ledger: ``--node-config state-dir=...``, else the run
    config's ``site-state-dir`` for a simulated node only, else ``$FEDNEUROGEN_STATE``/``~/.local/state``.
    A site daemon (its node config names its ``data-path``) never takes the folder from the run
    config: a coordinator could otherwise point it at an empty ledger and reset the budget."""
    if "state-dir" in node_config:
        return Path(str(node_config["state-dir"]))
    from_run = "" if "data-path" in node_config else run.site_state_dir
    root = from_run or os.environ.get("FEDNEUROGEN_STATE") or "~/.local/state/fedneurogen"
    digest = hashlib.sha256(str(data.resolve()).encode()).hexdigest()[:8]
    return Path(root).expanduser() / f"{data.resolve().name}-{digest}"


def train_config(run: RunConfig) -> TrainConfig:
    """The optimisation settings of the run at a site: its preset's (``TRAIN_PRESETS``), for
    ``local-epochs`` epochs a round."""
    return TRAIN_PRESETS[run.preset].model_copy(update={"epochs": run.local_epochs})


def load(
    path: Path,
    seed: int,
    max_windows: int = 0,
    cache_dir: str | None = None,
    preprocess: PreprocessConfig | None = None,
    subset_seed: int | None = None,
    split_key: bytes | None = None,
) -> SiteSplit:
    """The site's training and held-out windows, split by subject; cached per process.
    ``subset_seed`` draws the ``max_windows`` subset (a deployed site's own key, never the run's
    seed: ``client/app.py``); None: ``seed``, as before, for direct callers. ``split_key``: the
    subjects are split by a keyed hash of their ids (``splits.keyed_split_subjects``: a deployed
    site's own key, so no subject moves when another is added or the run's ``seed`` changes);
    None: ``split_subjects(seed)``, as simulated nodes and direct callers do.

    A data path that is missing or unreadable, a dataset that cannot be used and a target
    modality the model lacks raise ``SiteRefusal``: its public reason says what kind of problem
    (no path), its detail, for the site's log, names the file (``DataError``)."""
    path = Path(path)
    check_data_path(path)
    preprocess = preprocess or PreprocessConfig()
    key = (str(path.resolve()), seed, max_windows, preprocess.cache_key(), subset_seed, split_key)
    if key in _REFUSED:
        raise _REFUSED[key]
    if key not in _SITES:
        try:
            runs = find_runs(path)
            refusal = unsupported_target(path, runs)
            if refusal is not None:
                raise refusal
            loaded = load_site_data(path, preprocess, cache_dir=cache_dir or None, progress=False)
            loaded.warn()  # each skipped run, named, in the site's own log
            windows = loaded.windows
            check_modality(windows.target_modality, path)
        except DataError as err:
            _REFUSED[key] = data_refusal(err)
            raise _REFUSED[key] from err
        except SiteRefusal as err:
            _REFUSED[key] = err
            raise
        if split_key is None:
            split = split_subjects(windows.subjects, seed=seed)
        else:
            split = keyed_split_subjects(windows.subjects, split_key)
        train_mask, val_mask, _ = split.masks(windows.subjects)
        try:
            keys = subject_keys(path, windows.runs, windows.subjects, cache_dir or None)
        except DataError as err:
            _REFUSED[key] = data_refusal(err)
            raise _REFUSED[key] from err
        split_runs = tuple(
            tuple(sorted(h for s in part for h in keys[s].split(":"))) for part in (split.train, split.val)
        )
        if not val_mask.any():  # fewer than three subjects: nothing to hold out
            val_mask = train_mask
        train, val = windows.subset(np.flatnonzero(train_mask)), windows.subset(np.flatnonzero(val_mask))
        if max_windows and len(train) > max_windows:  # a smaller site, for quick runs and tests
            subset_rng = np.random.default_rng(seed if subset_seed is None else subset_seed)
            keep = np.sort(subset_rng.choice(len(train), max_windows, replace=False))
            train = train.subset(keep)
        # EEG-only runs are skipped by design (augment --eeg-only uses them): not a problem to report
        eeg_only = {run.eeg.resolve() for run in runs if run.target_modality is None}
        broken = [p for p in loaded.skipped if Path(p.path).resolve() not in eeg_only]
        own_record = seen_record([split_record(split, keys)])
        _SITES[key] = SiteSplit(train, val, skipped_runs=len(broken), split_runs=split_runs, own_record=own_record)
        while len(_SITES) > MAX_SITES_IN_MEMORY:
            del _SITES[next(iter(_SITES))]
    _SITES[key] = _SITES.pop(key)  # now the most recently used
    return _SITES[key]


def split_report(site: SiteSplit) -> dict[str, list[str]]:
    """What this site trained and validated on, for the checkpoint's record: the content hashes
    of the runs of its training and validation subjects (``splits.subject_keys``: SHA-256 over
    the digests of a run's EEG and target files), so that ``evaluate`` never scores them as
    held-out. No subject id, name or count of runs per subject is sent. What a hash reveals:
    only whether a file that the reader already holds, byte for byte, was in this site's
    training or validation split. Under DP the site sends none (``client/app.py``): that
    membership is what DP protects, and the checkpoint then records the site as unknown."""
    train, val = site.split_runs
    return {REPORT_KEYS["train"]: list(train), REPORT_KEYS["val"]: list(val)}


_TEMPLATE: dict[str, NeuroGenModel] = {}  # this process's last architecture, never trained itself


def _template(config: ModelConfig | str) -> NeuroGenModel:
    """This process's untrained model of ``config``, built once (one architecture per run: memory
    for one spare model). A simulation actor makes a model per site per round, and building one
    (initialising every layer, the tokenizer's patches) costs several times a copy of it."""
    key = config if isinstance(config, str) else config.model_dump_json()
    if key not in _TEMPLATE:
        _TEMPLATE.clear()
        _TEMPLATE[key] = NeuroGenModel(config)
    return _TEMPLATE[key]


def build_model(config: ModelConfig | str, parameters: dict[str, torch.Tensor]) -> NeuroGenModel:
    """A model of ``config`` (the run's preset and preprocessing, ``RunConfig.preset_config``; or a
    preset name) holding the received global parameters; ``SiteRefusal`` when they do not fit it
    (another preset or package version on the server): the first parameter that is missing or of
    another shape is named (parameter names and shapes are the architecture).

    The model is a copy of this process's template whose parameters are copies of the received
    ones (the template's own values are never copied only to be overwritten); it shares nothing
    with the template, so what a round does to its model (DP hooks, trained weights) never
    reaches the next site's."""
    template = _template(config)
    preset = template.config.preset
    own = dict(template.named_parameters())
    missing = sorted(set(own) - set(parameters))
    if missing:
        public = f"received weights do not fit this site's {preset!r} model: {len(missing)} parameter(s) missing, first {missing[0]}"
        raise SiteRefusal(public, f"{public}; all missing: {missing}")
    for name, p in own.items():
        if tuple(parameters[name].shape) != tuple(p.shape):
            public = (
                f"received weights do not fit this site's {preset!r} model: parameter {name} has shape "
                f"{tuple(parameters[name].shape)}, the site's has {tuple(p.shape)} (another preset or package version?)"
            )
            raise SiteRefusal(public)
    received = {
        id(p): torch.nn.Parameter(
            parameters[name].detach().to(p.device, p.dtype, copy=True), requires_grad=p.requires_grad
        )
        for name, p in own.items()
    }
    return copy.deepcopy(template, memo=received)


def site_parameters(model: torch.nn.Module, modality: str, frozen: Collection[str] = ()) -> dict[str, torch.Tensor]:
    """The parameters this site trains: the shared backbone and its own modality's head, less
    ``frozen`` (the records the server sent as never trained: no site sends them back)."""
    return {
        name: p.detach().cpu()
        for name, p in model.named_parameters()
        if name not in frozen and parameter_modality(name) in (None, modality)
    }


def has_held_out(site: SiteSplit) -> bool:
    """Whether the site has held-out subjects of its own (with fewer than three subjects its
    validation windows are its training windows)."""
    return set(site.val.subjects.tolist()) != set(site.train.subjects.tolist())


def ridge_parts(site: SiteSplit) -> tuple[list, list | None]:
    """Per-subject ridge statistics of the site's training subjects and of its held-out ones
    (None when there are none: fewer than three subjects)."""
    held_out = has_held_out(site)
    return subject_statistics(site.train), subject_statistics(site.val) if held_out else None


def ridge_statistics(site: SiteSplit, min_subjects: int = 1) -> dict[str, np.ndarray]:
    """The exact sufficient statistics of the ridge path on this site's training subjects and on
    its held-out ones (``train.<stat>``, ``val.<stat>``): sums over all their frames — counts,
    sums, XᵀY, XᵀX and per-point Σy² — from which the server solves the ridge path of the pooled
    data exactly.

    Exact sums are not private: a sum over one subject is that subject's data, and two releases
    over windows that differ by one (``max-windows``, a preprocessing the run config chose) give
    the difference. So they leave only when the site's policy allows exact statistics
    (``refusal.exact_statistics_floor``, checked by the caller) and each sum covers at least
    ``min_subjects`` subjects: the training sum is refused below it, the held-out sum is left out
    (as on a site with no held-out subjects). Which subjects are in each sum is the site's keyed
    split, never the coordinator's choice. Under DP a site sends ``private_ridge_statistics``.

    Parameters
    ----------
    site : SiteSplit
        The site's training and held-out windows.
    min_subjects : int
        The fewest subjects a released sum covers (the site's ``min-subjects-per-release``).

    Returns
    -------
    dict of str to np.ndarray
        ``train.<stat>`` and, when its subjects are enough, ``val.<stat>``.

    Raises
    ------
    SiteRefusal
        When the training subjects are fewer than ``min_subjects``.
    """
    train, val = ridge_parts(site)
    if len(train) < min_subjects:
        raise SiteRefusal(
            f"exact ridge statistics would cover {len(train)} training subject(s), fewer than this site's "
            f"min-subjects-per-release = {min_subjects}"
        )
    out = {f"train.{k}": v for k, v in sum_statistics(train).as_arrays().items()}
    if val and len(val) >= min_subjects:
        out |= {f"val.{k}": v for k, v in sum_statistics(val).as_arrays().items()}
    return {k: np.atleast_1d(v) for k, v in out.items()}  # counts as 1-element arrays


def local_statistics(site: SiteSplit, min_subjects: int = 1) -> dict[str, np.ndarray]:
    """The exact statistics of the local path (``shared.local_path``) over the same subjects as
    ``ridge_statistics``: ``train.<stat>``, ``val.<stat>`` when its subjects are enough, and for
    fNIRS ``layout.columns`` (the source columns beneath each channel; the server has no positions).
    Empty when the site's design has no source columns. Released only where exact ridge
    statistics are (the caller's check): no DP release of the local path exists.

    Parameters
    ----------
    site : SiteSplit
        The site's training and held-out windows.
    min_subjects : int
        The fewest subjects a released sum covers.

    Returns
    -------
    dict of str to np.ndarray
        The arrays to send (none without source features).
    """
    scalp, source = split_design(np.asarray(site.train.design[:1]))
    if scalp is None or source is None:  # a local path needs a scalp+source design
        return {}
    layout = windows_layout(site.train)
    out = {f"train.{k}": v for k, v in sum_statistics(subject_local_statistics(site.train, layout)).as_arrays().items()}
    held_out = has_held_out(site)
    val = subject_local_statistics(site.val, layout) if held_out else []
    if val and len(val) >= min_subjects:
        out |= {f"val.{k}": v for k, v in sum_statistics(val).as_arrays().items()}
    if site.modality == "fnirs":
        out["layout.columns"] = layout.columns
    return out


def mixing_statistics(site: SiteSplit, model: NeuroGenModel, min_subjects: int = 1) -> np.ndarray | None:
    """The sums that choose the mix of the model's global and local paths, on the site's
    held-out subjects (``mean.validation_mixing``); None without a local path or with fewer
    held-out subjects than ``min_subjects`` (exact sums: the caller checks the site's policy).

    Parameters
    ----------
    site : SiteSplit
        The site.
    model : NeuroGenModel
        Holding the server's solved paths.
    min_subjects : int
        The fewest subjects a released sum covers (the site's ``min-subjects-per-release``).

    Returns
    -------
    np.ndarray | None
        ``[6, N]``.
    """
    held_out = has_held_out(site)
    enough = held_out and len(set(site.val.subjects.tolist())) >= min_subjects
    if not enough or model.modality_heads[site.modality].mean.local is None:
        return None
    names = site.val.target_names if site.modality == "fnirs" else None
    return validation_mixing(model, site.modality, site.val, names)


def class_residual_statistics(
    site: SiteSplit, model: NeuroGenModel, class_names: list[str], min_subjects: int = 1
) -> dict[str, np.ndarray]:  # fmt: skip
    """Per-class residual sums of the site's training and held-out windows against the model's
    solved paths (``shared.model.crossfit.ClassResiduals``): the server's class offsets. A class
    of fewer than ``min_subjects`` subjects is left out of each part (exact sums: the caller
    checks the site's policy).

    Parameters
    ----------
    site : SiteSplit
        The site.
    model : NeuroGenModel
        Holding the server's solved paths.
    class_names : list of str
        The run's classes, in label-index order.
    min_subjects : int
        The fewest subjects a released class sum covers (``min-subjects-per-release``).

    Returns
    -------
    dict of str to np.ndarray
        ``train.*`` and, with held-out subjects, ``val.*`` arrays (``ClassResiduals.to_arrays``).
    """
    head = model.modality_heads[site.modality].mean
    index = {name: i for i, name in enumerate(class_names)}
    out = class_residuals(head, site.train, index).released(min_subjects).to_arrays("train")
    if has_held_out(site):
        out.update(class_residuals(head, site.val, index).released(min_subjects).to_arrays("val"))
    return out


def noise_statistics(
    site: SiteSplit, model: NeuroGenModel, class_names: list[str], min_subjects: int = 1
) -> dict[str, np.ndarray]:  # fmt: skip
    """A sketch of the site's training residuals' covariance against the model's closed-form
    labelled mean (``shared.model.noise.NoiseSketch``): the server's noise model. Nothing (an
    empty dict) from fewer than ``min_subjects`` training subjects (exact sums: the caller
    checks the site's policy).

    Parameters
    ----------
    site : SiteSplit
        The site.
    model : NeuroGenModel
        Holding the server's solved paths and class offsets.
    class_names : list of str
        The run's classes, in label-index order.
    min_subjects : int
        The fewest subjects a released sum covers (``min-subjects-per-release``).

    Returns
    -------
    dict of str to np.ndarray
        ``NoiseSketch.to_arrays``, or empty.
    """
    if len(set(site.train.subjects.tolist())) < max(min_subjects, 1):
        return {}
    index = {name: i for i, name in enumerate(class_names)}
    return site_sketch(model.modality_heads[site.modality], site.train, index).to_arrays()


def private_ridge_statistics(
    site: SiteSplit, dp: privacy.DPSettings, ledger: privacy.PrivacyLedger, ledger_file: Path, prior: bool
) -> dict[str, np.ndarray]:
    """The private ridge path's statistics through the Gaussian mechanism, released once per run.

    Not the full path's: those of ``shared.private_path``'s small, data-independent regression
    (pooled scalp regions -> cortical eigenmodes, adapting the public prior when ``prior``),
    one subject per privacy unit (``privacy.release_statistics`` with its block weights). Asked
    again (a restarted server), the site sends the same release, saved beside its ledger, so
    nothing is spent twice. Saved before the ledger names it."""
    saved = ledger_file.with_suffix(".statistics.npz")
    if ledger.statistics is not None:
        if not saved.is_file():
            raise SiteRefusal(
                "this run's ridge statistics were released already and their saved copy is gone", f"missing {saved}"
            )
        with np.load(saved) as arrays:
            return {k: arrays[k] for k in arrays.files}
    if dp.statistics_share <= 0:
        raise SiteRefusal("ridge statistics are not released under this run's DP settings (dp-statistics-share = 0)")

    width = global_part(np.asarray(site.train.design[:1])).shape[-1]
    reduction = private_reduction(site.modality, width, site.train.target.shape[1], prior)
    held_out = has_held_out(site)
    train = reduction.subject_statistics(site.train)
    val = reduction.subject_statistics(site.val) if held_out else None
    released = privacy.release_statistics(ledger, dp, train, val, BLOCK_WEIGHTS)
    atomic_write(saved, lambda tmp: np.savez(tmp, **released))
    privacy.save_ledger(ledger_file, ledger)
    return released


def train(
    model: NeuroGenModel,
    site: SiteSplit,
    *,
    config: TrainConfig,
    epochs: int,
    class_names: list[str],
    seed: int,
    start_step: int = 0,
    proximal_mu: float = 0.0,
    deadline: float | None = None,
    dp: privacy.DPSettings | None = None,
    ledger: privacy.PrivacyLedger | None = None,
) -> dict[str, float]:
    """Train the global model on the site's training windows; returns the round's metrics.

    With ``dp`` the model is trained by DP-SGD and ``ledger`` is advanced; when the ledger has
    no budget left for this round the model is left as it came (``budget_exhausted`` = 1)."""
    class_to_index = {name: i for i, name in enumerate(class_names)} or None
    n = len(site.train)
    result = {"num-examples": n, "loss": float("nan"), "steps": 0, "budget_exhausted": 0, "train-seconds": 0.0}
    params = model.prepare_for_dp(site.modality) if dp else [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, config)
    net: torch.nn.Module = model
    if dp:
        # every epsilon is per subject: group privacy over the most windows one subject has here
        ledger.group_size = max(ledger.group_size, privacy.windows_per_subject(site.train.subjects))
        # dp-statistics-share = 1 (the default) spends the whole budget on the private ridge path:
        # nothing is left for DP-SGD, and the residual stays where it is
        spent_all = dp.statistics_share >= 1.0 or ledger.epsilon(dp.delta) >= dp.target_epsilon * (1 - 1e-6)
        planned = None if spent_all else privacy.plan_round(ledger, dp, n, config.batch_size, epochs)
        if planned is not None:
            result["noise-multiplier"] = planned[0]
        if planned is None or not privacy.budget_allows(ledger, dp, planned):
            result.update(budget_exhausted=1, **{"num-examples": 0})
            result["epsilon"] = ledger.epsilon(dp.delta)
            del result["loss"]  # a DP site sends no loss (below)
            return result
        net, optimizer, engine = privacy.make_private(model, optimizer, ledger, dp, n, config.batch_size)

    # FedProx: after every step pull the weights towards the global ones (the gradient of
    # mu/2 ||w - w_global||^2, applied like AdamW's decoupled decay so DP-SGD leaves it alone).
    anchor = [(p, p.detach().clone()) for p in params] if proximal_mu > 0 else []

    def proximal_step(step: int, parts: dict) -> None:
        lr = optimizer.param_groups[0]["lr"]
        with torch.no_grad():
            for p, g in anchor:
                p.sub_(lr * proximal_mu * (p - g))

    start = time.time()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Full backward hook", UserWarning)  # Opacus hooks on frozen inputs
        stats, _ = train_epochs(
            net,
            optimizer,
            [site.train],
            epochs=epochs,
            config=config,
            class_to_index=class_to_index,
            seed=seed,
            start_step=start_step,
            deadline=deadline,
            on_step=proximal_step if anchor else None,
            clip_gradients=not dp,
            poisson=bool(dp),
        )
    summary = stats.summary()
    result.update(loss=summary["loss"], steps=stats.steps, **{"train-seconds": time.time() - start})
    if dp:
        ledger.history = [tuple(h) for h in engine.accountant.history]
        result["epsilon"] = ledger.epsilon(dp.delta)
        del result["loss"]  # computed on the training windows outside DP-SGD's noise: withheld
    return result


@torch.no_grad()
def evaluate(
    model: NeuroGenModel,
    site: SiteSplit,
    *,
    class_names: list[str],
    batch_size: int,
    seed: int,
    pcc_windows: int = 0,
    departure_windows: int = 0,
) -> dict[str, float]:
    """Validation loss on the held-out subjects; with ``pcc_windows``, the temporal PCC of the
    label-free point prediction on the first few held-out windows; with ``departure_windows``
    (and a fitted noise model), each departure share's CRPS and the whitened mean square on the
    first few held-out windows, from which the server chooses the samples' share of the DiT's
    departure from the noise model's Gaussian and its spread (``shared/workflows/departure.py``)."""
    class_to_index = {name: i for i, name in enumerate(class_names)} or None
    val = site.val
    metrics = {"num-examples": len(val), "loss": validation_loss(model, [val], class_to_index, batch_size, seed=seed)}
    if departure_windows and model.modality_heads[site.modality].noise.fitted:
        part = val.subset(np.arange(len(val)) < departure_windows)
        metrics.update(site_scores(model, part, class_to_index or {}, seed, batch_size))
    if pcc_windows:
        index = np.arange(min(pcc_windows, len(val)))
        batch = Batch.from_windows(val, index, class_to_index, model.device)
        model.eval()
        pred = model.point_prediction(batch, use_labels=False).float().cpu().numpy()  # label-free point prediction
        pcc = temporal_pcc(pred, val.target[index], val.runs[index], val.onsets[index], val.target_sfreq)
        metrics["pcc"] = pcc if np.isfinite(pcc) else 0.0
    return {k: float(v) if isinstance(v, float) else v for k, v in metrics.items()}
