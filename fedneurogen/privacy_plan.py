"""What differential privacy will leave of the point prediction, predicted before any budget is spent.

    from fedneurogen.privacy_plan import plan
    plan(n_sites=3, subjects_per_site=8, epsilon=8.0).text

The prediction comes from a simulated *reference* consortium (``Reference``: the simulator with
its own seed, the default physiology, a few small sites; never the user's data), simulated once
and cached as compact arrays (``reference_arrays``): each reference subject's statistics of the
private path's regression (``shared.private_path``, with and without the public prior), the
test subjects' design and fMRI frames, stitched per run, and the **learning curve** of the exact
non-DP ridge path (680 features -> 5124 vertices, solved as a federation without DP solves it):
its temporal PCC on the reference test subjects when fitted on the first 2, 5, 10, ... training
subjects of every reference site.

For the consortium asked about, each noise draw draws subjects (seeded; without replacement while
the reference has enough, then with) from the reference's training and validation subjects into
``n_sites`` sites of ``subjects_per_site``,
split as sites split them (``shared.splits.split_subjects``' fractions); every site clips and
releases its statistics through the Gaussian mechanism at ``epsilon`` for one subject (the
noise multiplier of a fresh ledger, ``client.privacy``), the server screens and solves them as
``server.app.solve_global_ridge`` does (``solve_private_path``, the AdaSSP penalty floor), and
the path is scored on the reference's test subjects. The plan is the mean and spread over draws
of that score's ratio to the exact non-DP path's at the consortium's training-subject count (the
learning curve, interpolated in 1/n; beyond its last point extrapolated along its last segment).

Beyond the reference's own subjects, drawn subjects repeat real ones: there the plan models the
noise's side (how much the release's noise costs at this size and ε), not what more subjects'
diversity would add to the private path (the denominator's side is extrapolated).

It composes the simulator, the site's release (``client.privacy``) and the server's screening
and solve (``server.statistics``, ``shared.model.mean``), so it sits above those layers, as
``simulation_app.py`` does.

The cache lives in ``$FEDNEUROGEN_HOME/planner`` (else ``~/.cache/fedneurogen/planner``), one
file per reference and prior, written atomically; an unreadable or stale file is rebuilt. The
first call simulates the reference (3 sites x 30 subjects: a few minutes); later calls take seconds.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from fedneurogen.shared.errors import ConfigError

#: The reference consortium's own seed (no user's run uses it).
REFERENCE_SEED = 7919
#: Bump when what the cache holds, or how it is made, changes: older files are rebuilt.
CACHE_VERSION = 2
#: Training subjects per reference site at which the exact path's learning curve is measured
#: (capped at what a site has; its full count is always a point).
CURVE_SUBJECTS_PER_SITE = (2, 5, 10)
#: Noise draws a plan averages over.
DEFAULT_DRAWS = 16
_FIELDS = ("n", "sx", "sy", "sxx", "sxy", "syy")
_PATHS = ("prior", "pooled")  # the private path's regression with and without the public prior


@dataclass(frozen=True)
class Reference:
    """The simulated reference consortium a plan resamples (default physiology, fMRI).

    Attributes
    ----------
    n_sites, subjects_per_site : int
        Its size.
    run_seconds : float
        Length of each simulated run.
    seed : int
        The simulator's seed.
    exact_path : {"selected", "ridge"}
        How the non-DP path (the ratio's denominator) is solved: as a federation without DP
        solves it (the default: penalty, band weights and rank chosen on validation subjects, as
        the measured ratio's denominator is), or with the penalty alone (seconds: for tests).
    """

    n_sites: int = 3
    subjects_per_site: int = 30  # 20 training subjects per site: the learning curve reaches 60
    run_seconds: float = 200.0
    seed: int = REFERENCE_SEED
    exact_path: Literal["selected", "ridge"] = "selected"


@dataclass(frozen=True)
class PrivacyPlan:
    """A plan's prediction for one consortium (``plan`` makes it).

    Attributes
    ----------
    sites, subjects_per_site : int
        The consortium.
    epsilon, delta : float
        The subject-level budget.
    prior : bool
        Whether the public prior is adapted.
    ratio : float
        Predicted temporal PCC of the DP point prediction over the non-DP one's (mean over draws).
    spread : float
        Standard deviation of that ratio over noise draws (and resampled subjects).
    reduction : str
        What the sites release: ``"prior gains"`` or ``"pooled regression"``.
    inputs, outputs : int
        The released regression's dimensions.
    noise_multiplier : float
        The Gaussian mechanism's noise multiplier at ``epsilon``, ``delta``.
    penalty_floor : float
        The server's median penalty floor over draws (relative, ``fit_ridge``'s units).
    switched_off : float
        Share of draws in which the server kept the zero correction (the prior as it is, or the mean).
    training_subjects : int
        Training subjects of the whole consortium.
    reference_pcc : float
        Temporal PCC of the exact non-DP ridge path on the reference test subjects at
        ``training_subjects`` (the denominator: the learning curve, interpolated).
    draws : int
        Noise draws averaged.
    seed : int
        The plan's seed.
    text : str
        The plan in one line.
    """

    sites: int
    subjects_per_site: int
    epsilon: float
    delta: float
    prior: bool
    ratio: float
    spread: float
    reduction: str
    inputs: int
    outputs: int
    noise_multiplier: float
    penalty_floor: float
    switched_off: float
    training_subjects: int
    reference_pcc: float
    draws: int
    seed: int
    text: str

    def to_json(self) -> dict:
        """The plan as a JSON-ready dict.

        Returns
        -------
        dict
            Every attribute.
        """
        return asdict(self)


def cache_dir() -> Path:
    """The planner's cache folder: ``$FEDNEUROGEN_HOME/planner``, else ``~/.cache/fedneurogen/planner``.

    Returns
    -------
    Path
        The folder (not created).
    """
    home = os.environ.get("FEDNEUROGEN_HOME")
    return Path(home) / "planner" if home else Path.home() / ".cache" / "fedneurogen" / "planner"


def _prior_fingerprint() -> str:
    from fedneurogen.shared.private_path import load_prior

    return hashlib.sha256(np.ascontiguousarray(load_prior()["coef"], dtype=np.float64).tobytes()).hexdigest()[:16]


def cache_file(reference: Reference, folder: Path | None = None) -> Path:
    """The cache file of ``reference`` (its name carries the reference, the prior and ``CACHE_VERSION``).

    Parameters
    ----------
    reference : Reference
        The reference consortium.
    folder : Path | None
        The cache folder; None: ``cache_dir()``.

    Returns
    -------
    Path
        ``reference-<key>.npz``.
    """
    key = hashlib.sha256(repr((CACHE_VERSION, reference, _prior_fingerprint())).encode()).hexdigest()[:16]
    return (folder or cache_dir()) / f"reference-{key}.npz"


def _stitched(windows) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Test windows as continuous runs: design ``[T, D]``, target ``[T, N]`` (float32), rows of each run."""
    from fedneurogen.shared.metrics import stitch_windows

    args = (windows.runs, windows.onsets, windows.target_sfreq)
    design = stitch_windows(np.transpose(windows.design, (0, 2, 1)), *args)
    target = stitch_windows(windows.target, *args)
    runs = sorted(target)
    sizes = np.cumsum([0] + [target[r].shape[1] for r in runs])
    rows = [np.arange(sizes[i], sizes[i + 1]) for i in range(len(runs))]
    return (
        np.concatenate([design[r].T for r in runs]).astype(np.float32),
        np.concatenate([target[r].T for r in runs]).astype(np.float32),
        rows,
    )


def reference_arrays(
    root: Path, seed: int, work: Path, exact_path: Literal["selected", "ridge"] = "selected"
) -> dict[str, np.ndarray]:
    """The arrays a plan needs, from the simulated sites under ``root``.

    Parameters
    ----------
    root : Path
        Simulated fMRI sites (``site-01``, ...).
    seed : int
        Seed of the subject split (as a run's ``seed``).
    work : Path
        Preprocessing cache folder.
    exact_path : {"selected", "ridge"}
        How the non-DP path is solved (``Reference.exact_path``).

    Returns
    -------
    dict of str to np.ndarray
        Per-subject statistics ``{prior,pooled}.{train,val}.{n,sx,...}`` (stacked), the test
        frames ``test.design``, ``test.target``, ``test.run`` (run of each frame), ``test.site``
        (site of each run), ``curve.subjects`` and ``curve.pcc`` (the exact path's learning
        curve: training subjects of the whole reference, test PCC) and ``exact_pcc`` (its last point).
    """
    from fedneurogen.shared.data import load_site
    from fedneurogen.shared.design import subject_statistics
    from fedneurogen.shared.model import NeuroGenModel
    from fedneurogen.shared.model.mean import solve_ridge_path
    from fedneurogen.shared.private_path import private_reduction
    from fedneurogen.shared.ridge import fit_ridge, sum_statistics
    from fedneurogen.shared.splits import split_subjects

    reduced: dict[str, list] = {f"{path}.{part}": [] for path in _PATHS for part in ("train", "val")}
    prefixes, full_val, designs, targets, run_site = [], [], [], [], []
    run_rows: list[np.ndarray] = []
    offset = 0
    for site_index, site in enumerate(sorted(root.glob("site-*"))):
        windows = load_site(site, cache_dir=work, progress=False)
        masks = split_subjects(windows.subjects, seed=seed).masks(windows.subjects)
        train, val, test = (windows.subset(np.flatnonzero(mask)) for mask in masks)
        for path in _PATHS:
            reduction = private_reduction("fmri", windows.design.shape[-1], windows.target.shape[1], path == "prior")
            reduced[f"{path}.train"] += reduction.subject_statistics(train)
            reduced[f"{path}.val"] += reduction.subject_statistics(val)
        subjects = subject_statistics(train)
        sizes = {min(k, len(subjects)) for k in (*CURVE_SUBJECTS_PER_SITE, len(subjects))}
        prefixes.append({k: sum_statistics(subjects[:k]) for k in sizes})  # a site's first k subjects, summed
        full_val.append(sum_statistics(subject_statistics(val)))
        design, target, rows = _stitched(test)
        designs.append(design)
        targets.append(target)
        run_rows += [r + offset for r in rows]
        run_site += [site_index] * len(rows)
        offset += len(design)
    out = {f"{key}.{field}": array for key, stats in reduced.items() for field, array in stacked(stats).items()}
    out |= {
        "test.design": np.concatenate(designs),
        "test.target": np.concatenate(targets),
        "test.run": np.concatenate([np.full(len(r), i) for i, r in enumerate(run_rows)]),
        "test.site": np.array(run_site),
    }
    # The exact path's learning curve: every site's first k training subjects, k up to its count.
    model, validation = NeuroGenModel("tiny", device="cpu"), sum_statistics(full_val)
    curve = []
    for k in sorted({k for p in prefixes for k in p}):
        used = [max(j for j in p if j <= k) for p in prefixes]  # sites may have fewer training subjects
        parts = [p[j] for p, j in zip(prefixes, used)]
        if exact_path == "selected":
            solve_ridge_path(model, "fmri", parts, validation)
        else:
            total = sum_statistics(parts)
            solution = fit_ridge(total, validation)
            mean, std = total.feature_moments()
            model.modality_heads["fmri"].mean.ridge.set_solution(solution.coef, solution.intercept, mean, std + 1e-8)
        curve.append((sum(used), _path_pcc(model, out)))
    out["curve.subjects"] = np.array([n for n, _ in curve], dtype=np.float64)
    out["curve.pcc"] = np.array([pcc for _, pcc in curve])
    out["exact_pcc"] = np.array(curve[-1][1])
    return out


def exact_at(arrays: dict[str, np.ndarray], training_subjects: int) -> float:
    """The exact non-DP path's PCC at ``training_subjects``, from the reference's learning curve.

    Interpolated linearly in ``1 / n`` (a ridge fit's error falls roughly as ``1 / n``); beyond
    the curve's last point extrapolated along its last segment (never below the last point),
    before its first point the first point's value.

    Parameters
    ----------
    arrays : dict of str to np.ndarray
        The reference (``curve.subjects``, ``curve.pcc``).
    training_subjects : int
        The consortium's training subjects.

    Returns
    -------
    float
        The predicted PCC.
    """
    n, pcc = arrays["curve.subjects"], arrays["curve.pcc"]
    x, target = 1.0 / n[::-1], 1.0 / training_subjects  # ascending in 1/n
    if target >= x[0] or len(n) < 2:
        return float(np.interp(target, x, pcc[::-1]))
    slope = (pcc[-1] - pcc[-2]) / (1.0 / n[-1] - 1.0 / n[-2])
    return float(max(pcc[-1], pcc[-1] + slope * (target - 1.0 / n[-1])))


def _path_pcc(model, arrays: dict[str, np.ndarray]) -> float:
    """Temporal PCC of ``model``'s fMRI ridge path on the test frames: Fisher-z mean over each
    site's vertices and runs, then over sites (a path that does not vary scores 0), as the
    federated benchmark scores the point prediction."""
    from fedneurogen.shared.metrics import fisher_mean, pearson_rows

    coef = model.modality_heads["fmri"].mean.ridge.coef.detach().cpu().numpy()
    prediction = arrays["test.design"] @ coef  # the intercept changes no correlation
    per_site = []
    for site in np.unique(arrays["test.site"]):
        rs = [
            pearson_rows(prediction[arrays["test.run"] == run].T, arrays["test.target"][arrays["test.run"] == run].T)
            for run in np.flatnonzero(arrays["test.site"] == site)
        ]
        per_site.append(np.nan_to_num(fisher_mean(np.concatenate(rs))))
    return float(fisher_mean(np.array(per_site)))


def _read(path: Path) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None when the file is missing, unreadable or incomplete."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):  # missing, truncated or not an npz
        return None
    needed = {f"{p}.{s}.{f}" for p in _PATHS for s in ("train", "val") for f in _FIELDS}
    needed |= {"test.design", "test.target", "test.run", "test.site", "exact_pcc", "curve.subjects", "curve.pcc"}
    return arrays if needed <= arrays.keys() else None


def load_reference(reference: Reference = Reference(), folder: Path | None = None) -> dict[str, np.ndarray]:
    """The reference's cached arrays, simulated and written (atomically) when missing or corrupt.

    Parameters
    ----------
    reference : Reference
        The reference consortium.
    folder : Path | None
        The cache folder; None: ``cache_dir()``.

    Returns
    -------
    dict of str to np.ndarray
        As ``reference_arrays`` returns them.

    Raises
    ------
    ConfigError
        The cache folder cannot be written (set ``FEDNEUROGEN_HOME`` to a writable folder).
    """
    from fedneurogen.shared.io import atomic_write
    from fedneurogen.simulations.simulator import simulate_dataset

    path = cache_file(reference, folder)
    arrays = _read(path)
    if arrays is not None:
        return arrays
    try:  # before a minute of simulation, not after it
        path.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(path.parent, os.W_OK):
            raise PermissionError("not writable")
    except OSError as err:
        raise ConfigError(
            f"{path.parent}: the privacy planner cannot write its cache ({err}); "
            "set FEDNEUROGEN_HOME to a writable folder"
        ) from None
    with tempfile.TemporaryDirectory(prefix="fedneurogen-planner-") as tmp:
        root = Path(tmp) / "data"
        simulate_dataset(
            root,
            n_sites=reference.n_sites,
            subjects_per_site=reference.subjects_per_site,
            modality="fmri",
            seed=reference.seed,
            run_seconds=reference.run_seconds,
            progress=False,
        )
        arrays = reference_arrays(root, reference.seed, Path(tmp) / "cache", reference.exact_path)
    atomic_write(path, lambda tmp: np.savez(tmp, **arrays), suffix=".npz")
    return arrays


def release(clipped: dict[str, np.ndarray], counts: np.ndarray, sigma: float, clip: float, rng: np.random.Generator):
    """One site's release, as ``client.privacy.release_statistics`` makes it, with seeded noise.

    ``release_statistics`` draws its noise from the operating system (a deployed site's noise
    must not be reproducible); a plan must be, so it applies the same steps (``clip_subject``
    beforehand, the sum, ``add_gaussian_noise`` with ``BLOCK_WEIGHTS``) with ``rng``.
    ``tests/test_privacy_plan.py`` checks it against ``release_statistics``.

    Parameters
    ----------
    clipped : dict of str to np.ndarray
        Stacked per-subject statistics, each already through ``clip_subject``.
    counts : np.ndarray
        How many times each subject is in the site (a bootstrap's counts).
    sigma : float
        The noise multiplier.
    clip : float
        The per-subject clip.
    rng : np.random.Generator
        The noise's generator.

    Returns
    -------
    RidgeStatistics
        The noisy sum.
    """
    from fedneurogen.client import privacy
    from fedneurogen.shared.private_path import BLOCK_WEIGHTS
    from fedneurogen.shared.ridge import RidgeStatistics

    total = RidgeStatistics(**{f: np.tensordot(counts, clipped[f], axes=1) for f in _FIELDS})
    return privacy.add_gaussian_noise(total, sigma, clip, rng, BLOCK_WEIGHTS)


def stacked(statistics: list) -> dict[str, np.ndarray]:
    """``RidgeStatistics`` stacked field by field (``[subjects, ...]`` arrays).

    Parameters
    ----------
    statistics : list of RidgeStatistics
        One per subject.

    Returns
    -------
    dict of str to np.ndarray
        ``n``, ``sx``, ``sy``, ``sxx``, ``sxy``, ``syy``.
    """
    return {field: np.stack([np.asarray(getattr(s, field), dtype=np.float64) for s in statistics]) for field in _FIELDS}


def _draw_sites(rng: np.random.Generator, pool: int, n_sites: int, per_site: int) -> list[np.ndarray]:
    """Subjects (indices into a pool) of ``n_sites`` sites of ``per_site``: distinct while the pool has enough."""
    if n_sites * per_site <= pool:
        return np.split(rng.permutation(pool)[: n_sites * per_site], n_sites)
    return [rng.integers(pool, size=per_site) for _ in range(n_sites)]


def _subject_counts(subjects_per_site: int) -> tuple[int, int]:
    """Training and validation subjects of a site of ``subjects_per_site`` (the sites' split fractions)."""
    from fedneurogen.shared.splits import split_subjects

    split = split_subjects([f"sub-{i:04d}" for i in range(subjects_per_site)])
    return len(split.train), len(split.val)


def _check(n_sites: int, subjects_per_site: int, epsilon: float, delta: float, draws: int) -> None:
    if not (isinstance(n_sites, int) and n_sites >= 1):
        raise ConfigError(f"sites must be a whole number >= 1, not {n_sites!r}")
    if not (isinstance(subjects_per_site, int) and subjects_per_site >= 3):
        raise ConfigError(
            f"subjects per site must be a whole number >= 3 (a site holds out validation and test subjects), "
            f"not {subjects_per_site!r}"
        )
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise ConfigError(f"epsilon must be a finite number > 0, not {epsilon!r}")
    if not (0 < delta < 1):
        raise ConfigError(f"delta must lie in (0, 1), not {delta!r}")
    if draws < 1:
        raise ConfigError(f"draws must be >= 1, not {draws!r}")


def plan(
    n_sites: int,
    subjects_per_site: int,
    epsilon: float,
    delta: float = 1e-5,
    prior: bool = True,
    seed: int = 0,
    *,
    draws: int = DEFAULT_DRAWS,
    accountant: str | None = None,
    statistics_clip: float | None = None,
    reference: Reference = Reference(),
    folder: Path | None = None,
) -> PrivacyPlan:
    """Predict the DP point prediction's ratio to the non-DP one for a consortium (see the module docstring).

    Parameters
    ----------
    n_sites : int
        Sites of the consortium.
    subjects_per_site : int
        Subjects of each site (at least 3: training, validation and test).
    epsilon : float
        Subject-level ε of the release (the whole budget: ``dp-statistics-share`` 1).
    delta : float
        Its δ.
    prior : bool
        Adapt the public prior (``dp-prior = simulated``); False: the pooled regression.
    seed : int
        Seed of the resampling and the noise: the plan is a deterministic function of it.
    draws : int
        Noise draws to average.
    accountant : str | None
        ``rdp``, ``prv`` or ``pld``; None: the run config's default.
    statistics_clip : float | None
        The per-subject clip; None: the run config's default (``dp-statistics-clip``).
    reference : Reference
        The reference consortium (its cache is built on first use).
    folder : Path | None
        The cache folder; None: ``cache_dir()``.

    Returns
    -------
    PrivacyPlan
        The prediction.

    Raises
    ------
    ConfigError
        A bad value, or a cache that cannot be written.
    """
    from fedneurogen.client import privacy
    from fedneurogen.shared.model import NeuroGenModel
    from fedneurogen.shared.private_path import BLOCK_WEIGHTS, private_reduction
    from fedneurogen.shared.ridge import RidgeStatistics
    from fedneurogen.shared.run_config import RunConfig
    from fedneurogen.shared.surface import ICO4_POINTS

    _check(n_sites, subjects_per_site, epsilon, delta, draws)
    defaults = RunConfig()
    accountant = accountant or defaults.dp_accountant
    clip = defaults.dp_statistics_clip if statistics_clip is None else statistics_clip
    if accountant not in privacy.ACCOUNTANTS:
        raise ConfigError(f"accountant must be one of {', '.join(privacy.ACCOUNTANTS)}, not {accountant!r}")
    if not (math.isfinite(clip) and clip > 0):
        raise ConfigError(f"the statistics clip must be a finite number > 0, not {clip!r}")
    arrays = load_reference(reference, folder)
    name = "prior" if prior else "pooled"
    n_features = arrays["test.design"].shape[1]
    reduction = private_reduction("fmri", n_features, ICO4_POINTS, prior)
    settings = privacy.DPSettings(
        target_epsilon=epsilon, delta=delta, max_grad_norm=1.0, planned_rounds=1, accountant=accountant,
        statistics_share=1.0, statistics_clip=clip,
    )  # fmt: skip
    # Every site's ledger is fresh at release, so every site gets this noise multiplier.
    sigma = privacy.statistics_noise_multiplier(privacy.PrivacyLedger(accountant=accountant), settings)
    clipped = {  # every reference subject's statistics, clipped as a site clips them
        part: stacked(
            [
                privacy.clip_subject(
                    RidgeStatistics(**{f: arrays[f"{name}.{part}.{f}"][i] for f in _FIELDS}), clip, BLOCK_WEIGHTS
                )
                for i in range(len(arrays[f"{name}.{part}.n"]))
            ]
        )
        for part in ("train", "val")
    }
    n_train, n_val = _subject_counts(subjects_per_site)
    model = NeuroGenModel("tiny", device="cpu")
    exact = exact_at(arrays, n_sites * n_train)
    draws_out = [
        _one_draw(
            np.random.default_rng([seed, draw]),
            clipped,
            n_sites,
            (n_train, n_val),
            sigma,
            clip,
            model,
            reduction,
            arrays,
            exact,
        )
        for draw in range(draws)
    ]
    ratios, floors, off = (list(column) for column in zip(*draws_out))
    ratio, spread = float(np.mean(ratios)), float(np.std(ratios))
    label = "prior gains" if prior else "pooled regression"
    inputs, outputs = reduction.n_inputs, reduction.n_outputs(ICO4_POINTS)
    text = (
        f"{n_sites} site(s) x {subjects_per_site} subjects at epsilon {epsilon:g} (delta {delta:g}) per subject: "
        f"predicted {ratio:.2f} +- {spread:.2f} of the non-DP point prediction; releases the {label} "
        f"({inputs} -> {outputs}), noise multiplier {sigma:.3g}"
    )
    return PrivacyPlan(
        sites=n_sites, subjects_per_site=subjects_per_site, epsilon=float(epsilon), delta=float(delta), prior=prior,
        ratio=ratio, spread=spread, reduction=label, inputs=inputs, outputs=outputs, noise_multiplier=float(sigma),
        penalty_floor=float(np.median(floors)), switched_off=float(np.mean(off)), training_subjects=n_sites * n_train,
        reference_pcc=exact, draws=draws, seed=seed, text=text,
    )  # fmt: skip


def _one_draw(
    rng: np.random.Generator,
    clipped: dict,
    n_sites: int,
    counts: tuple[int, int],
    sigma: float,
    clip: float,
    model,
    reduction,
    arrays: dict,
    exact: float,
) -> tuple[float, float, bool]:
    """One draw of ``plan``: sites resampled from the clipped reference subjects (``counts``:
    training and held-out subjects a site), their noisy releases, the server's policy and solve
    as ``solve_global_ridge`` applies them. Returns (ratio to the exact path, penalty floor,
    switched off)."""
    from fedneurogen.server.statistics import cap_shares, screen_sites
    from fedneurogen.shared.model.mean import solve_private_path
    from fedneurogen.shared.private_path import release_noise_std
    from fedneurogen.shared.ridge import sum_statistics
    from fedneurogen.shared.surface import ICO4_POINTS

    released: dict[str, list] = {"train": [], "val": []}
    for part, count in zip(("train", "val"), counts):
        pool = clipped[part]
        for members in _draw_sites(rng, len(pool["n"]), n_sites, count):
            noisy = release(pool, np.bincount(members, minlength=len(pool["n"])), sigma, clip, rng)
            noisy.n = max(noisy.n, 1.0)  # as the server reads a noisy count
            released[part].append(noisy)
    screened = screen_sites(released["train"], noisy=True, drop_inconsistent=True)
    vals, _ = cap_shares(released["val"])
    noise_std = release_noise_std(sigma * clip, 1.0, "sxx") * math.sqrt(len(screened.parts))
    choice = solve_private_path(model, "fmri", screened.parts, sum_statistics(vals), reduction, noise_std, ICO4_POINTS)
    ratio = _path_pcc(model, arrays) / exact if exact > 0 else 0.0
    return ratio, choice["penalty_floor"], choice["switched_off"]


def privacy_plan_line(run, sites: list[Path]) -> str:
    """One line: the privacy planner's prediction for this consortium (``plan``).

    Parameters
    ----------
    run : RunConfig
        The run's config (its ``dp-target-epsilon`` times ``dp-statistics-share``: the ridge
        statistics' share of the budget, ``dp-delta``, ``dp-prior``, ``dp-accountant``,
        ``dp-statistics-clip``).
    sites : list of Path
        The run's site folders (their ``sub-*`` folders are counted).

    Returns
    -------
    str
        The plan, or why there is none (the run goes on either way).
    """
    if run.dp_statistics_share <= 0:
        return "round 0: dp-statistics-share = 0 releases no ridge statistics: no privacy plan"
    subjects = [len([p for p in site.glob("sub-*") if p.is_dir()]) for site in sites]
    per_site = round(sum(subjects) / max(len(subjects), 1))
    try:
        epsilon = run.dp_target_epsilon * run.dp_statistics_share
        _check(
            len(sites), per_site, epsilon, run.dp_delta, DEFAULT_DRAWS
        )  # a question it cannot answer: say so at once
        if not cache_file(Reference()).is_file():
            print("round 0: simulating the privacy planner's reference consortium (once; then cached)", flush=True)
        found = plan(
            len(sites), per_site, epsilon, run.dp_delta,
            prior=run.dp_prior == "simulated", accountant=run.dp_accountant, statistics_clip=run.dp_statistics_clip,
        )  # fmt: skip
    except Exception as err:  # a prediction only: no failure of it may stop the run
        reason = " ".join(str(err).split())[:300]  # one line
        return f"round 0: no privacy plan ({type(err).__name__}: {reason}); the run goes on"
    return f"round 0 (no budget spent yet), privacy plan: {found.text}"
