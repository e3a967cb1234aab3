"""Loading a whole site: every usable run, paired, combined and cached."""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..config import PreprocessConfig
from ..design import n_design_features
from ..errors import ConfigError, DataError
from ..outputs import check_outside_inputs
from ..recording import PairedWindows
from .bids import RunFiles, find_runs, read_participants, target_search_text
from .cache import SiteCache
from .eeg import read_eeg
from .fmri import read_fmri, repetition_time
from .fnirs import read_fnirs
from .pairing import RunWindows, check_durations, check_history, combine_runs, cut_windows
from .problems import Problem, warn_problem

log = logging.getLogger(__name__)

_EEG_PATTERN = "sub-*/[ses-*/]eeg/sub-*_task-*_eeg.{edf,bdf,vhdr,set,fif}"
#: What ``load_run`` says of a run without a target; ``LoadedSite.warn`` counts such runs in one line.
EEG_ONLY = "EEG only, no fMRI or fNIRS recording to pair with"
_SUBJECT = re.compile(r"sub-[A-Za-z0-9]+")  # a subject folder


@dataclass
class LoadedSite:
    """What ``load_site_data`` returns: the windows and what was left out, and why (before any
    split into training and validation subjects: that is ``fedneurogen.client.site.SiteSplit``).

    Parameters
    ----------
    windows : PairedWindows
        All windows of the usable runs.
    skipped : list of Problem
        The runs not used, one problem each.
    warnings : list of Problem
        Other problems worked around.
    from_cache : bool
        Whether the windows were read from the cache.
    cache_key : str or None
        The cache key of the site's inputs and settings (None without the cache).
    site_dir : Path or None
        The site's folder, which ``warn`` names in its line on the EEG-only runs (None: the
        folder above their ``sub-*`` folders).
    """

    windows: PairedWindows
    skipped: list[Problem] = field(default_factory=list)  # runs not used, one problem each
    warnings: list[Problem] = field(default_factory=list)  # other problems worked around
    from_cache: bool = False
    cache_key: str | None = None
    site_dir: Path | None = None

    def warn(self) -> None:
        """Emit every skipped run and worked-around problem as a ``DataWarning`` naming the file;
        the EEG-only runs (expected, not errors) as one line per site that counts them."""
        eeg_only = [p for p in self.skipped if EEG_ONLY in p.message]
        for problem in self.skipped + self.warnings:
            if problem not in eeg_only:
                warn_problem(problem)
        if eeg_only:
            site = self.site_dir or _common_site(eeg_only)
            subjects = sorted({part for p in eeg_only for part in p.path.parts if _SUBJECT.fullmatch(part)})
            named = ", ".join(subjects[:5]) + (", ..." if len(subjects) > 5 else "")
            message = (
                f"{len(eeg_only)} EEG-only run(s) skipped ({named}): {EEG_ONLY}; not trained on, "
                "`augment --eeg-only` can generate their target; `fedneurogen validate` lists each"
            )
            warn_problem(Problem(site, message, "warning"))


def _common_site(problems: list[Problem]) -> Path:
    """The site folder of runs' problems: the folder above their subject folder (``sub-<label>``)."""
    common = Path(os.path.commonpath([str(p.path) for p in problems]))
    subject = [i for i, part in enumerate(common.parts) if _SUBJECT.fullmatch(part)]
    return Path(*common.parts[: subject[-1]]) if subject else common


def site_inputs(site_dir: Path, runs: list[RunFiles]) -> list[Path]:
    """List every file whose content feeds a site's windows.

    Parameters
    ----------
    site_dir : Path
        The site's folder.
    runs : list of RunFiles
        The site's runs.

    Returns
    -------
    list of Path
        Each run's input files, and ``participants.tsv`` and ``participants.json`` (its missing
        values) when they exist.
    """
    files = [f for run in runs for f in run.inputs()]
    for name in ("participants.tsv", "participants.json"):
        if (site_dir / name).is_file():
            files.append(site_dir / name)
    return files


def load_run(run: RunFiles, config: PreprocessConfig) -> RunWindows:
    """Read, preprocess and window one run.

    Parameters
    ----------
    run : RunFiles
        The run's files.
    config : PreprocessConfig
        Preprocessing and windowing settings.

    Returns
    -------
    RunWindows
        The run's paired windows.

    Raises
    ------
    DataError
        Naming the file, for any problem (including an EEG-only run, which has no target).
    """
    if run.target_modality is None:
        raise DataError(
            run.eeg,
            f"{EEG_ONLY} ({target_search_text(run.site_dir, run)}): "
            "not trained on; `augment --eeg-only` can generate its target",
        )
    if run.target_modality == "fmri":
        tr = repetition_time(run.target[0], run.target_sidecars)
        target = read_fmri(run.target, config, tr=tr)
        period = tr
    else:
        target = read_fnirs(run.target[0], config)
        period = 1.0 / target.sfreq
    eeg, events = read_eeg(run.eeg, config, files=run)
    check_durations(eeg.duration, run.eeg, target.duration, run.target[0], period, config)
    check_history(target, run.target[0], run.key, config)
    return cut_windows(eeg, target, events, config, run=run.key, subject=run.subject)


def select_runs(runs: list[RunFiles], subjects: list[str] | tuple[str, ...], site_dir: Path) -> list[RunFiles]:
    """The runs of some subjects.

    Parameters
    ----------
    runs : list of RunFiles
        The site's runs.
    subjects : list of str
        Subjects, ``sub-01`` or ``01``.
    site_dir : Path
        The site (for the message).

    Returns
    -------
    list of RunFiles
        Their runs.

    Raises
    ------
    ConfigError
        A subject has no EEG run in the site (the message lists the site's subjects).
    """
    wanted = {s if s.startswith("sub-") else f"sub-{s}" for s in subjects}
    have = sorted({r.subject for r in runs})
    missing = sorted(wanted - set(have))
    if missing:
        raise ConfigError(f"subjects {missing} have no EEG run in {site_dir} (it has {have})")
    return [r for r in runs if r.subject in wanted]


def _portable(problem: Problem, site_dir: Path) -> dict[str, str]:
    """A problem for the cache, its path relative to the site: the cache is keyed by content,
    so another folder with the same files reads it back and must see its own paths."""
    d = problem.to_dict()
    try:
        d["path"] = str(Path(d["path"]).relative_to(site_dir))
    except ValueError:  # outside the site (e.g. a cache folder): kept as it is
        pass
    return d


def _rooted(d: dict[str, str], site_dir: Path) -> Problem:
    problem = Problem.from_dict(d)
    return (
        problem if problem.path.is_absolute() else Problem(site_dir / problem.path, problem.message, problem.severity)
    )


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[run]}"),
        console=Console(stderr=True),
        transient=True,
        disable=not enabled,
    )


def load_site_data(
    site_dir: str | Path,
    config: PreprocessConfig | None = None,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    progress: bool = True,
    subjects: list[str] | tuple[str, ...] | None = None,
) -> LoadedSite:
    """Load a site like ``load_site``, returning the skipped runs and warnings instead of emitting them.

    Parameters
    ----------
    site_dir : path-like
        The site's BIDS folder.
    config : PreprocessConfig, optional
        Preprocessing and windowing parameters.
    cache_dir : path-like, optional
        Cache folder; default ``$FEDNEUROGEN_CACHE`` or ``~/.cache/fedneurogen``.
    use_cache : bool
        Read and write the cache.
    progress : bool
        Show a progress bar on stderr while runs are processed.
    subjects : list of str, optional
        Load only these subjects' runs (``sub-01`` or ``01``); None: every subject.

    Returns
    -------
    LoadedSite
        The windows, the skipped runs and the other problems (``LoadedSite.warn`` emits them).

    Raises
    ------
    DataError
        When no run is usable (empty dataset, every run broken).
    ConfigError
        A subject in ``subjects`` has no EEG run in the site, or the cache folder lies inside the
        site.
    """
    site_dir = Path(site_dir)
    config = config or PreprocessConfig()
    runs = find_runs(site_dir)
    if not runs:
        raise DataError(site_dir, f"empty dataset: no EEG runs found (expected {_EEG_PATTERN})")
    if subjects:
        runs = select_runs(runs, subjects, site_dir)

    cache = key = None
    if use_cache:
        cache, key, hit = _cache_lookup(site_dir, runs, config, cache_dir)
        if hit is not None:
            return hit

    warned: list[Problem] = []
    participants = _site_participants(site_dir, warned)
    # With the cache, each run is written to disk as soon as it is read and the site's arrays are
    # built there, memory-mapped: loading holds one run in RAM, not the site.
    staged = _staging_folder(cache, key, site_dir, warned)
    try:
        usable, skipped = _load_runs(runs, config, site_dir, staged, progress)
        allocate = None if staged is None else cache.allocator(staged)
        windows, combine_warnings = combine_runs(usable, participants, config, site_dir, allocate=allocate)
        warned += combine_warnings
        if participants:
            for subject in sorted(set(windows.subjects.tolist()) - set(participants)):
                message = f"subject {subject} is missing: its windows get no attributes"
                warned.append(Problem(site_dir / "participants.tsv", message, "warning"))
        if staged is not None:
            shutil.rmtree(staged / "runs", ignore_errors=True)
            extra = {
                "subjects": sorted({r.subject for r in runs}) if subjects else None,  # a subset's entry
                "skipped": [_portable(p, site_dir) for p in skipped],
                "warnings": [_portable(p, site_dir) for p in warned],
            }
            try:
                cache.store(site_dir, key, windows, config, extra, staged)
            except OSError as err:
                # The windows are good (their files stay mapped); an unwritable cache only costs time.
                warned.append(Problem(cache.dir, f"cache not written ({err.strerror or err})", "warning"))
    finally:
        if staged is not None and staged.exists():  # not published: an error, or the store failed
            shutil.rmtree(staged, ignore_errors=True)
    log.debug("%s: %d windows from %d of %d run(s)", site_dir, len(windows), len(usable), len(runs))
    return LoadedSite(
        windows=windows, skipped=skipped, warnings=warned, from_cache=False, cache_key=key, site_dir=site_dir
    )


def _cache_lookup(
    site_dir: Path, runs: list[RunFiles], config: PreprocessConfig, cache_dir: str | Path | None
) -> tuple[SiteCache, str, LoadedSite | None]:
    """Open the cache (refused inside the site), key the site's inputs; the site as cached if there is a hit."""
    cache = SiteCache(cache_dir)
    check_outside_inputs(cache.dir, [site_dir], what="the cache folder", around=False)  # data is read-only
    key = cache.key(site_dir, site_inputs(site_dir, runs), config)
    hit = cache.load(site_dir, key)
    if hit is None:
        return cache, key, None
    windows, meta = hit
    width, expected = windows.design.shape[-1], n_design_features(config)
    if width != expected:  # an entry from another form of the design under the same key: remade, never used
        log.warning(
            "%s: the cached design has %d columns where this preprocessing gives %d; remaking it",
            site_dir,
            width,
            expected,
        )
        return cache, key, None
    log.debug("%s: %d windows read from the cache", site_dir, len(windows))
    loaded = LoadedSite(
        windows=windows,
        skipped=[_rooted(p, site_dir) for p in meta.get("skipped", [])],
        warnings=[_rooted(p, site_dir) for p in meta.get("warnings", [])],
        from_cache=True,
        cache_key=key,
        site_dir=site_dir,
    )
    return cache, key, loaded


def _site_participants(site_dir: Path, warned: list[Problem]) -> dict[str, dict[str, str]]:
    """Read ``participants.tsv`` (empty if absent or broken, with a warning added to ``warned``)."""
    try:
        participants = read_participants(site_dir)
        if not participants:
            warned.append(Problem(site_dir / "participants.tsv", "missing: windows get no group attributes", "warning"))
    except DataError as err:
        participants = {}
        warned.append(Problem(err.path, f"{err.problem}; windows get no group attributes", "warning"))
    return participants


def _staging_folder(cache: SiteCache | None, key: str | None, site_dir: Path, warned: list[Problem]) -> Path | None:
    """The cache's staging folder for this site, or None (no cache, or it cannot be written: noted in ``warned``)."""
    staged = None
    if cache is not None and key is not None:
        try:
            staged = cache.staging(site_dir, key)
        except OSError as err:
            warned.append(
                Problem(cache.dir, f"cache not written ({err.strerror or err}); the site is loaded in RAM", "warning")
            )
    return staged


def _load_runs(
    runs: list[RunFiles], config: PreprocessConfig, site_dir: Path, staged: Path | None, progress: bool
) -> tuple[list[RunWindows], list[Problem]]:
    """Load every run (spilled under ``staged`` if given); return the usable ones and the skipped runs' problems.

    Broken runs come first in the problems, then the runs that give no window. Raises ``DataError`` when no run is
    usable.
    """
    skipped: list[Problem] = []
    usable: list[RunWindows] = []
    empty: list[Problem] = []  # runs read fine that give no window (reported after the broken ones)
    with _progress(progress) as bar:
        task = bar.add_task(f"Loading {site_dir.name}", total=len(runs), run="")
        for number, run in enumerate(runs):
            bar.update(task, run=run.key)
            try:
                run_windows = load_run(run, config)
            except DataError as err:
                skipped.append(Problem(err.path, f"run {run.key} skipped: {err.problem}", "error"))
            else:
                if not len(run_windows.labels):
                    message = f"run {run_windows.run} gives no windows (shorter than the history + one window?)"
                    empty.append(Problem(site_dir / run_windows.run, message, "warning"))
                else:
                    if staged is not None:
                        run_windows.spill(staged / "runs", number)
                    usable.append(run_windows)
            bar.advance(task)
    skipped += empty
    if not usable:
        reasons = "; ".join(str(p) for p in skipped[:3]) + (" ..." if len(skipped) > 3 else "")
        raise DataError(site_dir, f"no usable runs: all {len(runs)} run(s) were skipped ({reasons})")
    return usable, skipped


def load_site(
    site_dir: str | Path,
    config: PreprocessConfig | None = None,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    progress: bool = True,
    subjects: list[str] | tuple[str, ...] | None = None,
) -> PairedWindows:
    """Load a BIDS site as paired EEG/target windows, preprocessed and cached.

    Parameters
    ----------
    site_dir : path-like
        The site's BIDS folder (see ``docs/data-contract.md``).
    config : PreprocessConfig, optional
        Preprocessing and windowing parameters (defaults per docs/architecture.md §3).
    cache_dir : path-like, optional
        Cache folder; default ``$FEDNEUROGEN_CACHE`` or ``~/.cache/fedneurogen``.
    use_cache : bool
        Read and write the cache (keyed by the content of every input file and the config).
    progress : bool
        Show a progress bar on stderr while runs are processed.
    subjects : list of str, optional
        Load only these subjects' runs (``sub-01`` or ``01``); None: every subject.

    Returns
    -------
    PairedWindows
        All windows of all usable runs. Broken runs are skipped with a ``DataWarning`` naming
        the file and the problem (``load_site_data`` returns them as a list).

    Raises
    ------
    DataError
        When no run is usable (empty dataset, every run broken).
    ConfigError
        A subject in ``subjects`` has no EEG run in the site.
    """
    data = load_site_data(
        site_dir, config, cache_dir=cache_dir, use_cache=use_cache, progress=progress, subjects=subjects
    )
    data.warn()
    return data.windows
