"""The run config (``RunConfig``): a federated run's keys (``[tool.flwr.app.config]`` in
``pyproject.toml``), typed and checked. Not the preprocessing config (``shared/config.py``) nor
the model config (``shared/model/config.py``).

``validate_run_config(context.run_config)`` is called when the ServerApp starts and by every
site before it works for a run. A bad value raises ``ConfigError`` naming the key, the value
and what is allowed, e.g.::

    run config: strategy = 'fedsgd' is not allowed; choose one of: fedavg, fedprox, fedadam, ...

Keys this model does not know (added to ``pyproject.toml`` later) are kept and not checked:
Flower already refuses overrides of keys that ``pyproject.toml`` does not declare.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fedneurogen.shared.config import PreprocessConfig
from fedneurogen.shared.errors import ConfigError

Strategy = Literal["fedavg", "fedprox", "fedadam", "fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan"]
Preset = Literal["tiny", "small", "base"]  # shared.model.PRESETS (checked in tests)
SimModality = Literal["fmri", "fnirs", "mixed"]
Accountant = Literal["rdp", "prv", "pld"]  # client/privacy.py _accounted; "gdp" is not an upper bound


class RunConfig(BaseModel):
    """Every key of ``[tool.flwr.app.config]``; field ``num_server_rounds`` is key ``num-server-rounds``."""

    model_config = ConfigDict(
        alias_generator=lambda name: name.replace("_", "-"), populate_by_name=True, extra="allow", frozen=True
    )

    num_server_rounds: int = Field(3, ge=1)
    local_epochs: int = Field(1, ge=1, le=1000)  # a site bounds it further (max-local-epochs)
    preset: Preset = "tiny"
    strategy: Strategy = "fedavg"
    proximal_mu: float = Field(0.01, ge=0)
    server_lr: float = Field(0.001, gt=0)
    server_tau: float = Field(0.001, gt=0)
    trim_beta: float = Field(0.2, ge=0, lt=0.5)
    krum_malicious: int = Field(0, ge=0)
    krum_select: int = Field(2, ge=1)
    max_examples_per_site: int = Field(0, ge=0)  # 0: no cap beyond the count a site declared in its first round
    max_update_norm: float = Field(0.0, ge=0)  # 0: updates are not norm-bounded
    # a site whose ridge statistics alone move the pooled solution (leave-one-site-out) is left
    # out of the sum (true) or only named (false): server/app.py solve_global_ridge
    drop_inconsistent_sites: bool = True
    fraction_train: float = Field(1.0, gt=0, le=1)
    fraction_evaluate: float = Field(1.0, ge=0, le=1)  # 0: no evaluation rounds
    min_train_nodes: int = Field(2, ge=1)
    min_evaluate_nodes: int = Field(2, ge=0)
    min_available_nodes: int = Field(2, ge=1)
    min_train_replies: int = Field(1, ge=1)
    round_timeout: float = Field(3600.0, gt=0, le=7 * 86400.0)  # and max-round-timeout
    run_dir: str = Field("runs/federated", min_length=1)
    resume: bool = False
    keep_checkpoints: int = Field(3, ge=1)
    seed: int = 0
    classes: str = ""
    data_root: str = "demo-output/data"
    modality: SimModality = "fmri"
    num_sites: int = Field(3, ge=1)
    subjects_per_site: int = Field(4, ge=1)
    max_windows: int = Field(0, ge=0, le=10_000_000)  # and min-train-windows
    cache_dir: str = ""  # a simulated node's cache only: a deployed site's is its node config's
    site_state_dir: str = ""
    eval_pcc_windows: int = Field(256, ge=0, le=100_000)  # and max-eval-pcc-windows
    departure_windows: int = Field(16, ge=0, le=100_000)  # and max-departure-windows
    early_stopping_patience: int = Field(2, ge=0)
    dp_enabled: bool = False
    dp_target_epsilon: float = Field(8.0, gt=0)
    dp_delta: float = Field(1e-5, gt=0, lt=1)
    dp_max_grad_norm: float = Field(1.0, gt=0)
    dp_accountant: Accountant = "pld"  # the tightest sound one measured (benchmarks/accountants.py)
    dp_rounds: int = Field(0, ge=0)
    # the whole budget goes to the private ridge path by default: DP-SGD of the residual at a
    # subject-level epsilon, with a few dozen subjects, learns nothing (benchmarks/privacy_utility.py)
    dp_statistics_share: float = Field(1.0, ge=0, le=1)
    dp_statistics_clip: float = Field(4.0, gt=0)  # private_path.PRIVATE_CLIP: public, set on simulated data
    dp_prior: Literal["simulated", "none"] = "simulated"  # adapt the shipped public prior (private_path)
    audit: bool = True
    preprocess: str = ""  # "KEY=VALUE;KEY=VALUE": PreprocessConfig fields every site loads its windows with
    residual_eeg: bool = False  # the learned residual also reads EEG (ModelConfig.mean_eeg_features)

    def preprocess_config(self) -> PreprocessConfig:
        """The preprocessing every site applies in this run (the defaults changed by ``preprocess``)."""
        return PreprocessConfig.from_overrides(self.preprocess)

    def preset_config(self):
        """The preset's model for this run's preprocessing (a local path with source features)."""
        from fedneurogen.shared.model.config import get_preset

        preset = get_preset(self.preset).model_copy(update={"mean_eeg_features": self.residual_eeg})
        return preset.for_preprocess(self.preprocess_config())

    @model_validator(mode="after")
    def _consistent(self) -> "RunConfig":
        try:  # the settings parse, and give windows the preset's model takes
            self.preset_config().check_preprocess(self.preprocess_config())
        except ConfigError as err:
            raise ValueError(f"preprocess = {self.preprocess!r}: {err}") from None
        guaranteed = max(self.min_available_nodes, self.min_train_nodes)
        if self.min_train_replies > guaranteed:
            raise ValueError(
                f"min-train-replies = {self.min_train_replies} is more than the sites a round is sure to ask "
                f"(min-available-nodes = {self.min_available_nodes}, min-train-nodes = {self.min_train_nodes}); "
                f"allowed: 1 to {guaranteed}, or raise min-available-nodes"
            )
        return self

    def get(self, key: str, default: Any = None) -> Any:
        """A value by its run-config key (``cfg.get("num-server-rounds")``)."""
        name = key.replace("-", "_")
        if name in type(self).model_fields:
            return getattr(self, name)
        return (self.model_extra or {}).get(key, default)


def _allowed(model: type[BaseModel], key: str) -> tuple[str, ...] | None:
    field = model.model_fields.get(key.replace("-", "_"))
    args = get_args(field.annotation) if field is not None else ()
    return tuple(str(a) for a in args) if args and all(isinstance(a, str) for a in args) else None


def _describe(model: type[BaseModel], error: dict) -> str:
    if not error["loc"]:  # a check across keys
        return str(error.get("ctx", {}).get("error", error["msg"]))
    key = str(error["loc"][0])
    shown = f"{key} = {error['input']!r}"
    allowed = _allowed(model, key)
    if allowed is not None:
        return f"{shown} is not allowed; choose one of: {', '.join(allowed)}"
    message = str(error["msg"]).replace("Input should be", "must be")
    return f"{shown}: {message}"


def validate_run_config(run_config: dict[str, Any], model: type[BaseModel] = RunConfig) -> Any:
    """The typed run config, or ``ConfigError`` naming every bad key, its value and what is allowed.

    ``model`` is the pydantic model that types it: ``RunConfig`` (the app's keys), or another
    set of keys read from the same run config (the local simulation's ``SimulationConfig``)."""
    try:
        return model.model_validate(dict(run_config))
    except ValidationError as err:
        problems = [_describe(model, e) for e in err.errors(include_url=False)]
        raise ConfigError("run config: " + "; ".join(problems)) from None
