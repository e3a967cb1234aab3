"""Model checkpoints: one directory, written atomically, verified on load.

    <checkpoint>/model.safetensors   weights (and EMA weights, prefixed ``ema.``)
    <checkpoint>/config.json         model config, modality heads, target space, preprocessing,
                                     class names, training provenance, and the SHA-256 of the
                                     weights file (``content_hash``)
    <checkpoint>/MANIFEST.sha256     the SHA-256 of every file of the checkpoint (``sha256sum``
                                     format; a server round adds its strategy state and history)
    <checkpoint>/MANIFEST.sha256.sig the writer's Ed25519 signature of the manifest and its key id
                                     (``shared/signing.py``)

``config.json`` and the manifest are removed first when a checkpoint is overwritten and written
last, so a directory with a ``config.json`` holds the complete checkpoint it describes. Loading
checks the manifest's signature, then every file the manifest lists: a changed byte in
``config.json`` (class names, preprocessing, DP provenance) is refused like one in the weights,
and a manifest rewritten to match is refused by its signature. A checkpoint signed by neither
the loading user nor a key that user trusts, or not signed at all (written before manifests or
signatures existed), is refused unless the load is told ``trust_unsigned`` (the commands'
``--trust-unsigned``): then it loads with a warning, its files still checked against its manifest
when it has one (its weights against ``content_hash`` always). The weights are stored on the CPU;
the same checkpoint loads on CPU or CUDA.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fedneurogen import __version__
from fedneurogen.shared.errors import ConfigError
from fedneurogen.shared.io import atomic_path, file_sha256, write_json_atomic
from fedneurogen.shared.manifest import MANIFEST_FILE, verify_manifest, write_manifest
from fedneurogen.shared.model.config import PRESETS, ModelConfig, count_parameters
from fedneurogen.shared.model.ema import EMA, unwrap_model
from fedneurogen.shared.model.batch import default_device
from fedneurogen.shared.model.generator import NeuroGenModel
from fedneurogen.shared.signing import signature_path

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT = "fedneurogen.checkpoint"
FORMAT_VERSION = 1
EMA_PREFIX = "ema."
_RESERVED = {
    "format",
    "format_version",
    "weights_file",
    "content_hash",
    "preset",
    "model_config",
    "modality_heads",
    "target_space",
    "parameter_count",
    "ema",
    "software",
}


def save_checkpoint(
    path: str | Path, model: torch.nn.Module, ema: EMA | None = None, extra: dict[str, Any] | None = None
) -> Path:
    """Write ``model`` (and ``ema``) to the checkpoint directory ``path``.

    The weights go to ``model.safetensors`` (EMA weights prefixed ``ema.``), on the CPU; then
    ``config.json`` and ``MANIFEST.sha256`` (signed with this user's key) are written last (see
    the module docstring).

    Parameters
    ----------
    path : str | Path
        The checkpoint directory (created; an existing checkpoint there is overwritten).
    model : torch.nn.Module
        A ``NeuroGenModel`` (an Opacus wrapper is unwrapped).
    ema : EMA | None
        Its exponential moving average, stored alongside.
    extra : dict of str to Any | None
        Stored in ``config.json`` as given; the expected keys are ``preprocess``
        (``PreprocessConfig.model_dump()``), ``class_names`` (label index -> name) and
        ``provenance`` (how and on what the model was trained).

    Returns
    -------
    Path
        The directory.

    Raises
    ------
    TypeError
        ``model`` is not a ``NeuroGenModel``.
    ValueError
        ``extra`` uses a key reserved for the format.
    ConfigError
        More class names than the model has label embeddings, or this user's signing key cannot
        be made or read.
    """
    model = unwrap_model(model)
    if not isinstance(model, NeuroGenModel):
        raise TypeError(f"save_checkpoint expects a NeuroGenModel, got {type(model).__name__}")
    extra = dict(extra or {})
    clash = _RESERVED & extra.keys()
    if clash:
        raise ValueError(f"extra keys {sorted(clash)} are reserved for the checkpoint format")
    config = model.config
    class_names = extra.get("class_names")
    if class_names is not None and len(class_names) > config.num_classes:
        raise ConfigError(f"{len(class_names)} class names but the model has {config.num_classes} label embeddings")

    tensors = {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
    if ema is not None:
        tensors.update({EMA_PREFIX + name: t.detach().cpu().contiguous() for name, t in ema.state_dict().items()})

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / MANIFEST_FILE).unlink(missing_ok=True)
    signature_path(path / MANIFEST_FILE).unlink(missing_ok=True)
    (path / CONFIG_FILE).unlink(missing_ok=True)  # from here until the end the checkpoint reads as incomplete
    with atomic_path(path / WEIGHTS_FILE) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        content_hash = file_sha256(tmp)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "weights_file": WEIGHTS_FILE,
        "content_hash": content_hash,
        "preset": config.preset,
        "model_config": config.model_dump(mode="json"),
        "modality_heads": {
            "fmri": {
                "n_points": config.fmri.n_points,
                "n_frames": config.fmri.n_frames,
                "sfreq": config.fmri.sfreq,
                "n_tokens": config.fmri.n_patches,
            },
            "fnirs": {
                "n_frames": config.fnirs.n_frames,
                "sfreq": config.fnirs.sfreq,
                "max_channels": config.fnirs.max_channels,
            },
        },
        "target_space": {
            "fmri": "ico4: first 2562 vertices of each fsaverage5 hemisphere, left then right",
            "fnirs": "site channels, HbO and HbR at channel midpoints",
        },
        "parameter_count": count_parameters(model),
        "ema": None if ema is None else {"decay": ema.decay, "num_updates": ema.num_updates},
        "software": {"fedneurogen": __version__, "torch": torch.__version__},
        "preprocess": None,
        "class_names": None,
        "provenance": {},
        **extra,
    }
    write_json_atomic(path / CONFIG_FILE, meta)
    write_manifest(path, [WEIGHTS_FILE, CONFIG_FILE], known={WEIGHTS_FILE: content_hash})
    return path


def read_checkpoint_config(path: str | Path, *, trust_unsigned: bool | None = None) -> dict[str, Any]:
    """The ``config.json`` of a complete checkpoint.

    The manifest's signature is checked, its format and version, and every file the manifest
    lists except the weights (whose hash is checked when they are read); the weights themselves
    are not read.

    Parameters
    ----------
    path : str | Path
        The checkpoint directory.
    trust_unsigned : bool | None
        Load an unsigned or untrusted checkpoint with a warning instead of refusing it; None: as
        the running command says (``signing.trusting_unsigned``, its ``--trust-unsigned``).

    Returns
    -------
    dict of str to Any
        The contents of ``config.json``.

    Raises
    ------
    ConfigError
        ``path`` is a file or missing, the checkpoint is incomplete, unsigned or signed by a key
        this user does not trust (``signing.UntrustedSignature``), ``config.json`` is not a
        checkpoint config of this format version, or the manifest does not match.
    """
    path = Path(path)
    if path.is_file() and path.name in (CONFIG_FILE, WEIGHTS_FILE):
        raise ConfigError(f"{path} is a file of a checkpoint; give the folder that holds it: {path.parent}")
    if not path.is_dir():
        raise ConfigError(
            f"checkpoint {path} does not exist (expected a directory with {CONFIG_FILE} and {WEIGHTS_FILE})"
        )
    config_file = path / CONFIG_FILE
    if not config_file.is_file():
        raise ConfigError(
            f"checkpoint {path} is incomplete: {config_file} is missing (a save was interrupted, or this is not a checkpoint)"
        )
    try:
        meta = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"checkpoint config {config_file} is not valid JSON: {err}") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ConfigError(
            f"{config_file} is not a FedNeuroGen checkpoint config (format {meta.get('format') if isinstance(meta, dict) else None!r})"
        )
    if meta.get("format_version") != FORMAT_VERSION:
        raise ConfigError(
            f"{config_file} has checkpoint format version {meta.get('format_version')}; this program reads version {FORMAT_VERSION}"
        )
    weights_name = str(meta.get("weights_file", WEIGHTS_FILE))
    if (path / weights_name).resolve().parent != path.resolve():  # a file of this checkpoint folder, nothing else
        raise ConfigError(
            f"{config_file} names weights_file {meta.get('weights_file')!r} outside the checkpoint folder"
        )
    try:
        # the weights are checked when they are read (their hash is content_hash): not twice
        manifest = verify_manifest(path, skip={weights_name}, trust_unsigned=trust_unsigned)
    except (OSError, ValueError) as err:
        raise ConfigError(f"checkpoint {path}: {err}") from err
    if manifest is not None and manifest.get(weights_name) != meta.get("content_hash"):
        raise ConfigError(
            f"checkpoint {path}: {path / MANIFEST_FILE} and {config_file} disagree on the weights' SHA-256"
        )
    return meta


def checkpoint_model_config(path: str | Path, meta: dict[str, Any]) -> ModelConfig:
    """The ``ModelConfig`` a checkpoint config describes.

    Parameters
    ----------
    path : str | Path
        The checkpoint directory (for messages).
    meta : dict of str to Any
        Its ``config.json`` (``read_checkpoint_config``).

    Returns
    -------
    ModelConfig
        The validated model config.

    Raises
    ------
    ConfigError
        No valid ``model_config``, or a preset name that is neither a preset nor ``custom``.
    """
    try:
        stored = dict(meta["model_config"])
        stored.setdefault("gated_features", 0)  # a model from before the alpha-gated block has none
        config = ModelConfig.model_validate(stored)
    except (KeyError, TypeError, ValueError, ValidationError) as err:
        raise ConfigError(f"checkpoint config {Path(path) / CONFIG_FILE} has no valid model_config: {err}") from err
    allowed = sorted({*PRESETS, "custom"})
    for name in {config.preset, meta.get("preset", config.preset)}:  # the name is shown in provenance: it must be real
        if name not in allowed:
            raise ConfigError(
                f"checkpoint config {Path(path) / CONFIG_FILE} names preset {name!r}; allowed: {', '.join(allowed)}"
            )
    return config


def _read_weights(path: Path, meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    weights_file = path / str(meta.get("weights_file", WEIGHTS_FILE))
    if weights_file.resolve().parent != path.resolve():  # a file of this checkpoint folder, nothing else
        raise ConfigError(
            f"{path / CONFIG_FILE} names weights_file {meta.get('weights_file')!r} outside the checkpoint folder"
        )
    if not weights_file.is_file():
        raise ConfigError(f"checkpoint {path} is missing its weights file {weights_file}")
    actual = file_sha256(weights_file)
    if actual != meta.get("content_hash"):
        raise ConfigError(
            f"checkpoint weights {weights_file} are corrupt or were modified: their SHA-256 {actual} "
            f"does not match content_hash {meta.get('content_hash')} in {path / CONFIG_FILE}"
        )
    try:
        return load_file(str(weights_file), device="cpu")
    except (SafetensorError, OSError) as err:
        raise ConfigError(f"cannot read checkpoint weights {weights_file}: {err}") from err


def _config_differences(a: ModelConfig, b: ModelConfig) -> list[str]:
    def flat(d: dict, prefix: str = "") -> dict[str, Any]:
        out = {}
        for key, value in d.items():
            out.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value})
        return out

    fa, fb = flat(a.model_dump(mode="json")), flat(b.model_dump(mode="json"))
    return [
        f"{key} {fa.get(key)} vs {fb.get(key)}"
        for key in sorted(fa.keys() | fb.keys())
        if key != "preset" and fa.get(key) != fb.get(key)
    ]


def _load_state(
    model: NeuroGenModel, tensors: dict[str, torch.Tensor], path: Path, use_ema: bool, assign: bool = False
) -> None:
    weights = {name: t for name, t in tensors.items() if not name.startswith(EMA_PREFIX)}
    if use_ema:
        ema = {name.removeprefix(EMA_PREFIX): t for name, t in tensors.items() if name.startswith(EMA_PREFIX)}
        if not ema:
            raise ConfigError(f"checkpoint {path} has no EMA weights (saved without ema=)")
        weights.update(ema)  # EMA covers the parameters; buffers come from the model weights
    own = model.state_dict()
    for name in own:  # a checkpoint from before class offsets: none (the ridge path's behaviour then)
        if name.endswith(".mean.ridge.class_intercept") and name not in weights:
            weights[name] = torch.zeros(own[name].shape, dtype=own[name].dtype)
        if name.endswith(".mean.ridge.class_shrinkage") and name not in weights:  # its offsets were shrunk
            weights[name] = torch.ones(own[name].shape, dtype=own[name].dtype)
        if ".noise." in name and name not in weights:  # from before the noise model: the identity
            weights[name] = own[name].detach().clone()
    problems = [f"missing {name}" for name in own if name not in weights]
    problems += [f"unexpected {name}" for name in weights if name not in own]
    problems += [
        f"{name}: file {list(weights[name].shape)} vs model {list(own[name].shape)}"
        for name in own
        if name in weights and weights[name].shape != own[name].shape
    ]
    if problems:
        shown = "; ".join(problems[:6]) + (f"; ... ({len(problems)} in all)" if len(problems) > 6 else "")
        raise ConfigError(
            f"checkpoint weights {path / WEIGHTS_FILE} do not fit the model (preset {model.config.preset!r}) "
            f"that {path / CONFIG_FILE} describes: {shown}"
        )
    model.load_state_dict(weights, assign=assign)


def load_checkpoint(
    path: str | Path,
    device: torch.device | str | None = None,
    *,
    use_ema: bool = False,
    expect_preset: str | None = None,
    trust_unsigned: bool | None = None,
) -> tuple[NeuroGenModel, dict[str, Any]]:
    """Rebuild the model a checkpoint describes and load its weights.

    The weights' hash and every tensor shape are verified. The model is built without memory
    (meta device) and takes the stored tensors as its weights, the fMRI patch layout included.

    Parameters
    ----------
    path : str | Path
        The checkpoint directory.
    device : torch.device | str | None
        Where the model goes; None: CUDA when available.
    use_ema : bool
        Load the EMA weights instead of the raw ones (buffers come from the raw weights).
    expect_preset : str | None
        Refuse a checkpoint of another preset.
    trust_unsigned : bool | None
        As in ``read_checkpoint_config``.

    Returns
    -------
    model : NeuroGenModel
        The model on ``device``.
    meta : dict of str to Any
        The contents of ``config.json``.

    Raises
    ------
    ConfigError
        The checkpoint is missing, incomplete, corrupt or modified, unsigned or untrusted, of
        another preset than ``expect_preset``, has no EMA weights with ``use_ema``, or its
        weights do not fit.
    """
    path = Path(path)
    meta = read_checkpoint_config(path, trust_unsigned=trust_unsigned)
    config = checkpoint_model_config(path, meta)
    if expect_preset is not None and config.preset != expect_preset:
        raise ConfigError(
            f"checkpoint {path} was trained for preset {config.preset!r} but preset {expect_preset!r} was requested"
        )
    tensors = _read_weights(path, meta)
    # Built without memory (meta device), then the stored tensors become its weights; the fMRI
    # patch layout comes from the weights too.
    with torch.device("meta"):
        model = NeuroGenModel(config, fmri_positions=None, device="meta")
    _load_state(model, tensors, path, use_ema, assign=True)
    model.to(torch.device(device) if device is not None else default_device())
    return model, meta


def load_checkpoint_into(
    model: torch.nn.Module, path: str | Path, *, use_ema: bool = False, trust_unsigned: bool | None = None
) -> dict[str, Any]:
    """Load a checkpoint into an existing model of the same config (e.g. to resume).

    Parameters
    ----------
    model : torch.nn.Module
        A ``NeuroGenModel`` (an Opacus wrapper is unwrapped); the weights go to its device.
    path : str | Path
        The checkpoint directory.
    use_ema : bool
        Load the EMA weights instead of the raw ones.
    trust_unsigned : bool | None
        As in ``read_checkpoint_config``.

    Returns
    -------
    dict of str to Any
        The contents of ``config.json``.

    Raises
    ------
    ConfigError
        The checkpoint's config differs from the model's (the message lists the differences),
        or as in ``load_checkpoint``.
    """
    model = unwrap_model(model)
    path = Path(path)
    meta = read_checkpoint_config(path, trust_unsigned=trust_unsigned)
    config = checkpoint_model_config(path, meta)
    if config != model.config:
        raise ConfigError(
            f"checkpoint {path} was trained for preset {config.preset!r} but the model is preset {model.config.preset!r} "
            f"(checkpoint vs model: {'; '.join(_config_differences(config, model.config)) or 'preset name only'})"
        )
    tensors = _read_weights(path, meta)
    device = model.device
    _load_state(model, {name: t.to(device) for name, t in tensors.items()}, path, use_ema)
    return meta


def load_ema(path: str | Path, model: torch.nn.Module, *, trust_unsigned: bool | None = None) -> EMA | None:
    """The EMA stored in a checkpoint, for ``model``.

    Parameters
    ----------
    path : str | Path
        The checkpoint directory.
    model : torch.nn.Module
        The model the EMA averages (its parameter names must match).
    trust_unsigned : bool | None
        As in ``read_checkpoint_config``.

    Returns
    -------
    EMA | None
        The EMA with its decay and update count; None when the checkpoint was saved without one.

    Raises
    ------
    ConfigError
        The checkpoint cannot be read, or its EMA weights do not fit ``model``.
    """
    path = Path(path)
    meta = read_checkpoint_config(path, trust_unsigned=trust_unsigned)
    if meta.get("ema") is None:
        return None
    tensors = _read_weights(path, meta)
    ema = EMA(model, decay=meta["ema"]["decay"])
    ema.num_updates = int(meta["ema"]["num_updates"])
    try:
        ema.load_state_dict(
            {name.removeprefix(EMA_PREFIX): t for name, t in tensors.items() if name.startswith(EMA_PREFIX)}
        )
    except KeyError as err:
        raise ConfigError(f"EMA weights in {path / WEIGHTS_FILE} do not fit the model: {err}") from err
    return ema
