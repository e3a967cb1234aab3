"""Finding the runs of a BIDS site and the files that belong to each (data contract, section 3).

A *run* is one EEG recording, ``sub-X/[ses-Y/]eeg/sub-X_..._eeg.<ext>``, together with the
target recorded at the same time: fMRIPrep surface (GIFTI) or volume (NIfTI) BOLD under
``derivatives/fmriprep`` (or a versioned ``derivatives/fmriprep-<version>``: see
``fmriprep_dirs``), or a BIDS-NIRS SNIRF file. Runs are matched on the ``sub``, ``ses``,
``task`` and ``run`` entities (``run-01`` and ``run-1`` are the same run).

Sidecars follow the BIDS inheritance principle: the closest file whose entities are a subset
of the data file's entities wins (``sub-01_electrodes.tsv`` applies to every run of sub-01,
``task-visual_bold.json`` at the root to every visual run).

File names are parsed directly (no directory-wide BIDS indexing), which keeps ``find_runs``
fast on large sites.

The readers of BIDS text files (``read_json``, ``read_tsv``, ``read_participants``,
``attribute_kind``, ``read_events``, ``MISSING``) live in ``bids_text`` and are importable from
here too.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path


from ..errors import DataError
from .bids_text import (
    MAX_GROUP_LEVELS,
    MISSING,
    AttributeKind,
    attribute_kind,
    is_missing,
    missing_levels,
    participants_sidecar,
    read_events,
    read_json,
    read_participants,
    read_tsv,
)

# the readers of BIDS text files live in ``bids_text``; they are importable from here too
__all__ = [
    "EEG_EXTENSIONS", "FMRIPREP_DIR", "MAX_GROUP_LEVELS", "MISSING", "RUN_ENTITIES", "AttributeKind", "BidsName",
    "RunFiles", "attribute_kind", "brainvision_references", "find_runs", "find_sidecar", "find_sidecars",
    "fmriprep_dirs", "is_missing", "missing_levels", "orphan_targets", "parse_bids_name", "participants_sidecar",
    "read_events", "read_json", "read_participants", "read_tsv", "run_files_for_eeg", "target_search_text",
    "tr_sidecar_candidates",
]  # fmt: skip

EEG_EXTENSIONS = (".edf", ".bdf", ".vhdr", ".set", ".fif")
#: Entities that identify a run; others (acq, space, desc, hemi, ...) do not.
RUN_ENTITIES = ("sub", "ses", "task", "run")
FMRIPREP_DIR = ("derivatives", "fmriprep")


@dataclass(frozen=True)
class BidsName:
    """A parsed BIDS file name: ``sub-01_task-rest_eeg.edf`` -> entities, suffix, extension.

    Attributes
    ----------
    entities : dict of str to str
        ``{"sub": "01", "task": "rest"}``, in file-name order.
    suffix : str
        ``"eeg"``.
    extension : str
        ``".edf"``, multi-part where the name has one (``".nii.gz"``); ``""`` when none.
    """

    entities: dict[str, str]
    suffix: str
    extension: str


def parse_bids_name(name: str) -> BidsName:
    """Split a BIDS file name into its entities, suffix and (multi-part) extension.

    Parameters
    ----------
    name : str
        A file name (no folder).

    Returns
    -------
    BidsName
        Its parts; parts without a ``-`` are not entities and are dropped.
    """
    stem, _, last = name.rpartition("_")
    suffix, dot, ext = last.partition(".")
    entities: dict[str, str] = {}
    for part in stem.split("_") if stem else []:
        key, sep, value = part.partition("-")
        if sep:
            entities[key] = value
    return BidsName(entities, suffix, dot + ext)


def _norm(key: str, value: str | None) -> str | None:
    # run-01 and run-1 name the same run.
    if value is not None and key == "run" and value.isdigit():
        return str(int(value))
    return value


def _same_run(a: dict[str, str], b: dict[str, str]) -> bool:
    return all(_norm(k, a.get(k)) == _norm(k, b.get(k)) for k in RUN_ENTITIES)


@dataclass
class RunFiles:
    """Every file of one (subject, session, task, run): the EEG, its target and their sidecars.

    Attributes
    ----------
    site_dir : Path
        The BIDS root of the site.
    subject : str
        ``"sub-01"``.
    session : str | None
        ``"ses-1"`` or None.
    task : str
        The task entity.
    run : str | None
        The run entity without leading zeros; None when the name has none.
    eeg : Path
        The EEG file.
    eeg_companions : list of Path
        Files the EEG format reads besides it (BrainVision ``.vmrk``/``.eeg``, EEGLAB ``.fdt``).
    eeg_sidecar, channels, events, electrodes, coordsystem : Path | None
        ``_eeg.json``, ``_channels.tsv``, ``_events.tsv`` (the EEG's own, else the target's),
        ``_electrodes.tsv`` and its ``_coordsystem.json``, found by BIDS inheritance.
    target_modality : {"fmri", "fnirs"} | None
        None when the run has no target.
    target : list of Path
        ``[hemi-L, hemi-R]`` GIFTI, ``[NIfTI]`` or ``[SNIRF]``.
    target_sidecars : list of Path
        JSON sidecars of the target, in the order ``RepetitionTime`` is searched.
    """

    site_dir: Path
    subject: str  # "sub-01"
    session: str | None  # "ses-1" or None
    task: str
    run: str | None
    eeg: Path
    eeg_companions: list[Path] = field(default_factory=list)  # .vmrk/.eeg, .fdt
    eeg_sidecar: Path | None = None  # _eeg.json
    channels: Path | None = None  # _channels.tsv
    events: Path | None = None  # _events.tsv (EEG's own, else the target's)
    electrodes: Path | None = None  # _electrodes.tsv
    coordsystem: Path | None = None  # _coordsystem.json
    target_modality: str | None = None  # "fmri", "fnirs" or None
    target: list[Path] = field(default_factory=list)  # [hemi-L, hemi-R] GIFTI, [NIfTI] or [SNIRF]
    target_sidecars: list[Path] = field(default_factory=list)  # JSON, in the order TR is searched

    @property
    def key(self) -> str:
        """Run identifier used in ``PairedWindows.runs``: ``sub-01_ses-1_task-visual_run-1``."""
        parts = [self.subject]
        if self.session:
            parts.append(self.session)
        parts.append(f"task-{self.task}")
        if self.run is not None:
            parts.append(f"run-{self.run}")
        return "_".join(parts)

    def inputs(self) -> list[Path]:
        """All existing files whose content feeds this run's windows (for the cache key).

        Returns
        -------
        list of Path
            The EEG, its companions and sidecars, the target files and their sidecars.
        """
        files = [self.eeg, *self.eeg_companions]
        files += [p for p in (self.eeg_sidecar, self.channels, self.events, self.electrodes, self.coordsystem) if p]
        files += self.target + self.target_sidecars
        return files


class _Listing:
    """``os.listdir`` with a per-call cache: sidecar searches look at the same folders often."""

    def __init__(self) -> None:
        self._cache: dict[Path, list[str]] = {}

    def names(self, folder: Path) -> list[str]:
        if folder not in self._cache:
            try:
                self._cache[folder] = sorted(os.listdir(folder))
            except OSError:
                self._cache[folder] = []
        return self._cache[folder]


def find_sidecars(
    data_path: Path,
    suffix: str,
    extension: str,
    site_dir: Path,
    *,
    allow_extra: tuple[str, ...] = (),
    listing: _Listing | None = None,
) -> list[Path]:
    """Every sidecar ``*_<suffix><extension>`` that applies to ``data_path``, nearest first.

    Searches the data file's folder and its parents up to ``site_dir`` (BIDS inheritance); in
    each folder a file applies when its entities are a subset of the data file's (entities named
    in ``allow_extra``, e.g. ``space`` for electrodes, may differ). Within a folder, files with
    more matching entities come first.

    Parameters
    ----------
    data_path : Path
        The data file the sidecars belong to.
    suffix : str
        Sidecar suffix (``"channels"``).
    extension : str
        Sidecar extension (``".tsv"``).
    site_dir : Path
        The BIDS root: the search stops there.
    allow_extra : tuple of str
        Entities a sidecar may have that the data file lacks or has otherwise.
    listing : optional
        A folder-listing cache shared by searches of one site (internal); None: a new one.

    Returns
    -------
    list of Path
        The applicable sidecars, nearest first.
    """
    listing = listing or _Listing()
    data_entities = parse_bids_name(data_path.name).entities
    site_dir = site_dir.resolve()
    folder = data_path.parent.resolve()
    found: list[Path] = []
    while True:
        here: list[tuple[int, Path]] = []
        for name in listing.names(folder):
            parsed = parse_bids_name(name)
            if parsed.suffix != suffix or parsed.extension != extension:
                continue
            ents = {k: v for k, v in parsed.entities.items() if k not in allow_extra}
            if all(_norm(k, data_entities.get(k)) == _norm(k, v) for k, v in ents.items()):
                here.append((-len(ents), folder / name))
        found += [p for _, p in sorted(here)]
        if folder == site_dir or folder.parent == folder:
            return found
        folder = folder.parent


def find_sidecar(data_path: Path, suffix: str, extension: str, site_dir: Path, **kwargs) -> Path | None:
    """The nearest applicable sidecar (see ``find_sidecars``).

    Parameters
    ----------
    data_path : Path
        The data file the sidecar belongs to.
    suffix : str
        Sidecar suffix (``"events"``).
    extension : str
        Sidecar extension (``".tsv"``).
    site_dir : Path
        The BIDS root.
    **kwargs
        ``allow_extra`` and ``listing`` of ``find_sidecars``.

    Returns
    -------
    Path | None
        The sidecar; None when none applies.
    """
    found = find_sidecars(data_path, suffix, extension, site_dir, **kwargs)
    return found[0] if found else None


def _site_root_of(path: Path) -> Path:
    """The BIDS root above ``.../sub-X/[ses-Y/]<datatype>/file``."""
    for parent in path.resolve().parents:
        if parent.name.startswith("sub-"):
            return parent.parent
    return path.resolve().parent


def brainvision_references(header: Path) -> list[tuple[int, str, str]]:
    """The data and marker files a BrainVision header names (``DataFile=``, ``MarkerFile=``).

    Parameters
    ----------
    header : Path
        The ``.vhdr`` file (read as Latin-1).

    Returns
    -------
    list of (int, str, str)
        ``(line number, key, file name)`` per reference, file names as written.

    Raises
    ------
    OSError
        The header cannot be read.
    """
    found = []
    for number, line in enumerate(header.read_text(encoding="latin-1", errors="replace").splitlines(), start=1):
        key, sep, value = line.partition("=")
        if sep and key.strip() in ("DataFile", "MarkerFile") and value.strip():
            found.append((number, key.strip(), value.strip()))
    return found


def _companions(eeg: Path) -> list[Path]:
    """Files a multi-file EEG format reads besides the one it is opened with."""
    ext = eeg.suffix.lower()
    found: list[Path] = []
    if ext == ".vhdr":
        try:
            found += [eeg.parent / name for _, _, name in brainvision_references(eeg)]
        except OSError:
            pass
    elif ext == ".set":
        found.append(eeg.with_suffix(".fdt"))
    return [p for p in found if p.is_file()]


def _subject_dirs(site_dir: Path, subject: str, session: str | None, datatype: str, root: Path | None = None) -> Path:
    base = (root or site_dir) / subject
    if session:
        base = base / session
    return base / datatype


def _build_run(eeg: Path, site_dir: Path, listing: _Listing) -> RunFiles | None:
    parsed = parse_bids_name(eeg.name)
    ents = parsed.entities
    if "sub" not in ents or "task" not in ents:
        return None
    subject = f"sub-{ents['sub']}"
    session = f"ses-{ents['ses']}" if "ses" in ents else None
    stem = eeg.name[: -len("_eeg" + parsed.extension)]
    folder = eeg.parent

    def own(suffix_ext: str) -> Path | None:
        p = folder / f"{stem}_{suffix_ext}"
        return p if p.is_file() else None

    run = RunFiles(
        site_dir=site_dir,
        subject=subject,
        session=session,
        task=ents["task"],
        run=_norm("run", ents.get("run")),
        eeg=eeg,
        eeg_companions=_companions(eeg),
        eeg_sidecar=own("eeg.json") or find_sidecar(eeg, "eeg", ".json", site_dir, listing=listing),
        channels=own("channels.tsv") or find_sidecar(eeg, "channels", ".tsv", site_dir, listing=listing),
        events=own("events.tsv") or find_sidecar(eeg, "events", ".tsv", site_dir, listing=listing),
        electrodes=find_sidecar(eeg, "electrodes", ".tsv", site_dir, allow_extra=("space",), listing=listing),
    )
    if run.electrodes is not None:
        # The coordinate system that goes with the electrodes file: same folder, its entities
        # (space included) a subset of the electrodes file's.
        electrode_entities = parse_bids_name(run.electrodes.name).entities
        for name in listing.names(run.electrodes.parent):
            p = parse_bids_name(name)
            same_space = p.entities.get("space") == electrode_entities.get("space")
            if p.suffix == "coordsystem" and p.extension == ".json" and same_space:
                if all(electrode_entities.get(k) == v for k, v in p.entities.items()):
                    run.coordsystem = run.electrodes.parent / name
                    break
    _attach_target(run, ents, site_dir, listing)
    return run


def _matching(folder: Path, ents: dict[str, str], suffix: str, listing: _Listing) -> list[tuple[str, BidsName]]:
    out = []
    for name in listing.names(folder):
        p = parse_bids_name(name)
        if p.suffix == suffix and _same_run(p.entities, ents):
            out.append((name, p))
    return out


def fmriprep_dirs(site_dir: str | Path) -> list[Path]:
    """The fMRIPrep derivatives folders of a site, in the order their targets are taken.

    ``derivatives/fmriprep`` first, then versioned folders (``derivatives/fmriprep-23.2.1``,
    ``fmriprep_v24``, ...), the highest version first; a run's target comes from the first folder
    that has one. The unversioned folder is always listed (it may not exist) so that messages can
    name it.

    Parameters
    ----------
    site_dir : str | Path
        The BIDS root of the site.

    Returns
    -------
    list of Path
        The folders, the unversioned one first.
    """
    root = Path(site_dir).joinpath(*FMRIPREP_DIR)
    try:
        versioned = [p for p in root.parent.iterdir() if p.name.lower().startswith("fmriprep") and p != root]
    except OSError:
        versioned = []

    def version(path: Path) -> list:  # fmriprep-23.2.1 after fmriprep-9.0: numbers compare as numbers
        return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", path.name)]

    return [root, *sorted((p for p in versioned if p.is_dir()), key=version, reverse=True)]


def target_search_text(site_dir: str | Path, run: RunFiles | None = None) -> str:
    """Where a run's fMRI or fNIRS target is looked for, in words (for "EEG only" messages).

    Parameters
    ----------
    site_dir : str | Path
        The BIDS root of the site.
    run : RunFiles, optional
        The run: its own folders are named; None: the pattern for any run.

    Returns
    -------
    str
        E.g. ``looked for sub-01_task-visual_run-1 BOLD (...) in derivatives/fmriprep/sub-01/func
        and for its *_nirs.snirf in sub-01/nirs``; without any fMRIPrep folder, also the
        ``derivatives`` folders there are (which are not read).
    """
    site_dir = Path(site_dir)
    sub, ses = (run.subject, run.session) if run is not None else ("sub-X", "[ses-Y]")
    rel = "/".join(p for p in (sub, ses) if p)
    folders = " or ".join(f"{p.relative_to(site_dir).as_posix()}/{rel}/func" for p in fmriprep_dirs(site_dir))
    name = run.key if run is not None else "its"
    text = (
        f"looked for {name} BOLD (space-fsaverage* *_bold.func.gii, or space-MNI152* desc-preproc *_bold.nii.gz) "
        f"in {folders} and for {'its ' if run is not None else ''}*_nirs.snirf in {rel}/nirs"
    )
    others: list[str] = []
    if not any(p.is_dir() for p in fmriprep_dirs(site_dir)):  # perhaps the pipeline's folder has another name
        try:
            others = sorted(p.name for p in (site_dir / "derivatives").iterdir() if p.is_dir())
        except OSError:
            pass
    if others:
        text += (
            f"; derivatives/ also holds {', '.join(others)}, not read: fMRIPrep output goes in derivatives/fmriprep "
            "or derivatives/fmriprep-<version>"
        )
    return text


def _attach_target(run: RunFiles, ents: dict[str, str], site_dir: Path, listing: _Listing) -> None:
    """Find the fMRI (preferred: surface, then volume) or fNIRS target of an EEG run."""
    hemis: dict[str, Path] = {}
    volume: Path | None = None
    for root in fmriprep_dirs(site_dir):  # the first folder with this run's BOLD wins
        deriv = _subject_dirs(site_dir, run.subject, run.session, "func", root=root)
        for name, p in _matching(deriv, ents, "bold", listing):
            if p.extension == ".func.gii" and p.entities.get("space", "").startswith("fsaverage"):
                hemis.setdefault(p.entities.get("hemi", "?"), deriv / name)
            elif (
                p.extension in (".nii.gz", ".nii")
                and p.entities.get("space", "").startswith("MNI152")
                and p.entities.get("desc") == "preproc"
            ):
                volume = volume or deriv / name
        if hemis or volume:
            break
    raw_func = _subject_dirs(site_dir, run.subject, run.session, "func")
    if hemis or volume:
        run.target_modality = "fmri"
        if hemis:
            # Both hemispheres, left first; a missing one is reported by the reader.
            run.target = [hemis[h] for h in ("L", "R") if h in hemis] or sorted(hemis.values())
        else:
            run.target = [volume]  # type: ignore[list-item]
        run.target_sidecars = tr_sidecar_candidates(run.target[0], site_dir, listing=listing)
        if run.events is None:
            run.events = next((raw_func / n for n, p in _matching(raw_func, ents, "events", listing)), None)
        return
    nirs_dir = _subject_dirs(site_dir, run.subject, run.session, "nirs")
    snirf = [nirs_dir / n for n, p in _matching(nirs_dir, ents, "nirs", listing) if p.extension == ".snirf"]
    if snirf:
        run.target_modality = "fnirs"
        run.target = [snirf[0]]
        sidecar = snirf[0].with_name(snirf[0].name[: -len(".snirf")] + ".json")
        run.target_sidecars = [sidecar] if sidecar.is_file() else []
        if run.events is None:
            run.events = next((nirs_dir / n for n, p in _matching(nirs_dir, ents, "events", listing)), None)


def tr_sidecar_candidates(
    bold_path: Path, site_dir: Path | None = None, *, listing: _Listing | None = None
) -> list[Path]:
    """Existing JSON sidecars that may hold ``RepetitionTime`` for a BOLD file, best first.

    Order: the derivative's own sidecar (for surfaces, the one without ``hemi``), the per-hemi
    sidecar, the raw ``sub-X/func/..._bold.json`` and finally inherited raw sidecars such as
    ``task-visual_bold.json`` at the dataset root.

    Parameters
    ----------
    bold_path : Path
        The BOLD file (surface GIFTI or volume NIfTI, raw or under ``derivatives/fmriprep``).
    site_dir : Path | None
        The BIDS root; None: found from the file's place in the tree.
    listing : optional
        A folder-listing cache shared by searches of one site (internal); None: a new one.

    Returns
    -------
    list of Path
        Existing sidecars, best first, each once.
    """
    listing = listing or _Listing()
    bold_path = Path(bold_path)
    site_dir = Path(site_dir) if site_dir is not None else _deriv_site_root(bold_path)
    parsed = parse_bids_name(bold_path.name)
    ents = parsed.entities
    no_hemi = {k: v for k, v in ents.items() if k != "hemi"}
    own, per_hemi = [], []
    for name in listing.names(bold_path.parent):
        p = parse_bids_name(name)
        if p.suffix != "bold" or p.extension != ".json":
            continue
        if p.entities == ents:
            (per_hemi if "hemi" in ents else own).append(bold_path.parent / name)
        elif p.entities == no_hemi:
            own.append(bold_path.parent / name)
    candidates = own + per_hemi
    subject = f"sub-{ents.get('sub')}"
    session = f"ses-{ents['ses']}" if "ses" in ents else None
    raw_func = _subject_dirs(site_dir, subject, session, "func")
    raw_keys = {k: v for k, v in ents.items() if k in RUN_ENTITIES + ("acq",)}
    raw_name = "_".join(f"{k}-{v}" for k, v in raw_keys.items()) + "_bold.nii.gz"
    candidates += [raw_func / n for n, p in _matching(raw_func, ents, "bold", listing) if p.extension == ".json"]
    candidates += find_sidecars(raw_func / raw_name, "bold", ".json", site_dir, listing=listing)
    seen: set[Path] = set()
    return [p for p in candidates if p.is_file() and not (p in seen or seen.add(p))]


def _deriv_site_root(path: Path) -> Path:
    root = _site_root_of(path)
    # .../site/derivatives/fmriprep[-<version>]/sub-X/func -> .../site
    if root.name.lower().startswith(FMRIPREP_DIR[1]) and root.parent.name == FMRIPREP_DIR[0]:
        return root.parent.parent
    return root


def find_runs(site_dir: str | Path) -> list[RunFiles]:
    """One ``RunFiles`` per EEG recording of a BIDS site, sorted by run key.

    Looks for ``sub-*/[ses-*/]eeg/*_eeg.{edf,bdf,vhdr,set,fif}`` and attaches the target and
    sidecars of each. Runs without a target are included (``target_modality`` is None) so the
    caller can report them; EEG files without ``sub`` and ``task`` entities are skipped.

    Parameters
    ----------
    site_dir : str | Path
        The BIDS root of the site.

    Returns
    -------
    list of RunFiles
        Sorted by ``RunFiles.key``.

    Raises
    ------
    DataError
        ``site_dir`` is not a folder.
    """
    site_dir = Path(site_dir)
    if not site_dir.is_dir():
        raise DataError(site_dir, "is not a folder (expected a BIDS dataset)")
    listing = _Listing()
    runs: list[RunFiles] = []
    for sub in sorted(site_dir.glob("sub-*")):
        if not sub.is_dir():
            continue
        eeg_dirs = [sub / "eeg"] + sorted(s / "eeg" for s in sub.glob("ses-*"))
        for eeg_dir in eeg_dirs:
            for name in listing.names(eeg_dir):
                p = parse_bids_name(name)
                if p.suffix == "eeg" and p.extension.lower() in EEG_EXTENSIONS:
                    run = _build_run(eeg_dir / name, site_dir, listing)
                    if run is not None:
                        runs.append(run)
    return sorted(runs, key=lambda r: r.key)


def run_files_for_eeg(eeg_path: str | Path) -> RunFiles:
    """``RunFiles`` for a single EEG file, found from its place in a BIDS tree.

    Parameters
    ----------
    eeg_path : str | Path
        The EEG file; a file without a BIDS name is read with no sidecars (``sub-unknown``).

    Returns
    -------
    RunFiles
        Its run.

    Raises
    ------
    DataError
        The file does not exist.
    """
    eeg_path = Path(eeg_path)
    if not eeg_path.is_file():
        raise DataError(eeg_path, "file not found")
    site_dir = _site_root_of(eeg_path)
    run = _build_run(eeg_path, site_dir, _Listing())
    if run is None:
        # Not a BIDS name: read it with no sidecars.
        run = RunFiles(site_dir=site_dir, subject="sub-unknown", session=None, task="unknown", run=None, eeg=eeg_path)
    return run


def orphan_targets(site_dir: str | Path, runs: list[RunFiles]) -> list[Path]:
    """Target files (BOLD, SNIRF) that no EEG run claims: they cannot be paired.

    Parameters
    ----------
    site_dir : str | Path
        The BIDS root of the site.
    runs : list of RunFiles
        The site's runs (``find_runs``).

    Returns
    -------
    list of Path
        Sorted unclaimed fMRIPrep surface/volume BOLD and SNIRF files.
    """
    site_dir = Path(site_dir)
    claimed = {p.resolve() for r in runs for p in r.target}
    # a run whose target came from a preferred folder shadows the same run's BOLD in later ones
    paired = {tuple(_norm(k, v) for k, v in _run_key(r).items()) for r in runs if r.target}
    found: list[Path] = []
    for root in fmriprep_dirs(site_dir):
        found += root.glob("sub-*/**/func/*_bold.func.gii")
        found += root.glob("sub-*/**/func/*_desc-preproc_bold.nii*")
    found += site_dir.glob("sub-*/**/nirs/*_nirs.snirf")

    def shadowed(path: Path) -> bool:
        ents = parse_bids_name(path.name).entities
        return tuple(_norm(k, ents.get(k)) for k in RUN_ENTITIES) in paired

    return sorted(p for p in found if p.resolve() not in claimed and not shadowed(p))


def _run_key(run: RunFiles) -> dict[str, str | None]:
    """A run's identifying entities as its file names spell them (no prefixes)."""
    return {
        "sub": run.subject[len("sub-") :],
        "ses": run.session[len("ses-") :] if run.session else None,
        "task": run.task,
        "run": run.run,
    }
