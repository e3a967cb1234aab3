"""Baselines every generator figure is stated against (docs/architecture.md §7).

- ``RidgeHRFBaseline``: continuous ridge-HRF, the strongest simple linear baseline;
- ``LabelOnlyBaseline``: the class labels alone, no EEG;
- ``RegressorBaseline``: a deterministic regression transformer of the generator's size;
- ``LinearGaussianGenerator``: ridge-HRF mean + Gaussian residual, the honest generative baseline.
"""

from fedneurogen.shared.workflows.baselines.label_only import LabelOnlyBaseline
from fedneurogen.shared.workflows.baselines.linear_gaussian import LinearGaussianGenerator
from fedneurogen.shared.workflows.baselines.ridge_hrf import RidgeHRFBaseline

__all__ = ["LabelOnlyBaseline", "LinearGaussianGenerator", "RidgeHRFBaseline", "RegressorBaseline"]


def __getattr__(name: str):
    # the regressor imports the model (torch); load it only when asked for
    if name == "RegressorBaseline":
        from fedneurogen.shared.workflows.baselines.regressor import RegressorBaseline

        return RegressorBaseline
    raise AttributeError(name)
