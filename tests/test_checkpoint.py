"""Checkpoints (round trip, verification, clear errors) and the EMA of weights."""

from __future__ import annotations

import json

import pytest
import torch

from fedneurogen.shared.config import PreprocessConfig
from fedneurogen.shared.errors import ConfigError
from fedneurogen.shared.io import file_sha256
from fedneurogen.shared.model import (
    EMA,
    NeuroGenModel,
    load_checkpoint,
    load_checkpoint_into,
    load_ema,
    read_checkpoint_config,
    save_checkpoint,
)
from test_model import FMRI_POSITIONS, make_batch, perturb, tiny_model


def rewrite_config(path, meta) -> None:
    """Edit a checkpoint's config.json on purpose, re-hashing it in the manifest (as a person who
    means the edit would), so the checks behind the manifest are reached."""
    from fedneurogen.shared.manifest import write_manifest

    (path / "config.json").write_text(json.dumps(meta))
    write_manifest(path, ["model.safetensors", "config.json"])


EXTRA = {
    "preprocess": PreprocessConfig().model_dump(),
    "class_names": ["faces", "scenes", "left", "right"],
    "provenance": {"rounds": 3, "sites": ["site-01", "site-02"]},
}


@pytest.fixture(scope="module")
def trained():
    """A tiny model moved off its initialisation, its EMA after two updates, and its checkpoint."""
    model = tiny_model()
    ema = EMA(model, decay=0.9)
    perturb(model, seed=1)
    ema.update(model)
    perturb(model, seed=2)
    ema.update(model)
    return model, ema


def test_round_trip_gives_identical_outputs(trained, tmp_path):
    model, ema = trained
    path = save_checkpoint(tmp_path / "ckpt", model, ema=ema, extra=EXTRA)
    assert sorted(p.name for p in path.iterdir()) == [
        "MANIFEST.sha256",
        "MANIFEST.sha256.sig",
        "config.json",
        "model.safetensors",
    ]  # no temp files left
    meta = json.loads((path / "config.json").read_text())
    assert meta["content_hash"] == file_sha256(path / "model.safetensors")
    assert meta["preset"] == "tiny" and meta["model_config"]["hidden_dim"] == 64
    assert meta["class_names"] == EXTRA["class_names"] and meta["preprocess"]["eeg_sfreq"] == 200.0
    assert meta["provenance"]["rounds"] == 3 and meta["ema"] == {"decay": 0.9, "num_updates": 2}
    assert set(meta["modality_heads"]) == {"fmri", "fnirs"} and "ico4" in meta["target_space"]["fmri"]

    loaded, loaded_meta = load_checkpoint(path, device="cpu")
    assert loaded_meta["content_hash"] == meta["content_hash"]
    assert all(t.device.type == "cpu" for t in loaded.state_dict().values())  # nothing left on the meta device
    assert all(
        p.requires_grad != (".mean.ridge." in n or ".noise." in n) for n, p in loaded.named_parameters()
    )  # the ridge path and the noise model are closed-form
    assert torch.equal(
        loaded.modality_heads["fmri"].tokenizer.patch_index, model.modality_heads["fmri"].tokenizer.patch_index
    )
    for modality in ("fmri", "fnirs"):
        batch = make_batch(modality, n_windows=2)
        expected = model.sample(batch, steps=3, guidance_scale=2.0, generator=torch.Generator().manual_seed(0))
        actual = loaded.sample(batch, steps=3, guidance_scale=2.0, generator=torch.Generator().manual_seed(0))
        assert torch.equal(actual, expected)

    # use_ema loads the averaged weights; load_ema restores the average itself
    ema_model, _ = load_checkpoint(path, device="cpu", use_ema=True)
    for name, p in ema_model.named_parameters():
        assert torch.equal(p, ema.shadow[name])
    restored = load_ema(path, loaded)
    assert restored.num_updates == 2 and restored.decay == 0.9
    assert all(torch.equal(restored.shadow[n], ema.shadow[n]) for n in ema.shadow)


def test_checkpoint_without_ema_and_overwrite(trained, tmp_path):
    model, _ = trained
    path = save_checkpoint(tmp_path / "ckpt", tiny_model(seed=5))
    path = save_checkpoint(path, model)  # overwrite in place
    loaded, meta = load_checkpoint(path, device="cpu")
    assert meta["ema"] is None and load_ema(path, loaded) is None
    assert all(torch.equal(a, b) for a, b in zip(loaded.parameters(), model.parameters()))
    with pytest.raises(ConfigError, match="has no EMA weights"):
        load_checkpoint(path, device="cpu", use_ema=True)


def test_wrong_preset_is_named(trained, tmp_path):
    model, _ = trained
    path = save_checkpoint(tmp_path / "ckpt", model)
    small = NeuroGenModel("small", fmri_positions=FMRI_POSITIONS, device="cpu")
    with pytest.raises(
        ConfigError, match=r"was trained for preset 'tiny' but the model is preset 'small' \(.*hidden_dim 64 vs 128"
    ):
        load_checkpoint_into(small, path)
    with pytest.raises(ConfigError, match="was trained for preset 'tiny' but preset 'base' was requested"):
        load_checkpoint(path, expect_preset="base")
    # the same preset loads into an existing model (resume)
    fresh = tiny_model(seed=9)
    load_checkpoint_into(fresh, path)
    assert all(torch.equal(a, b) for a, b in zip(fresh.parameters(), model.parameters()))


def test_tampered_weights_fail_the_hash_check(trained, tmp_path):
    path = save_checkpoint(tmp_path / "ckpt", trained[0])
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(
        ConfigError,
        match=r"model.safetensors are corrupt or were modified: their SHA-256 .* does not match content_hash",
    ):
        load_checkpoint(path, device="cpu")


def test_missing_files_are_clear_errors(trained, tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")
    path = save_checkpoint(tmp_path / "ckpt", trained[0])
    (path / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match="is missing its weights file .*model.safetensors"):
        load_checkpoint(path)
    (path / "config.json").unlink()
    with pytest.raises(ConfigError, match="is incomplete: .*config.json is missing"):
        read_checkpoint_config(path)


def test_config_that_does_not_match_the_weights(trained, tmp_path):
    path = save_checkpoint(tmp_path / "ckpt", trained[0])
    meta = json.loads((path / "config.json").read_text())
    meta["model_config"]["eeg_dim"] = 48  # weights still hold a 32-wide EEG encoder
    rewrite_config(path, meta)
    with pytest.raises(
        ConfigError, match=r"model.safetensors do not fit .*eeg_encoder\..*: file \[.*\] vs model \[.*\]"
    ):
        load_checkpoint(path, device="cpu")
    meta["model_config"]["eeg_heads"] = 5  # 48 is not divisible by 5
    rewrite_config(path, meta)
    with pytest.raises(ConfigError, match="has no valid model_config"):
        load_checkpoint(path, device="cpu")


def test_extra_cannot_override_the_format(trained, tmp_path):
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(tmp_path / "ckpt", trained[0], extra={"content_hash": "x"})
    with pytest.raises(ConfigError, match="class names"):
        save_checkpoint(tmp_path / "ckpt", trained[0], extra={"class_names": [str(i) for i in range(20)]})


def test_ema_update_and_swap():
    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, decay=0.5, warmup=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)
    assert torch.allclose(ema.shadow["weight"], torch.full((1, 2), 0.5))
    with ema.average_parameters(model):
        assert torch.allclose(model.weight, torch.full((1, 2), 0.5))
    assert torch.allclose(model.weight, torch.ones(1, 2))  # restored
    warm = EMA(model, decay=0.999)
    assert warm.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0) before the first update


def test_a_file_or_an_unknown_preset_is_named(trained, tmp_path):
    import json

    path = save_checkpoint(tmp_path / "ckpt", trained[0])
    with pytest.raises(ConfigError, match=r"is a file of a checkpoint; give the folder that holds it: .*ckpt$"):
        load_checkpoint(path / "model.safetensors")
    config = json.loads((path / "config.json").read_text())
    config["preset"] = config["model_config"]["preset"] = "huge"
    rewrite_config(path, config)
    with pytest.raises(ConfigError, match=r"names preset 'huge'; allowed: base, custom, small, tiny"):
        load_checkpoint(path, device="cpu")


def test_config_cannot_point_outside_the_checkpoint(trained, tmp_path):
    import json

    path = save_checkpoint(tmp_path / "ckpt", trained[0])
    config = json.loads((path / "config.json").read_text())
    config["weights_file"] = "../elsewhere/model.safetensors"
    rewrite_config(path, config)
    with pytest.raises(
        ConfigError, match=r"names weights_file '../elsewhere/model.safetensors' outside the checkpoint folder"
    ):
        load_checkpoint(path, device="cpu")


def test_manifest_covers_the_config(trained, tmp_path):
    """A changed class name (still valid JSON) in config.json is refused, naming the file; the
    manifest is what `sha256sum -c` reads."""
    import subprocess

    path = save_checkpoint(tmp_path / "ckpt", trained[0], extra={"class_names": ["faces", "scenes"]})
    assert subprocess.run(["sha256sum", "--quiet", "-c", "MANIFEST.sha256"], cwd=path).returncode == 0
    load_checkpoint(path, device="cpu")
    text = (path / "config.json").read_text()
    (path / "config.json").write_text(text.replace('"faces"', '"facts"'))
    with pytest.raises(
        ConfigError,
        match=r"config.json is corrupt or was modified: its SHA-256 .* does not match .* in .*MANIFEST.sha256",
    ):
        load_checkpoint(path, device="cpu")
    (path / "config.json").write_text(text)
    (path / "MANIFEST.sha256").write_text("not a manifest\n")
    with pytest.raises(ConfigError, match=r"signature that does not match its MANIFEST.sha256"):
        load_checkpoint(path, device="cpu")
    with pytest.raises(ConfigError, match=r"MANIFEST.sha256 line 1 is not"), pytest.warns(UserWarning):
        load_checkpoint(path, device="cpu", trust_unsigned=True)
    (path / "MANIFEST.sha256").unlink()  # as written before manifests existed: unsigned, loaded only when trusted
    with pytest.raises(ConfigError, match=r"has no MANIFEST.sha256 .*--trust-unsigned"):
        load_checkpoint(path, device="cpu")
    with pytest.warns(UserWarning, match="loaded because of --trust-unsigned"):
        load_checkpoint(path, device="cpu", trust_unsigned=True)  # the weights are still checked (content_hash)


def test_round_manifest_covers_strategy_state_and_history(trained, tmp_path):
    """A server round's manifest lists its strategy state and history: damage is refused on resume."""
    import numpy as np

    from fedneurogen.server.checkpointing import RunStore

    model = trained[0]
    store = RunStore(tmp_path / "run", keep=2)
    folder = store.save_round(
        1, model, {"momentum": np.zeros(3, np.float32)}, [{"round": 1, "loss": 0.5}], {"class_names": ["a"]}
    )
    listed = (folder / "MANIFEST.sha256").read_text()
    assert all(name in listed for name in ("model.safetensors", "config.json", "strategy.safetensors", "history.json"))
    assert store.resume(model)[0] == 1
    history = folder / "history.json"
    history.write_text(history.read_text().replace("0.5", "0.4"))
    with pytest.raises(ConfigError, match=r"history.json is corrupt or was modified"):
        store.resume(model)


def test_a_checkpoint_from_before_the_alpha_gated_block_loads_as_it_was_made(tmp_path):
    """Its model config has no ``gated_features`` and its preprocessing no ``alpha_gating``: it
    loads with no gated block, and its recorded preprocessing makes the design it was trained on."""
    from fedneurogen.shared.model import get_preset

    torch.manual_seed(0)
    before = get_preset("tiny").model_copy(update={"gated_features": 0})
    model = NeuroGenModel(before, fmri_positions=FMRI_POSITIONS, device="cpu")
    preprocess = PreprocessConfig(alpha_gating=False).model_dump()
    path = save_checkpoint(tmp_path / "old", model, extra={**EXTRA, "preprocess": preprocess})
    meta = json.loads((path / "config.json").read_text())
    del meta["model_config"]["gated_features"]
    del meta["preprocess"]["alpha_gating"], meta["preprocess"]["alpha_gate"]
    rewrite_config(path, meta)
    loaded, meta = load_checkpoint(path, device="cpu")
    assert loaded.config.gated_features == 0 and loaded.config.design_width == 640
    stored = PreprocessConfig.from_stored(meta["preprocess"])
    assert not stored.alpha_gating and stored.cache_key() == PreprocessConfig(alpha_gating=False).cache_key()
    assert stored == PreprocessConfig(alpha_gating=False)  # a resume without the block is not refused over its gate
    loaded.config.check_preprocess(stored)
    assert PreprocessConfig.from_stored(None).alpha_gating  # no record: today's defaults
    # a record with the block but from before its gate was a choice: the product gate it was made with
    first_form = PreprocessConfig().model_dump()
    del first_form["alpha_gate"]
    assert PreprocessConfig.from_stored(first_form).alpha_gate == "product"
    assert PreprocessConfig.from_stored(PreprocessConfig().model_dump()) == PreprocessConfig()
