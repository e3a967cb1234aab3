"""The public prior of the private ridge path, fitted on simulated data only.

    python -m fedneurogen.simulations.prior            # rewrites shared/priors/fmri.npz

Simulates a reference consortium (``PRIOR_SITES`` x ``PRIOR_SUBJECTS``, seed ``PRIOR_SEED``,
the default physiology; no user's data), reduces it as a site does under DP
(``shared.private_path``: pooled scalp regions -> cortical eigenmodes) and fits the ridge
regression of the pooled features on the mode coordinates, its penalty chosen on held-out
reference subjects. The coefficients are the prior a DP run adapts: public, because nothing but
the simulator's seed went into them. The file records how it was made; the package ships it, so
nothing is simulated at run time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from fedneurogen.shared.io import atomic_write
from fedneurogen.shared.ridge import fit_ridge, sum_statistics
from fedneurogen.shared.splits import split_subjects

PRIOR_SEED = 20261206
PRIOR_SITES = 3
PRIOR_SUBJECTS = 6
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "shared" / "priors" / "fmri.npz"


def fit_prior(root: Path, cache: Path) -> dict[str, np.ndarray]:
    """The prior's coefficients fitted on the simulated sites under ``root``.

    Parameters
    ----------
    root : Path
        Simulated sites (``site-01``, ...).
    cache : Path
        Preprocessed-window cache folder.

    Returns
    -------
    dict of str to np.ndarray
        ``coef [p, K]``, ``penalty``, ``subjects``, ``n_features``.
    """
    from fedneurogen.shared.data import load_site
    from fedneurogen.shared.private_path import private_reduction

    train, val = [], []
    n_features = 0
    for site in sorted(root.glob("site-*")):
        windows = load_site(site, cache_dir=cache, progress=False)
        n_features = windows.design.shape[-1]
        reduction = private_reduction("fmri", n_features, windows.target.shape[1], prior=False)
        split = split_subjects(windows.subjects, seed=PRIOR_SEED)
        for subject, stats in zip(sorted(set(windows.subjects.tolist())), reduction.subject_statistics(windows)):
            (val if subject in split.val else train).append(stats)
    solution = fit_ridge(sum_statistics(train), sum_statistics(val))
    return {
        "coef": solution.coef,
        "penalty": np.array(solution.lam),
        "subjects": np.array(len(train)),
        "n_features": np.array(n_features),
        "seed": np.array(PRIOR_SEED),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--work", type=Path, default=None, help="keep the simulated data here (default: a temp folder)")
    args = parser.parse_args(argv)
    from fedneurogen.simulations.simulator import simulate_dataset

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        root = work / "prior-data"
        if not (root / "simulation.json").is_file():
            simulate_dataset(root, n_sites=PRIOR_SITES, subjects_per_site=PRIOR_SUBJECTS, seed=PRIOR_SEED)
        prior = fit_prior(root, work / "cache")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out, lambda tmp: np.savez(tmp, **prior), suffix=".npz")
    print(f"wrote {args.out}: coef {list(prior['coef'].shape)}, penalty {float(prior['penalty']):g}, "
          f"{int(prior['subjects'])} training subjects, seed {PRIOR_SEED}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
