"""The generative model: shapes, adaLN-Zero, guidance, training, alignment, LaBraM loader, Opacus."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch

from fedneurogen.shared.config import PreprocessConfig
from fedneurogen.shared.design import n_design_features
from fedneurogen.shared.errors import ConfigError
from fedneurogen.shared.model import (
    Batch,
    NeuroGenModel,
    count_parameters,
    get_preset,
    load_labram_checkpoint,
    parameter_count,
    parameter_modality,
)
from fedneurogen.shared.model.conditioning import HyperdimensionalIntegration, eeg_patch_times, target_frame_times
from fedneurogen.shared.model.eeg_encoder import (
    ELECTRODE_VOCABULARY,
    LABRAM_CHANNELS,
    UNKNOWN_ELECTRODE,
    EEGEncoder,
    electrode_indices,
)
from fedneurogen.shared.model.target_encoder import info_nce
from fedneurogen.shared.model.tokens import FmriTokenizer, fnirs_layout, patchify, unpatchify
from fedneurogen.shared.surface import load_ico4_positions
from fedneurogen.shared.recording import PairedWindows

EEG_NAMES = [
    "Fp1",
    "Fp2",
    "F7",
    "F3",
    "Fz",
    "F4",
    "F8",
    "T7",
    "C3",
    "Cz",
    "C4",
    "T8",
    "P7",
    "P3",
    "Pz",
    "P4",
    "P8",
    "O1",
    "Oz",
    "O2",
    "AF3",
    "AF4",
    "FC1",
    "FC2",
    "CP1",
    "CP2",
    "PO3",
    "PO4",
    "FC5",
    "FC6",
    "CP5",
    "CP6",
]


def sphere_points(n: int, radius: float, rng: np.random.Generator, side: int = 0) -> np.ndarray:
    """Points on the upper half of a sphere (mm); ``side`` -1/+1 keeps them left/right."""
    v = rng.normal(size=(n, 3))
    v[:, 2] = np.abs(v[:, 2])
    if side:
        v[:, 0] = side * np.abs(v[:, 0])
    return radius * v / np.linalg.norm(v, axis=1, keepdims=True)


FMRI_POSITIONS = np.concatenate(
    [sphere_points(2562, 70, np.random.default_rng(1), -1), sphere_points(2562, 70, np.random.default_rng(2), 1)]
)


DESIGN_FEATURES = n_design_features(PreprocessConfig())


def make_windows(
    modality: str, n_windows: int = 4, n_eeg: int = 8, n_fnirs_channels: int = 6, seed: int = 0
) -> PairedWindows:
    """Random paired windows shaped like the data layer's (16 s; fMRI ico4 or fNIRS hbo/hbr)."""
    rng = np.random.default_rng(seed)
    if modality == "fmri":
        n_points, n_frames, sfreq, types = 5124, 8, 0.5, None
        names, positions, classes = [f"v{i}" for i in range(n_points)], FMRI_POSITIONS, ["faces", "scenes"]
    else:
        n_points, n_frames, sfreq = 2 * n_fnirs_channels, 16, 1.0
        names = [f"S{c + 1}_D{c + 1} {kind}" for c in range(n_fnirs_channels) for kind in ("hbo", "hbr")]
        types = [name.split()[-1] for name in names]
        positions, classes = np.repeat(sphere_points(n_fnirs_channels, 80, rng), 2, axis=0), ["left", "right"]
    return PairedWindows(
        eeg=rng.normal(size=(n_windows, n_eeg, 3200)).astype(np.float32),
        eeg_sfreq=200.0,
        eeg_channel_names=EEG_NAMES[:n_eeg],
        eeg_positions=sphere_points(n_eeg, 90, rng),
        target=rng.normal(size=(n_windows, n_points, n_frames)).astype(np.float32),
        target_sfreq=sfreq,
        target_modality=modality,
        target_names=names,
        target_positions=positions,
        labels=np.array([classes[i % 2] if i % 3 else "rest" for i in range(n_windows)]),
        subjects=np.array(["sub-01"] * n_windows),
        runs=np.array(["sub-01_run-1"] * n_windows),
        onsets=np.arange(n_windows) * 8.0,
        lag=6.0,
        target_point_types=types,
        design=rng.normal(size=(n_windows, n_frames, DESIGN_FEATURES)).astype(np.float32),
    )


CLASSES = {"faces": 0, "scenes": 1, "left": 2, "right": 3}


def make_batch(modality: str, **kwargs) -> Batch:
    return Batch.from_windows(make_windows(modality, **kwargs), class_to_index=CLASSES, device="cpu")


def tiny_model(seed: int = 0, **overrides) -> NeuroGenModel:
    torch.manual_seed(seed)
    config = get_preset("tiny").model_copy(update=overrides) if overrides else "tiny"
    return NeuroGenModel(config, fmri_positions=FMRI_POSITIONS, device="cpu")


def perturb(model: torch.nn.Module, scale: float = 0.05, seed: int = 0) -> None:
    """Move every weight off its initialisation (adaLN-Zero makes a fresh model's output 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point():
                p.add_(scale * torch.randn(p.shape, generator=g))


# ---------------------------------------------------------------------------------------------
# config and shapes


def test_presets_have_the_intended_sizes():
    counts = {name: parameter_count(name) for name in ("tiny", "small", "base")}
    assert counts["tiny"]["trainable"] < 1_000_000
    assert 1_000_000 < counts["small"]["trainable"] < 10_000_000
    assert counts["tiny"]["trainable"] == count_parameters(tiny_model(), trainable_only=True)
    assert counts["base"]["total"] > 100_000_000
    # LaBraM-Base: 12 layers x 200 wide, about 5.8M parameters
    base = get_preset("base")
    assert (base.eeg_depth, base.eeg_dim, base.eeg_heads) == (12, 200, 10)
    assert 5_000_000 < counts["base"]["eeg_encoder"] < 7_000_000
    assert counts["tiny"]["total"] == count_parameters(tiny_model())
    with pytest.raises(ConfigError, match="unknown model preset"):
        get_preset("huge")


@pytest.mark.parametrize(
    "modality, n_eeg, n_fnirs_channels",
    [("fmri", 8, 0), ("fmri", 16, 0), ("fnirs", 8, 5), ("fnirs", 12, 11)],
)
def test_loss_and_sample_shapes(modality, n_eeg, n_fnirs_channels):
    model = tiny_model()
    batch = make_batch(modality, n_windows=3, n_eeg=n_eeg, n_fnirs_channels=max(n_fnirs_channels, 1))
    total, parts = model.loss(batch, generator=torch.Generator().manual_seed(0))
    assert total.dim() == 0 and torch.isfinite(total)
    assert set(parts) == {"diffusion", "mean", "alignment", "total"}
    expected = (
        parts["diffusion"]
        + model.config.mean_loss_weight * parts["mean"]
        + model.config.alignment_weight * parts["alignment"]
    )
    assert parts["total"] == pytest.approx(expected, rel=1e-5)
    total.backward()
    assert model.modality_heads[modality].final_layer.linear.weight.grad.abs().sum() > 0
    out = model.sample(batch, steps=3, generator=torch.Generator().manual_seed(0))
    assert out.shape == batch.target.shape
    assert torch.isfinite(out).all()


def test_batch_from_windows_maps_labels_and_rejects_bad_shapes():
    windows = make_windows("fnirs", n_windows=4)
    batch = Batch.from_windows(windows, index=[1, 2, 3], class_to_index={"left": 0, "right": 1}, device="cpu")
    assert batch.eeg.shape == (3, 8, 3200) and batch.target.shape == (3, 12, 16)
    assert batch.labels.tolist() == [1, 0, -1]  # windows 1, 2, 3: right, left, rest (not a class -> null)
    model = tiny_model()
    wrong_frames = Batch.from_windows(windows, device="cpu")
    wrong_frames.target = wrong_frames.target[..., :8]
    with pytest.raises(ConfigError, match=r"fnirs target must be \[B, 12, 16\]"):
        model.loss(wrong_frames)
    unpaired = Batch.from_windows(windows, device="cpu")
    unpaired.target_point_types = ["hbo"] * 12
    with pytest.raises(ConfigError, match="two hbo points|without both"):
        model.loss(unpaired)


def test_fmri_patches_from_ico4_are_compact_balanced_and_invertible():
    config = get_preset("small").fmri
    positions = load_ico4_positions()
    assert positions.shape == (5124, 3)
    tokens = FmriTokenizer(config, positions)
    layout = tokens.layout()
    index = tokens.patch_index
    real = index[index < 5124]
    assert sorted(real.tolist()) == list(range(5124))  # every vertex in exactly one patch
    sizes = (index < 5124).sum(dim=1)
    assert sizes.max() - sizes.min() <= 1
    assert ((index[:64] < 2562) | (index[:64] == 5124)).all()  # the first half is the left hemisphere
    radius = [
        np.linalg.norm(positions[p] - positions[p].mean(0), axis=1).mean()
        for p in (row[row < 5124].numpy() for row in index)
    ]
    assert max(radius) < 25.0  # mm: patches are neighbourhoods, not scattered vertices
    x = torch.randn(2, 5124, 8)
    assert torch.equal(unpatchify(patchify(x, layout), layout, 8), x)
    # the grouping is deterministic
    assert torch.equal(FmriTokenizer(config, positions).patch_index, index)


def test_fnirs_channels_pair_hbo_with_hbr_in_any_order():
    names = ["S2_D1 hbr", "S1_D1 hbo", "S2_D1 hbo", "S1_D1 hbr", "S3_D2 hbr", "S3_D2 hbo"]
    types = [n.split()[1] for n in names]
    positions = torch.arange(18, dtype=torch.float32).view(6, 3)
    layout = fnirs_layout(names, types, positions)
    assert layout.index.tolist() == [[2, 0], [1, 3], [5, 4]]  # (hbo, hbr) per channel, first-seen order
    x = torch.randn(2, 6, 16)
    tokens = patchify(x, layout)
    assert torch.equal(tokens[:, 0, :16], x[:, 2]) and torch.equal(tokens[:, 0, 16:], x[:, 0])
    assert torch.equal(unpatchify(tokens, layout, 16), x)


def test_fmri_sampling_needs_only_eeg():
    """A site without fMRI generates it from EEG alone: the ico4 layout lives in the model."""
    model = tiny_model()
    batch = make_batch("fmri", n_windows=2)
    batch.target, batch.target_positions, batch.target_names = None, None, None
    assert model.sample(batch, steps=2).shape == (2, 5124, 8)
    with pytest.raises(ConfigError, match="needs a batch with targets"):
        model.loss(batch)


def test_unknown_electrodes_use_the_unknown_token():
    assert len(ELECTRODE_VOCABULARY) == 343
    assert electrode_indices(("Fp1", "EEG FP1-REF", "fp1", "ECG", "E17")) == (
        0,
        0,
        0,
        UNKNOWN_ELECTRODE,
        UNKNOWN_ELECTRODE,
    )
    model = tiny_model()
    batch = make_batch("fnirs")
    batch.eeg_channel_names = ["X1"] * 8
    total, _ = model.loss(batch)
    assert torch.isfinite(total)


def test_integration_lags_eeg_by_the_hemodynamic_delay():
    integration = HyperdimensionalIntegration(hrf_delay=6.0, hrf_width=2.0, learnable=True)
    features = torch.zeros(1, 3, 16, 1)
    features[0, :, 8] = 1.0  # EEG activity in patch 8: centred at -6 + 8.5 = 2.5 s
    patch_times = eeg_patch_times(16, lag=6.0, patch_seconds=1.0, device="cpu")
    frame_times = target_frame_times(8, sfreq=0.5, device="cpu")
    out = integration(features, torch.randn(3, 3) * 80, torch.randn(5, 3) * 60, patch_times, frame_times)
    assert out.shape == (1, 5, 8, 1)
    # shows up 6 s later, at 8.5 s: fMRI frame 4 (8 s) carries most of it
    assert out[0, 0, :, 0].argmax().item() == 4


# ---------------------------------------------------------------------------------------------
# DiT: adaLN-Zero and classifier-free guidance


def test_adaln_zero_makes_every_block_the_identity_and_the_output_zero():
    model = tiny_model()
    x, c, context = torch.randn(2, 7, 64), torch.randn(2, 64), torch.randn(2, 5, 64)
    for block in model.dit.blocks:
        assert torch.equal(block(x, c, context), x)
    for head in model.modality_heads.values():
        assert torch.count_nonzero(head.final_layer(x, c)) == 0
    batch = make_batch("fmri", n_windows=2)
    layout = model.layout(batch)
    condition = model.condition_tokens(batch, model.encode_eeg(batch), layout)
    output = model.denoise(torch.randn(2, 5124, 8), torch.tensor([3, 700]), condition, layout, "fmri", batch.labels)
    assert torch.count_nonzero(output) == 0


def _denoise_inputs(model, batch):
    layout = model.layout(batch)
    condition = model.condition_tokens(batch, model.encode_eeg(batch), layout)
    x_t = torch.randn(batch.batch_size, layout.n_points, 16, generator=torch.Generator().manual_seed(3))
    return x_t, torch.tensor([100, 600, 900])[: batch.batch_size], condition, layout


@torch.no_grad()
def test_null_label_and_classifier_free_guidance():
    model = tiny_model()
    perturb(model)
    batch = make_batch("fnirs", n_windows=3)
    x_t, t, condition, layout = _denoise_inputs(model, batch)
    labels = torch.tensor([2, 3, 2])
    denoise = lambda y, **kw: model.denoise(x_t, t, condition, layout, "fnirs", y, **kw)  # noqa: E731

    conditional, unconditional = denoise(labels), denoise(None)
    assert not torch.allclose(conditional, unconditional)
    # None and -1 both mean the null label, which is the embedding's last row
    assert torch.equal(unconditional, denoise(torch.full((3,), -1)))
    null_row = model.dit.y_embedder.embedding.weight[model.config.num_classes]
    saved = null_row.clone()
    null_row.add_(1.0)
    assert not torch.allclose(denoise(None), unconditional)
    null_row.copy_(saved)

    guided = lambda s: model.guided_denoise(x_t, t, condition, layout, "fnirs", labels, s)  # noqa: E731
    assert torch.equal(guided(1.0), conditional)
    torch.testing.assert_close(guided(0.0), unconditional, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(guided(3.0), unconditional + 3.0 * (conditional - unconditional), rtol=1e-5, atol=1e-6)

    # label dropout 1.0 in training: every label becomes the null label
    model.dit.y_embedder.dropout = 1.0
    assert torch.equal(denoise(labels, drop_labels=True), unconditional)
    model.dit.y_embedder.dropout = 0.0
    assert torch.equal(denoise(labels, drop_labels=True), conditional)


def test_sampling_is_deterministic_given_the_generator_and_guidance_changes_it():
    model = tiny_model()
    perturb(model)
    batch = make_batch("fnirs", n_windows=2)
    first = model.sample(batch, steps=4, generator=torch.Generator().manual_seed(5))
    second = model.sample(batch, steps=4, generator=torch.Generator().manual_seed(5))
    other_seed = model.sample(batch, steps=4, generator=torch.Generator().manual_seed(6))
    guided = model.sample(batch, steps=4, guidance_scale=4.0, generator=torch.Generator().manual_seed(5))
    assert torch.equal(first, second)
    assert not torch.allclose(first, other_seed)
    assert not torch.allclose(first, guided)


# ---------------------------------------------------------------------------------------------
# training and alignment


def test_a_short_training_run_lowers_the_loss():
    """40 Adam steps on one small batch whose targets share one spatio-temporal pattern: the
    loss on a fixed set of (t, noise) must fall well below its start (about 0.45x in practice)."""
    model = tiny_model(alignment_weight=0.0)
    batch = make_batch("fnirs", n_windows=8, n_eeg=4, n_fnirs_channels=6)
    g = torch.Generator().manual_seed(0)
    batch.target = torch.randn(1, 12, 16, generator=g).expand(8, -1, -1).clone()
    eval_t = torch.linspace(0, 999, 8).long()
    eval_noise = torch.randn(batch.target.shape, generator=g)

    def eval_loss() -> float:
        model.eval()
        with torch.no_grad():
            return model.loss(batch, t=eval_t, noise=eval_noise)[1]["diffusion"]

    initial = eval_loss()
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    model.train()
    for _ in range(40):
        optimizer.zero_grad()
        model.loss(batch, generator=g)[0].backward()
        optimizer.step()
    assert eval_loss() < 0.6 * initial


def test_info_nce_prefers_aligned_pairs():
    g = torch.Generator().manual_seed(0)
    eeg = torch.randn(16, 32, generator=g)
    target = eeg + 0.3 * torch.randn(16, 32, generator=g)
    shuffled = target[torch.roll(torch.arange(16), 1)]
    scale = torch.tensor(np.log(1 / 0.07))
    aligned_loss, shuffled_loss = info_nce(eeg, target, scale), info_nce(eeg, shuffled, scale)
    assert aligned_loss < 0.5 < np.log(16) < shuffled_loss
    # symmetric: swapping the roles changes nothing
    torch.testing.assert_close(info_nce(target, eeg, scale), aligned_loss)


def test_alignment_loss_trains_the_eeg_encoder():
    model = tiny_model()
    batch = make_batch("fmri", n_windows=4)
    loss = model.alignment_loss(batch)
    loss.backward()
    assert torch.isfinite(loss)
    assert model.eeg_encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert model.modality_heads["fmri"].target_encoder.token_embed.weight.grad.abs().sum() > 0
    assert model.alignment.logit_scale.grad is not None


def test_modality_specific_parameters_are_named_by_modality():
    model = tiny_model()
    names = dict(model.named_parameters())
    by_modality = {m: [n for n in names if parameter_modality(n) == m] for m in ("fmri", "fnirs")}
    assert all(n.startswith("modality_heads.fmri.") for n in by_modality["fmri"])
    assert "modality_heads.fnirs.final_layer.linear.weight" in by_modality["fnirs"]
    assert parameter_modality("_module.modality_heads.fmri.patch_embed.weight") == "fmri"
    assert parameter_modality("dit.blocks.0.attn.qkv.weight") is None
    assert "modality_heads.fmri.tokenizer.patch_index" in model.state_dict()


# ---------------------------------------------------------------------------------------------
# LaBraM checkpoints


def _labram_layout(encoder: EEGEncoder) -> dict[str, torch.Tensor]:
    """An encoder's weights as LaBraM names them (q/v biases, gamma_1, pos_embed in its order)."""
    out = {}
    for name, t in encoder.state_dict().items():
        if name.endswith("attn.qkv.bias"):
            q, _, v = t.chunk(3)
            out[name.replace("qkv.bias", "q_bias")], out[name.replace("qkv.bias", "v_bias")] = q, v
        elif name.endswith(".scale"):
            out[name.removesuffix(".scale")] = t
        elif name == "electrode_embed.weight":
            pos = torch.zeros(1, 129, t.shape[1])
            for i, channel in enumerate(LABRAM_CHANNELS):
                if channel in ELECTRODE_VOCABULARY:
                    pos[0, i + 1] = t[ELECTRODE_VOCABULARY.index(channel)]
            out["pos_embed"] = pos
        elif name == "time_embed.weight":
            out["time_embed"] = t.unsqueeze(0)
        else:
            out[name] = t
    return out


def test_load_labram_checkpoint(tmp_path, caplog):
    config = get_preset("tiny")
    torch.manual_seed(0)
    source, target = EEGEncoder(config), EEGEncoder(config)
    perturb(source, scale=0.1)  # k biases are zero in LaBraM; the loader keeps them zero
    with torch.no_grad():
        for block in source.blocks:
            block.attn.qkv.bias[config.eeg_dim : 2 * config.eeg_dim] = 0.0
    state = {"student." + k: v for k, v in _labram_layout(source).items()}
    state["student.head.weight"] = torch.randn(4, config.eeg_dim)  # a classification head: not ours
    state["student.norm.weight"] = torch.randn(config.eeg_dim + 1)  # a different width: skipped
    path = tmp_path / "labram-base.pth"
    torch.save({"model": state, "epoch": 7}, path)

    with caplog.at_level("WARNING"):
        report = load_labram_checkpoint(target, path)
    assert "head.weight" in report.unexpected
    assert report.skipped_shape == [f"norm.weight: file [{config.eeg_dim + 1}] vs model [{config.eeg_dim}]"]
    assert "norm.weight" in caplog.text
    assert "blocks.1.attn.qkv.bias" in report.loaded and "electrode_embed.weight" in report.loaded
    assert report.missing == ["norm.weight"]
    target.norm.load_state_dict(source.norm.state_dict())
    eeg, channels = torch.randn(2, 4, 800), torch.tensor(electrode_indices(("Fp1", "Cz", "O2", "T3")))
    torch.testing.assert_close(target(eeg, channels), source(eeg, channels))

    # the model-level call reaches the encoder; a non-checkpoint is a clear error
    model = tiny_model()
    assert load_labram_checkpoint(model, path).loaded
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot read LaBraM checkpoint"):
        load_labram_checkpoint(model, tmp_path / "bad.pth")


# ---------------------------------------------------------------------------------------------
# Opacus


def test_opacus_per_sample_gradients_match_single_window_gradients():
    import opacus
    from opacus.validators import ModuleValidator

    model = tiny_model(label_dropout=0.0, mean_dropout=0.0)  # no random masks: the two passes must see the same network
    assert ModuleValidator.validate(model, strict=True) == []  # strict: raises on any unsupported layer
    perturb(model)
    trainable = model.prepare_for_dp("fnirs")
    assert not any(p.requires_grad for p in model.modality_heads["fmri"].parameters())
    assert not model.alignment.logit_scale.requires_grad
    batch = make_batch("fnirs", n_windows=3, n_eeg=4, n_fnirs_channels=4)
    t, noise = torch.tensor([20, 500, 980]), torch.randn(batch.target.shape, generator=torch.Generator().manual_seed(0))

    reference = copy.deepcopy(model)  # unhooked twin for the one-window gradients
    dp_model = opacus.GradSampleModule(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "full backward hook ... no inputs require gradients"
        loss, parts = dp_model(batch, t=t, noise=noise)
        loss.backward()
    assert "alignment" not in parts
    per_sample = {name: p.grad_sample for name, p in model.named_parameters() if p.requires_grad}
    assert len(per_sample) == len(trainable) and all(g.shape[0] == 3 for g in per_sample.values())

    scale = max(float(g.abs().max()) for g in per_sample.values())
    for i in range(3):
        reference.zero_grad(set_to_none=True)
        reference.loss(batch.select([i]), t=t[[i]], noise=noise[[i]])[0].backward()
        for name, p in reference.named_parameters():
            if p.requires_grad:
                torch.testing.assert_close(per_sample[name][i], p.grad, rtol=1e-3, atol=1e-5 * scale)
