"""Physics-based paired-data simulator: multi-site BIDS datasets with known ground truth.

One subject, one run:

1. a balanced block design (``latent.block_design``),
2. latent cortical activity on fsaverage5: task networks + spontaneous 1/f modes
   (``latent.simulate_latent``), shifted by the subject's physiology (``physiology``), drawn
   from the dataset's population physiology (``physiology.Physiology``: ``default`` or
   ``shifted``, which sets the HRF, the rhythms' coupling to BOLD and the BOLD/EEG noise),
3. EEG through a sphere-model lead field, with rhythms whose power follows the activity
   (``eeg.simulate_eeg``),
4. BOLD (fMRI sites) or HbO/HbR -> light intensity (fNIRS sites) through the HRF
   (``hemodynamics``; a linear or a nonlinear neurovascular coupling, ``physiology.Coupling``),
   noisy and noise-free, and the EEG's expected scalp band power (``eeg.expected_band_power``,
   with the nonlinear coupling's ``drive`` rhythm: the EEG-informed ceiling's features),
5. BIDS files (``bids_writer``), following ``docs/data-contract.md``.

Subjects are independent given their seed (``SeedSequence(seed, spawn_key=(site, subject))``),
so they run in parallel processes and the output does not depend on scheduling.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np

from fedneurogen.shared.errors import ConfigError
from fedneurogen.shared.io import write_json_atomic
from fedneurogen.simulations import bids_writer as bw
from fedneurogen.simulations.eeg import RHYTHMS, expected_band_power, expected_source_power, simulate_eeg
from fedneurogen.simulations.geometry import (
    HEAD_MODELS,
    eeg_lead_field,
    load_cortex,
    motor_probe,
    parcel_lead_field,
    standard_positions,
)
from fedneurogen.simulations.hemodynamics import (
    PPF,
    WAVELENGTHS,
    expected_drive_power,
    extinction_coefficients,
    simulate_bold,
    simulate_nirs,
)
from fedneurogen.simulations.scanner import ScannerSetup, write_in_scanner_eeg
from fedneurogen.simulations.ownership import check_writable_by_simulator, claim, made_by_simulator
from fedneurogen.simulations.latent import LATENT_SFREQ, alpha_tone, block_design, simulate_latent
from fedneurogen.simulations.physiology import (
    DEFAULT,
    LINEAR,
    Coupling,
    Physiology,
    draw_physiology,
    get_coupling,
    get_physiology,
    hrf,
)
from fedneurogen.simulations.scenarios import (
    Participant,
    SiteSpec,
    eeg_only_participants,
    make_participants,
    make_site_specs,
)

log = logging.getLogger(__name__)

SITE_NAME = "FedNeuroGen simulated site"
MIN_RUN_SECONDS = 60.0
CEILING_DEFINITION = (
    "Fisher-z average over subjects and task-active vertices (fMRI: core of the task networks) or "
    "channels (fNIRS: long channels over the motor networks, HbO after the loader's 0.01-0.1 Hz band-pass and "
    "short-channel regression) "
    "of the Pearson correlation over time between the noisy and the noise-free signal"
)


@dataclass(frozen=True)
class SubjectJob:
    """Everything needed to simulate and write one subject (picklable, for worker processes).

    Parameters
    ----------
    spec : SiteSpec
        The subject's site.
    site_dir : Path
        The site's folder.
    participant : Participant
        The subject (id, group, sex, age).
    seed : int
        The dataset's seed.
    site_index, subject_index : int
        Position of the site and of the subject in it; with ``seed`` they seed the subject.
    run_seconds : float or None
        Length of the run (None: the scenario's default).
    parcel_gain : numpy.ndarray
        ``[n_channels, 324]`` lead field of the site's cap.
    positions_mm : numpy.ndarray
        ``[n_channels, 3]`` electrode positions.
    eeg_only : bool
        A subject with an EEG session only (no fMRI/fNIRS).
    physiology : Physiology
        The dataset's population physiology.
    coupling : Coupling
        The dataset's neurovascular coupling (``linear`` or ``nonlinear``).
    scanner_artifacts : ScannerSetup | None
        Write the EEG as recorded in the scanner with this setup (``simulations.scanner``; fMRI
        subjects only), the clean EEG under ``derivatives/ground_truth``; None: clean EEG.
    """

    spec: SiteSpec
    site_dir: Path
    participant: Participant
    seed: int
    site_index: int
    subject_index: int
    run_seconds: float | None
    parcel_gain: np.ndarray  # [n_channels, 324] lead field of the site's cap
    positions_mm: np.ndarray  # [n_channels, 3]
    eeg_only: bool = False  # a subject with an EEG session only (no fMRI/fNIRS)
    physiology: Physiology = DEFAULT
    coupling: Coupling = LINEAR
    scanner_artifacts: ScannerSetup | None = None


def electrode_positions(spec: SiteSpec) -> np.ndarray:
    """Return the electrode positions of a site's cap.

    Parameters
    ----------
    spec : SiteSpec
        The site; its custom positions take precedence over the standard 10-05 ones.

    Returns
    -------
    numpy.ndarray
        ``[n_channels, 3]`` positions in mm, in the order of ``spec.eeg_channels``.
    """
    custom = dict(spec.custom_positions)
    return np.array(
        [custom[n] if n in custom else standard_positions([n])[0] for n in spec.eeg_channels], dtype=np.float64
    )


def simulate_subject(job: SubjectJob) -> dict:
    """Simulate and write one subject's run.

    Parameters
    ----------
    job : SubjectJob
        The subject to simulate.

    Returns
    -------
    dict
        The subject's summary: id, group, sex, age, duration, blocks, physiology and (paired
        subjects) the noise ceiling with its Fisher-z sum and count; EEG-only subjects are
        marked ``eeg_only``.
    """
    spec, p = job.spec, job.participant
    # The sixth stream (the nonlinear coupling's alpha tone) leaves the first five, and so the
    # linear scenario, as they were.
    streams = np.random.SeedSequence(job.seed, spawn_key=(job.site_index, job.subject_index)).spawn(6)
    rng_design, rng_phys, rng_latent, rng_eeg, rng_target, rng_tone = (np.random.default_rng(s) for s in streams)

    events, duration = block_design(rng_design, spec.task, spec.classes, job.run_seconds)
    phys = draw_physiology(rng_phys, p.group, p.sex, p.age, job.physiology)
    latent = simulate_latent(rng_latent, spec.task, events, duration)
    if job.coupling.nonlinear and job.coupling.alpha_tone_sd > 0:
        tone = alpha_tone(
            rng_tone, latent.n_times, latent.sfreq, job.coupling.alpha_tone_sd, job.coupling.alpha_tone_hz
        )
        latent = replace(latent, alpha_tone=tone)

    sub = p.participant_id
    base = f"{sub}_task-{spec.task}_run-1"
    eeg = simulate_eeg(
        rng_eeg,
        latent,
        phys,
        job.parcel_gain,
        job.positions_mm,
        spec.eeg_sfreq,
        duration,
        spec.noise_level,
        physiology=job.physiology,
    )
    eeg_dir = job.site_dir / sub / "eeg"
    in_scanner = job.scanner_artifacts is not None and spec.modality == "fmri" and not job.eeg_only
    if in_scanner:
        write_in_scanner_eeg(job, eeg, events, duration, base, **job.scanner_artifacts.to_dict())
    else:
        bw.write_eeg(
            eeg_dir, base, eeg, spec.eeg_channels, spec.eeg_sfreq, spec.eeg_format, events, spec.task, spec.cap
        )
        truth = job.site_dir / "derivatives" / "ground_truth" / sub / "eeg"  # an earlier in-scanner simulation's
        for stale in [*truth.glob(f"{base}_eeg.*"), *truth.glob(f"{base}_channels.tsv"), *truth.glob(f"{base}_events.tsv"),
                      *truth.glob(f"{base}_desc-scanner_events.*")]:  # fmt: skip
            stale.unlink()
    if spec.has_custom_electrodes:
        bw.write_electrodes(eeg_dir, sub, spec.eeg_channels, job.positions_mm)
    if job.eeg_only:  # the cheap session only: no target, no ground truth
        return {"participant_id": sub, "group": p.group, "sex": p.sex, "age": p.age, "duration_s": duration, "n_blocks": len(events),
                "physiology": phys.to_dict(), "eeg_only": True}  # fmt: skip
    # Noise-free scalp band power on a 1 Hz grid: the features of the EEG-informed ceiling.
    log_power, rhythms = expected_band_power(latent, phys, job.parcel_gain, physiology=job.physiology)
    if job.coupling.nonlinear:  # the true map's output as one more rhythm: the ceiling's features under this coupling
        drive = expected_drive_power(latent, phys, job.parcel_gain, job.coupling, physiology=job.physiology)
        log_power, rhythms = np.concatenate([log_power, drive], axis=1), [*rhythms, "drive"]
    truth_eeg_dir = job.site_dir / "derivatives" / "ground_truth" / sub / "eeg"
    bw.write_expected_power(truth_eeg_dir, base, log_power, spec.eeg_channels, rhythms, job.positions_mm)
    if not job.coupling.nonlinear:  # the rhythms at the cortex: the source-space ceiling's features
        write_source_power(truth_eeg_dir, base, expected_source_power(latent, phys, physiology=job.physiology))

    if spec.modality == "fmri":
        n_tr = int(np.floor(duration / spec.tr + 1e-9))
        bold = simulate_bold(rng_target, latent, phys, spec.tr, n_tr, spec.noise_level, job.physiology, job.coupling)
        deriv = job.site_dir / "derivatives"
        bw.write_bold(
            deriv / "fmriprep" / sub / "func", base, bold.noisy, spec.tr, spec.task, "simulated fMRIPrep surface output"
        )
        bw.write_bold(
            deriv / "ground_truth" / sub / "func",
            base,
            bold.clean,
            spec.tr,
            spec.task,
            "noise-free BOLD (ground truth)",
        )
        bw.write_events(job.site_dir / sub / "func" / f"{base}_events.tsv", events)
        active_r = bold.active_r
    else:
        active_r = _write_nirs(job, rng_target, latent, phys, events, duration, base)

    z = np.arctanh(np.clip(active_r, -0.999999, 0.999999))
    return {
        "participant_id": sub,
        "group": p.group,
        "sex": p.sex,
        "age": p.age,
        "duration_s": duration,
        "n_blocks": len(events),
        "physiology": phys.to_dict(),
        "noise_ceiling": float(np.tanh(z.mean())),
        "_z_sum": float(z.sum()),
        "_z_count": int(z.size),
    }


def write_source_power(truth_eeg_dir: Path, base: str, log_power: np.ndarray) -> None:
    """``<base>_desc-expectedsourcepower_timeseries``: each rhythm's expected power at each cortical
    parcel (the ico2 patches of ``shared.sources``), columns ``P<parcel>_<rhythm>``."""
    cortex = load_cortex()
    names = [f"P{p:03d}" for p in range(cortex.n_parcels)]
    bw.write_expected_power(
        truth_eeg_dir, base, log_power, names, [r.name for r in RHYTHMS], cortex.parcel_mean(cortex.mid),
        desc="expectedsourcepower",
        description=(
            "Natural log of the expected power of each simulated rhythm at each cortical parcel (ico2 patch of "
            "fsaverage), 0.5 * m_p(t)^2 averaged over 1/SamplingFrequency bins: what a perfect inverse would recover "
            "(source-space EEG-informed ceiling). Column positions: parcel centres, mm"
        ),
    )  # fmt: skip


def _write_nirs(job: SubjectJob, rng, latent, phys, events, duration: float, base: str) -> np.ndarray:
    spec, sub = job.spec, job.participant.participant_id
    probe = motor_probe()
    n_times = int(round(duration * spec.nirs_sfreq))
    run = simulate_nirs(
        rng, latent, phys, probe, spec.nirs_sfreq, n_times, spec.noise_level, job.coupling, job.physiology
    )
    common = dict(
        source_pos_mm=probe.source_pos,
        detector_pos_mm=probe.detector_pos,
        source_labels=[f"S{i + 1}" for i in range(len(probe.source_labels))],
        detector_labels=[f"D{i + 1}" for i in range(len(probe.detector_labels))],
        events=events,
        subject_id=sub,
        wavelengths=WAVELENGTHS,
        sfreq=spec.nirs_sfreq,
    )
    # Measurements are ordered channel by channel, wavelengths ascending, as MNE expects: the long
    # channels, then the short-separation channels (the ground truth has the long ones only).
    raw_list = [
        dict(source=s + 1, detector=d + 1, wavelength=w + 1)
        for s, d in probe.all_pairs
        for w in range(len(WAVELENGTHS))
    ]
    intensity = run.intensity if run.short_intensity is None else np.concatenate([run.intensity, run.short_intensity])
    nirs_dir = job.site_dir / sub / "nirs"
    bw.write_snirf(nirs_dir / f"{base}_nirs.snirf", intensity.reshape(-1, n_times).T, measurements=raw_list, **common)
    hb_list = [dict(source=s + 1, detector=d + 1, label=lab) for s, d in probe.pairs for lab in ("HbO", "HbR")]
    hb = np.stack([run.hbo, run.hbr], axis=1).reshape(-1, n_times).T
    truth_dir = job.site_dir / "derivatives" / "ground_truth" / sub / "nirs"
    bw.write_snirf(truth_dir / f"{base}_nirs.snirf", hb, measurements=hb_list, **common)
    bw.write_nirs_sidecars(nirs_dir, sub, base, probe, spec.nirs_sfreq, n_times, events, spec.task, WAVELENGTHS)
    return run.active_r


# ----------------------------------------------------------------------------------------------
# Dataset


def simulate_dataset(
    out: Path,
    n_sites: int = 3,
    subjects_per_site: int = 8,
    modality: Literal["fmri", "fnirs", "mixed"] = "fmri",
    seed: int = 0,
    run_seconds: float | None = None,
    progress: bool = True,
    n_jobs: int | None = None,
    eeg_only_sessions: dict[str, int] | None = None,
    head_model: str = "default",
    physiology: str = "default",
    coupling: str = "linear",
    scanner_artifacts: bool | ScannerSetup = False,
) -> list[Path]:
    """Simulate ``n_sites`` BIDS site datasets under ``out`` and return their folders.

    ``out/simulation.json`` records the site specifications, the population physiology (name and
    parameters), each subject's physiology and the noise ceiling per site (see ``CEILING_DEFINITION``; ``ceilings_table`` shows them).

    Parameters
    ----------
    out : Path
        Folder that receives ``site-01``, ``site-02``, ... and ``simulation.json``: absent, empty,
        or made by an earlier simulation (it is rewritten); any other folder is refused.
    n_sites, subjects_per_site : int
        Size of the consortium.
    modality : ``"fmri"``, ``"fnirs"`` or ``"mixed"``
        ``fmri`` (EEG-fMRI, task-visual), ``fnirs`` (EEG-fNIRS, task-motor) or ``mixed`` (every
        third site, and site-02 of two, is fNIRS).
    seed : int
        The whole dataset is a deterministic function of the seed.
    run_seconds : float, optional
        Length of each subject's single run; None gives ~8 minutes (4 blocks per visual class,
        8 per motor class). Shorter runs hold as many balanced blocks as fit.
    progress : bool
        Show a progress bar on stderr.
    n_jobs : int, optional
        Worker processes (default: up to 2, one per core). The output does not depend on it.
    eeg_only_sessions : dict of str to int, optional
        ``{group: n}``: every site also gets ``n`` subjects of that group (``A``/``B``) with an
        EEG session only (EEG and events, no fMRI/fNIRS; listed in ``participants.tsv`` after
        the paired subjects): the cheap recordings an under-represented group often has more
        of, the source pool of ``fedneurogen augment --eeg-only``. The paired subjects are the
        same with or without them.
    head_model : ``"default"`` or ``"mismatched"``
        The head the EEG is written through (``geometry.HEAD_MODELS``): ``mismatched`` uses
        another sphere (centre, radius, shells, skull conductivity) and electrodes a few mm
        from their declared positions, so no inverse can share the simulator's lead field. Only
        the lead field changes: everything else is identical for the same seed (the declared
        positions, the latent activity, the targets); the EEG-informed ceiling uses the lead
        field the EEG was written through.
    physiology : ``"default"`` or ``"shifted"``
        The population physiology (``physiology.PHYSIOLOGIES``): ``shifted`` has a slower HRF with
        another undershoot, other couplings of the EEG rhythms to the activity behind BOLD, and
        other BOLD and EEG noise, so a model fitted on ``default`` data meets data its simulator
        did not make. The random draws are the same (same designs, latent activity, subjects);
        the noise ceilings and the expected band power are computed under the chosen physiology.
    coupling : ``"linear"`` or ``"nonlinear"``
        The neurovascular coupling (``physiology.COUPLINGS``; equations in ``hemodynamics``):
        ``nonlinear`` saturates the drive behind BOLD/HbO and gates it by the alpha state. The EEG,
        designs and random draws are the same as under ``linear``; the expected power gets a
        ``drive`` rhythm (the true map applied to the parcel activity), so the EEG-informed
        ceiling is computed with the true map. ``simulation.json`` records the coupling and its
        parameters.
    scanner_artifacts : bool or ScannerSetup
        Write the EEG of the fMRI sites as it comes off an MR-compatible amplifier (a
        ``ScannerSetup``: EEG before the first and after the last volume, no SyncBox; True: the
        default setup)
        (``simulations.scanner``): gradient artefact, BCG, an ECG channel and ``R128`` volume
        triggers; the clean EEG goes to ``derivatives/ground_truth/sub-*/eeg`` (the same bytes as
        ``sub-*/eeg`` of a run without artefacts, every other file unchanged), with the true
        volume onsets and R-peaks in ``*_desc-scanner_events.tsv``. EEG-only sessions and fNIRS
        sites are recorded outside the scanner: unchanged.

    Returns
    -------
    list of Path
        The site folders, in order.

    Raises
    ------
    ConfigError
        When ``out`` (or a site folder in it) exists and was not made by the simulator (see
        ``simulations/ownership.py``: nothing is written then), when ``subjects_per_site`` is
        below 1, ``eeg_only_sessions`` names a group other than A and B or a negative count,
        ``run_seconds`` is below ``MIN_RUN_SECONDS``, ``head_model`` is not in ``HEAD_MODELS``,
        ``physiology`` is not in ``PHYSIOLOGIES``, or ``coupling`` is not in ``COUPLINGS``.
    """
    out = Path(out)
    _check_arguments(subjects_per_site, eeg_only_sessions, run_seconds, head_model)
    setup = (ScannerSetup() if scanner_artifacts is True else scanner_artifacts) or None
    models = (run_seconds, head_model, get_physiology(physiology), get_coupling(coupling), setup)
    specs = make_site_specs(n_sites, modality, seed)
    _claim_output(out, specs)
    jobs, site_dirs = _subject_jobs(out, specs, subjects_per_site, eeg_only_sessions or {}, seed, models)
    sites = _site_summaries(specs, jobs, _run_jobs(jobs, progress, n_jobs))
    settings = {"seed": seed, "modality": modality, "n_sites": n_sites, "subjects_per_site": subjects_per_site}
    _write_summary(out, settings, eeg_only_sessions, models, sites)
    return site_dirs


def _claim_output(out: Path, specs: list[SiteSpec]) -> None:
    """Check that ``out`` may be written (before the first byte), claim it, drop stale sites, warm the caches."""
    check_writable_by_simulator(out, [spec.site_id for spec in specs])  # before the first byte
    claim(out)
    _remove_stale_sites(out, {spec.site_id for spec in specs})
    _warm_caches(specs)


def _check_arguments(
    subjects_per_site: int, eeg_only_sessions: dict[str, int] | None, run_seconds: float | None, head_model: str
) -> None:
    """Refuse the arguments of ``simulate_dataset`` that the physiology and coupling look-ups do not check."""
    if subjects_per_site < 1:
        raise ConfigError(f"subjects_per_site must be at least 1, got {subjects_per_site}")
    unknown = sorted(set(eeg_only_sessions or {}) - {"A", "B"})
    if unknown or any(n < 0 for n in (eeg_only_sessions or {}).values()):
        raise ConfigError(f"eeg_only_sessions: groups are A and B with a count >= 0, got {eeg_only_sessions}")
    if run_seconds is not None and run_seconds < MIN_RUN_SECONDS:
        raise ConfigError(f"run_seconds must be at least {MIN_RUN_SECONDS:g} s, got {run_seconds}")
    if head_model not in HEAD_MODELS:
        raise ConfigError(f"head_model must be one of {', '.join(HEAD_MODELS)}, got {head_model!r}")


def _subject_jobs(
    out: Path,
    specs: list[SiteSpec],
    subjects_per_site: int,
    eeg_only_sessions: dict[str, int],
    seed: int,
    models: tuple,
) -> tuple[list[SubjectJob], list[Path]]:
    """Prepare every site folder and return one job per subject (paired, then EEG-only) and the site folders.

    ``models`` is ``(run_seconds, head_model, population, neurovascular, setup)``.
    """
    run_seconds, head_model, population, neurovascular, setup = models
    jobs: list[SubjectJob] = []
    site_dirs: list[Path] = []
    for i, spec in enumerate(specs):
        site_dir = out / spec.site_id
        roster = make_participants(spec, subjects_per_site, seed, i)
        eeg_only = eeg_only_participants(spec, eeg_only_sessions, first=len(roster), seed=seed, site_index=i)
        _prepare_site(site_dir, spec, roster + eeg_only)
        positions = electrode_positions(spec)
        gain = parcel_lead_field(eeg_lead_field(spec.eeg_channels, positions, head_model))
        jobs += [
            SubjectJob(
                spec,
                site_dir,
                p,
                seed,
                i,
                j,
                run_seconds,
                gain,
                positions,
                False,
                population,
                neurovascular,
                setup,
            )  # fmt: skip
            for j, p in enumerate(roster)
        ]
        jobs += [
            SubjectJob(
                spec,
                site_dir,
                p,
                seed,
                i,
                len(roster) + k,
                run_seconds,
                gain,
                positions,
                True,
                population,
                neurovascular,
            )
            for k, p in enumerate(eeg_only)
        ]
        site_dirs.append(site_dir)
    return jobs, site_dirs


def _site_summaries(specs: list[SiteSpec], jobs: list[SubjectJob], records: list[dict]) -> list[dict]:
    """Gather each site's subject records (one per job, in job order) with its noise ceiling."""
    results = dict(zip(((j.site_index, j.subject_index) for j in jobs), records))
    sites = []
    for i, spec in enumerate(specs):
        everyone = [results[key] for key in sorted(results) if key[0] == i]
        subjects = [s for s in everyone if not s.get("eeg_only")]
        z_sum = sum(s.pop("_z_sum") for s in subjects)
        z_count = sum(s.pop("_z_count") for s in subjects)
        sites.append({
            **spec.to_dict(), "noise_ceiling": float(np.tanh(z_sum / max(z_count, 1))), "subjects": subjects,
            "eeg_only_subjects": [s for s in everyone if s.get("eeg_only")],
        })  # fmt: skip
    return sites


def _write_summary(
    out: Path, settings: dict, eeg_only_sessions: dict[str, int] | None, models: tuple, sites: list[dict]
) -> None:
    """Write ``out/simulation.json`` (``settings``: seed, modality, n_sites, subjects_per_site) and log the ceilings."""
    run_seconds, head_model, population, neurovascular, setup = models
    summary = {
        "generator": "fedneurogen.simulations",
        **settings,
        "run_seconds": run_seconds,
        "eeg_only_sessions": dict(eeg_only_sessions or {}),
        "head_model": head_model,
        "physiology": population.name,
        "physiology_parameters": population.to_dict(),
        "coupling": neurovascular.name,
        "coupling_parameters": neurovascular.to_dict(),
        "noise_ceiling_definition": CEILING_DEFINITION,
        "fnirs_ppf": PPF,
        "sites": sites,
        **({"scanner_artifacts": True} if setup is not None else {}),  # absent: the file is as it was
        **({"scanner_setup": setup.to_dict()} if setup not in (None, ScannerSetup()) else {}),
    }
    write_json_atomic(out / "simulation.json", summary)
    for site in sites:
        log.debug("%s (%s): noise ceiling %.3f", site["site_id"], site["modality"], site["noise_ceiling"])


def _warm_caches(specs: list[SiteSpec]) -> None:
    """Load the shared geometry and HRF once here, so forked workers inherit them."""
    load_cortex()
    hrf(LATENT_SFREQ)
    if any(spec.modality == "fnirs" for spec in specs):
        motor_probe()
        extinction_coefficients()


def _remove_stale_sites(out: Path, keep: set[str]) -> None:
    """Delete sites this simulator made in an earlier run with more sites (never other data:
    only folders that carry its marker, never a symbolic link)."""
    for site_dir in out.glob("site-*"):
        if site_dir.name not in keep and made_by_simulator(site_dir):
            shutil.rmtree(site_dir)


def _prepare_site(site_dir: Path, spec: SiteSpec, roster: list[Participant]) -> None:
    """Site-level files; drop subjects left over from an earlier, larger simulation here (the
    site was cleared by ``check_writable_by_simulator``: absent or made by the simulator)."""
    if made_by_simulator(site_dir):
        keep = {p.participant_id for p in roster}
        for parent in (site_dir, site_dir / "derivatives" / "fmriprep", site_dir / "derivatives" / "ground_truth"):
            for stale in parent.glob("sub-*"):
                if stale.is_dir() and not stale.is_symlink() and stale.name not in keep:
                    shutil.rmtree(stale)
    claim(site_dir)
    bw.write_dataset_description(site_dir, f"{SITE_NAME} {spec.site_id.split('-')[1]}")
    bw.write_readme(site_dir, spec)
    bw.write_participants(site_dir, roster)
    if spec.modality == "fmri":
        bw.write_dataset_description(site_dir / "derivatives" / "fmriprep", "fMRIPrep (simulated)", derivative=True)
    bw.write_dataset_description(site_dir / "derivatives" / "ground_truth", "Noise-free ground truth", derivative=True)


@contextmanager
def _single_threaded_blas() -> Iterator[None]:
    """One BLAS thread per job: workers do not fight over the cores, and every job computes
    with the same thread count, so results do not depend on ``n_jobs``."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        yield
        return
    with threadpool_limits(limits=1):
        yield


def _run_one(job: SubjectJob) -> dict:
    with _single_threaded_blas():
        return simulate_subject(job)


def _run_jobs(jobs: list[SubjectJob], progress: bool, n_jobs: int | None) -> list[dict]:
    n_workers = min(n_jobs or min(2, os.cpu_count() or 1), len(jobs))
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("[bold]simulating[/] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not progress,
    )
    label = lambda j: f"{j.spec.site_id} {j.participant.participant_id}"  # noqa: E731
    if n_workers <= 1:
        results = []
        with bar:
            task = bar.add_task("", total=len(jobs))
            for job in jobs:
                bar.update(task, description=label(job))
                results.append(_run_one(job))
                bar.advance(task)
        return results
    # Fork keeps the loaded cortex and MNE in the workers; submit before the bar starts its thread.
    context = multiprocessing.get_context("fork") if "fork" in multiprocessing.get_all_start_methods() else None
    with ProcessPoolExecutor(max_workers=n_workers, mp_context=context) as pool:
        futures = [pool.submit(_run_one, job) for job in jobs]
        with bar:
            task = bar.add_task("", total=len(jobs))
            for job, fut in zip(jobs, futures):
                bar.update(task, description=label(job))
                fut.result()
                bar.advance(task)
        return [f.result() for f in futures]


def ceilings_table(sites: list[dict]):
    """Build the noise ceilings of a simulation as a rich table, for the caller to print.

    Parameters
    ----------
    sites : list of dict
        The ``sites`` of ``simulation.json``.

    Returns
    -------
    rich.table.Table
        One row per site: modality, EEG cap, TR or rate, noise level, group B share, ceiling.
    """
    from rich.table import Table

    table = Table(title="Noise ceiling (temporal PCC, noisy vs noise-free)")
    for col in ("site", "modality", "EEG", "TR / rate", "noise", "group B", "ceiling"):
        table.add_column(col)
    for s in sites:
        n = len(s["subjects"])
        n_b = sum(sub["group"] == "B" for sub in s["subjects"])
        rate = f"TR {s['tr']:g} s" if s["modality"] == "fmri" else f"{s['nirs_sfreq']:g} Hz"
        table.add_row(
            s["site_id"],
            s["modality"],
            f"{len(s['eeg_channels'])} ch {s['eeg_sfreq']:g} Hz {s['eeg_format']}",
            rate,
            f"{s['noise_level']:.2f}",
            f"{n_b}/{n}",
            f"{s['noise_ceiling']:.3f}",
        )
    return table
