"""Multi-site scenarios: how simulated sites differ from each other.

Sites cycle through three archetypes, like a consortium of three labs:

============  ==================  ==================  ==================
              site-01 (A)         site-02 (B)         site-03 (C)
============  ==================  ==================  ==================
EEG cap       64 ch (10-05)       32 ch, 4 custom     64 ch (10-05)
EEG rate      500 Hz              250 Hz              500 Hz
EEG format    EDF                 BrainVision         EDF
TR            2.0 s               2.1 s               2.0 s
noise         1.0                 1.25                0.85
group B       50 %                12.5 % (minority)   62.5 %
============  ==================  ==================  ==================

With ``modality="mixed"`` every third site (and site-02 of two) records fNIRS instead of fMRI.
Sites beyond the third repeat the archetypes with seeded variation of the noise level.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Literal

import numpy as np

from fedneurogen.shared.errors import ConfigError
from fedneurogen.simulations.geometry import between_electrodes
from fedneurogen.simulations.latent import MOTOR_CLASSES, VISUAL_CLASSES

SiteModality = Literal["fmri", "fnirs"]

# BioSemi 64 layout, all 10-05 names.
CAP_64 = tuple(
    "Fp1 AF7 AF3 F1 F3 F5 F7 FT7 FC5 FC3 FC1 C1 C3 C5 T7 TP7 CP5 CP3 CP1 P1 P3 P5 P7 P9 PO7 PO3 O1 Iz Oz POz "
    "Pz CPz Fpz Fp2 AF8 AF4 AFz Fz F2 F4 F6 F8 FT8 FC6 FC4 FC2 FCz Cz C2 C4 C6 T8 TP8 CP6 CP4 CP2 P2 P4 P6 P8 "
    "P10 PO8 PO4 O2".split()
)
# A 32-channel cap whose four lateral-inferior electrodes sit between 10-05 positions and are
# called E1..E4 by the vendor: their positions come from the site's electrodes.tsv.
CAP_32_STANDARD = tuple(
    "Fp1 Fp2 F7 F3 Fz F4 F8 FC5 FC1 FC2 FC6 T7 C3 Cz C4 T8 CP5 CP1 CP2 CP6 P7 P3 Pz P4 P8 O1 Oz O2".split()
)
CAP_32_CUSTOM = {"E1": ("TP9", "TP7"), "E2": ("TP10", "TP8"), "E3": ("PO9", "O1"), "E4": ("PO10", "O2")}


@dataclass(frozen=True)
class SiteSpec:
    """What one simulated site records and how."""

    site_id: str  # "site-01"
    modality: SiteModality
    task: str  # "visual" (fMRI) or "motor" (fNIRS)
    classes: tuple[str, ...]
    cap: str  # human-readable cap name
    eeg_channels: tuple[str, ...]
    custom_positions: tuple[tuple[str, tuple[float, float, float]], ...]  # non-10-05 electrodes (mm)
    eeg_sfreq: float
    eeg_format: Literal["edf", "brainvision"]
    tr: float | None  # fMRI repetition time (s)
    nirs_sfreq: float | None  # fNIRS sampling rate (Hz)
    noise_level: float  # multiplies every noise source of EEG and BOLD/fNIRS
    minority_fraction: float  # fraction of subjects in group B
    female_fraction: float = 0.5
    age_range: tuple[int, int] = (20, 65)

    @property
    def n_channels(self) -> int:
        return len(self.eeg_channels)

    @property
    def has_custom_electrodes(self) -> bool:
        return bool(self.custom_positions)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["custom_positions"] = {name: list(pos) for name, pos in self.custom_positions}
        return d


def _cap_32() -> tuple[tuple[str, ...], tuple[tuple[str, tuple[float, float, float]], ...]]:
    custom = tuple(
        (name, tuple(round(float(v), 2) for v in between_electrodes(a, b))) for name, (a, b) in CAP_32_CUSTOM.items()
    )
    return CAP_32_STANDARD + tuple(name for name, _ in custom), custom


def make_site_specs(
    n_sites: int, modality: Literal["fmri", "fnirs", "mixed"] = "fmri", seed: int = 0
) -> list[SiteSpec]:
    """Specifications of ``n_sites`` heterogeneous sites (see the module docstring)."""
    if n_sites < 1:
        raise ConfigError(f"need at least one site, got {n_sites}")
    if modality not in ("fmri", "fnirs", "mixed"):
        raise ConfigError(f"modality must be fmri, fnirs or mixed, got {modality!r}")
    if modality == "mixed" and n_sites < 2:
        raise ConfigError("modality 'mixed' needs at least two sites (one fMRI, one fNIRS)")
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0xC0FFEE,)))
    cap32, custom32 = _cap_32()
    specs = []
    for i in range(n_sites):
        archetype = i % 3
        if modality == "mixed":
            site_modality = "fnirs" if (archetype == 2 or (n_sites == 2 and i == 1)) else "fmri"
        else:
            site_modality = modality
        # Later sites repeat the archetypes; vary their noise so no two sites are identical.
        jitter = 1.0 if i < 3 else float(np.exp(rng.normal(0.0, 0.1)))
        common = dict(
            site_id=f"site-{i + 1:02d}",
            modality=site_modality,
            task="visual" if site_modality == "fmri" else "motor",
            classes=VISUAL_CLASSES if site_modality == "fmri" else MOTOR_CLASSES,
            tr=None,
            nirs_sfreq=None if site_modality == "fmri" else 10.0,
        )
        if archetype == 1:
            spec = SiteSpec(
                **common,
                cap="32-channel (28 10-05 + 4 custom)",
                eeg_channels=cap32,
                custom_positions=custom32,
                eeg_sfreq=250.0,
                eeg_format="brainvision",
                noise_level=1.25 * jitter,
                minority_fraction=0.125,
            )
        else:
            spec = SiteSpec(
                **common,
                cap="BioSemi-64 (10-05)",
                eeg_channels=CAP_64,
                custom_positions=(),
                eeg_sfreq=500.0,
                eeg_format="edf",
                noise_level=(1.0 if archetype == 0 else 0.85) * jitter,
                minority_fraction=0.5 if archetype == 0 else 0.625,
            )
        if site_modality == "fmri":
            spec = replace(spec, tr=2.1 if archetype == 1 else 2.0)
        specs.append(spec)
    return specs


@dataclass(frozen=True)
class Participant:
    participant_id: str  # "sub-01"
    sex: str  # "F" | "M"
    age: int
    group: str  # "A" | "B"


def make_participants(spec: SiteSpec, n_subjects: int, seed: int, site_index: int) -> list[Participant]:
    """The site's roster. Group B makes up ``minority_fraction`` of subjects, rounded, but at
    least one subject of each group when there are two or more subjects."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(site_index, 0xBEEF)))
    n_b = int(round(spec.minority_fraction * n_subjects))
    if n_subjects >= 2:
        n_b = min(max(n_b, 1), n_subjects - 1)
    groups = rng.permutation(["B"] * n_b + ["A"] * (n_subjects - n_b))
    sexes = np.where(rng.random(n_subjects) < spec.female_fraction, "F", "M")
    ages = rng.integers(spec.age_range[0], spec.age_range[1] + 1, size=n_subjects)
    return [Participant(f"sub-{j + 1:02d}", str(sexes[j]), int(ages[j]), str(groups[j])) for j in range(n_subjects)]


def eeg_only_participants(
    spec: SiteSpec, counts: dict[str, int], first: int, seed: int, site_index: int
) -> list[Participant]:
    """``counts[group]`` extra subjects per group with an EEG session only, numbered after the
    ``first`` paired ones (their own random stream: the paired roster does not change)."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(site_index, 0xE0E0)))
    groups = [g for g in sorted(counts) for _ in range(counts[g])]
    return [
        Participant(
            f"sub-{first + k + 1:02d}",
            "F" if rng.random() < spec.female_fraction else "M",
            int(rng.integers(spec.age_range[0], spec.age_range[1] + 1)),
            g,
        )
        for k, g in enumerate(groups)
    ]
