"""Raw data never leaves a site: the server's audit log of every received message
(``server/audit.py``) and the checker ``find_leaks`` run on it.

A real local Flower simulation (two EEG-fMRI sites, one round) writes the log; the checker must
find only the model's own parameters, numeric scalars and the known config keys, and nothing
shaped like the sites' windows or recordings, no path, data root, site folder or subject id.
Fabricated leaks show that the checker can fail.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict

from fedneurogen.server.audit import AUDIT_FILE, AuditedGrid, array_bytes, describe_message, find_leaks, read_log
from fedneurogen.server.checkpointing import model_parameters
from fedneurogen.shared.data import load_site
from fedneurogen.shared.model import NeuroGenModel, parameter_modality
from fedneurogen.shared.transport import frozen_names
from fedneurogen.simulations.federated import run_federated

PARAM = "dit.blocks.0.attn.proj.weight"


@pytest.fixture(scope="module")
def tiny_shapes() -> dict[str, tuple[int, ...]]:
    return {name: tuple(p.shape) for name, p in NeuroGenModel("tiny", device="cpu").named_parameters()}


def fabricated(
    out: Message, arrays: dict[str, np.ndarray] | None = None, metrics: dict | None = None, config: dict | None = None
) -> Message:
    content = RecordDict()
    if arrays is not None:
        content["arrays"] = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    content["metrics"] = MetricRecord(metrics or {"num-examples": 8, "loss": 0.5})
    content["site"] = ConfigRecord(config or {"modality": "fmri"})
    return Message(content=content, reply_to=out)


class FakeGrid:
    """Replies to every message with what ``answer(message)`` returns."""

    def __init__(self, answer):
        self.answer = answer

    def send_and_receive(self, messages, *, timeout=None):
        return [self.answer(m) for m in messages]

    def get_node_ids(self):
        return [11, 12]


def test_checker_flags_recording_shaped_arrays_paths_and_identifiers(tmp_path, tiny_shapes, task_identity):
    """Fabricated replies through an AuditedGrid: a clean one passes, every kind of leak is named."""
    out = Message(RecordDict(), dst_node_id=11, message_type=MessageType.TRAIN)
    param = np.zeros(tiny_shapes[PARAM], dtype=np.float32)
    eeg_window, bold_window = (64, 3200), (5124, 8)  # a site's PairedWindows eeg/target shape[1:]
    replies = {
        "clean": fabricated(out, {PARAM: param}, {"num-examples": 8, "loss": 0.5}, {"modality": "fmri"}),
        "eeg window": fabricated(out, {PARAM: param, "extra": np.zeros((2, *eeg_window), dtype=np.float32)}),
        "flattened bold window": fabricated(out, {PARAM: np.zeros(5124 * 8, dtype=np.float32)}),
        "recording": fabricated(out, {"x": np.zeros((64, 40_000), dtype=np.float16)}),
        "path": fabricated(
            out, {PARAM: param}, config={"modality": "fmri", "classes": ["rest", "/data/site-01/sub-03/eeg"]}
        ),
        "subject": fabricated(out, {PARAM: param}, config={"modality": "fmri", "subject": "sub-03"}),
        "site name": fabricated(out, {PARAM: param}, metrics={"num-examples": 8, "loss-site-01": 1.0}),
        "metric vector": fabricated(out, {PARAM: param}, metrics={"num-examples": 8, "bold": [0.1] * 40}),
        "wrong shape": fabricated(out, {PARAM: np.zeros((3, 3), dtype=np.float32)}),
        "error": Message(Error(code=0, reason="FileNotFoundError: /srv/data/site-02/sub-01_eeg.edf"), reply_to=out),
    }
    log = tmp_path / "run" / AUDIT_FILE
    grid = AuditedGrid(FakeGrid(lambda m: replies[m.content["which"]["k"]]), log)  # the message names its reply
    grid.begin_round(1)
    sent = [
        Message(RecordDict({"which": ConfigRecord({"k": k})}), dst_node_id=11, message_type=MessageType.TRAIN)
        for k in replies
    ]
    received = list(grid.send_and_receive(sent, timeout=1.0))
    assert len(received) == len(replies) and grid.get_node_ids() == [11, 12]  # passed through

    entries = read_log(log)
    assert len(entries) == len(replies) and all(
        e["round"] == 1 and e["message_type"] == MessageType.TRAIN for e in entries
    )
    assert entries[0]["records"]["arrays"]["arrays"][PARAM] == {
        "shape": list(param.shape),
        "dtype": "float32",
        "bytes": len(Array(param).data),
    }
    assert entries[0]["records"]["metrics"] == {"type": "metric", "values": {"num-examples": "int", "loss": "float"}}
    assert entries[-1]["error"]["code"] == 0 and entries[-1]["records"] == {}
    assert grid.round_bytes() == {
        "sent": 0,
        "received": sum(
            array_bytes(r.content["arrays"])
            for r in received
            if not r.has_error() and "arrays" in r.content.array_records
        ),
    }

    forbidden = ["/data", "site-01", "site-02"]
    by_case = {
        case: find_leaks(
            [entry], parameter_shapes=tiny_shapes, window_shapes=[eeg_window, bold_window], forbidden_strings=forbidden
        )
        for case, entry in zip(replies, entries)
    }
    assert by_case.pop("clean") == []
    for case, problems in by_case.items():
        assert problems, f"{case}: not flagged"
    text = {case: "\n".join(p) for case, p in by_case.items()}
    assert (
        "shaped like a data window [64, 3200]" in text["eeg window"] and "not a model parameter" in text["eeg window"]
    )
    assert "shaped like a data window [5124, 8]" in text["flattened bold window"]
    assert "shaped like a recording (64 points)" in text["recording"]
    assert "path separator" in text["path"] and "'sub-'" in text["path"] and "'site-01'" in text["path"]
    assert "not one of the known keys" in text["subject"] and "'sub-'" in text["subject"]
    assert "'site-01'" in text["site name"]
    assert "list[float], not a numeric scalar" in text["metric vector"]
    assert f"{PARAM} has shape [3, 3]" in text["wrong shape"]
    assert "path separator" in text["error"] and "'site-02'" in text["error"]
    # without the parameter list the window and recording checks still stand
    assert find_leaks(entries[1:4], window_shapes=[eeg_window, bold_window])
    assert find_leaks(entries[:1], window_shapes=[eeg_window, bold_window]) == []


def test_the_documented_audit_command_checks_shapes_labels_and_metric_counts(tmp_path, tiny_shapes, task_identity):
    """``fedneurogen audit LOG`` with no options: the preset is inferred from the array names,
    the default windows are checked, a flood of scalars and a person's name as a class are
    flagged (exit 1); a log that does not exist is a usage error (exit 2)."""
    from typer.testing import CliRunner

    from fedneurogen.cli import app

    out = Message(RecordDict(), dst_node_id=11, message_type=MessageType.TRAIN)
    param = np.zeros(tiny_shapes[PARAM], dtype=np.float32)
    replies = {
        "clean": fabricated(
            out,
            {PARAM: param},
            {"num-examples": 8, "loss": 0.5},
            {"modality": "fmri", "classes": ["faces", "left_hand"]},
        ),
        "eeg window": fabricated(out, {PARAM: param, "eeg_window": np.zeros((64, 3200), dtype=np.float32)}),
        "scalars": fabricated(out, {PARAM: param}, metrics={"num-examples": 8, **{f"m{i}": 0.1 for i in range(2000)}}),
        "name": fabricated(out, {PARAM: param}, config={"modality": "fmri", "classes": ["rest", "P-4711 Doe"]}),
    }

    def audit(cases: list[str]) -> tuple[int, str]:
        log = tmp_path / "-".join(c.replace(" ", "_") for c in cases) / AUDIT_FILE
        grid = AuditedGrid(FakeGrid(lambda m: replies[m.content["which"]["k"]]), log)
        grid.begin_round(1)
        list(
            grid.send_and_receive(
                [
                    Message(
                        RecordDict({"which": ConfigRecord({"k": k})}), dst_node_id=11, message_type=MessageType.TRAIN
                    )
                    for k in cases
                ],
                timeout=1.0,
            )
        )
        result = CliRunner().invoke(app, ["audit", str(log)])
        return result.exit_code, result.stdout

    code, text = audit(["clean"])
    assert code == 0 and "no unexpected records" in text
    code, text = audit(["eeg window", "scalars", "name"])
    assert code == 1
    assert "eeg_window [64, 3200] is shaped like a data window [64, 3200]" in text
    assert "not the parameters of any preset" in text  # an array no preset has: the preset cannot be inferred
    assert "holds 2001 values" in text and "'P-4711 Doe' does not look like a task label" in text
    assert "not among the known metrics: m0, m1, m10, m100, m1000 and 1995 more" in text
    missing = CliRunner().invoke(app, ["audit", str(tmp_path / "nowhere.jsonl")])
    assert missing.exit_code == 2 and "no such audit log" in " ".join(missing.output.split())


def test_audit_off_still_counts_bytes(tmp_path, task_identity):
    arrays = ArrayRecord({"w": Array(np.ones((10, 10), dtype=np.float32))})
    grid = AuditedGrid(FakeGrid(lambda m: fabricated(m, {"w": np.ones((10, 10), dtype=np.float32)})), None)
    grid.begin_round(4)
    msgs = [Message(RecordDict({"arrays": arrays}), dst_node_id=n, message_type=MessageType.TRAIN) for n in (11, 12)]
    grid.send_and_receive(msgs)
    assert grid.round_bytes() == {"sent": 2 * array_bytes(arrays), "received": 2 * array_bytes(arrays)}
    assert not any(tmp_path.iterdir())
    grid.begin_round(5)
    assert grid.round_bytes() == {"sent": 0, "received": 0}
    # a crash can cut the last line; the reader leaves it out
    log = tmp_path / "received.jsonl"
    log.write_text(json.dumps(describe_message(fabricated(msgs[0]), 5)) + "\n" + '{"time": 1.0, "rou')
    assert [e["round"] for e in read_log(log)] == [5]


# ---------------------------------------------------------------------------------------------
# A real round: flwr run against a simulation SuperLink, two simulated EEG-fMRI sites


@pytest.mark.timeout(420)
def test_a_real_round_sends_only_parameters_and_numbers(federation_sites, tmp_path, tiny_shapes):
    """Also: sites that are symbolic links into their storage federate, and not a byte of them
    changes (the data root holds only the links; nothing is simulated over them)."""
    from test_data_safety import fingerprint

    run_dir = tmp_path / "run"
    linked_root = tmp_path / "linked-sites"
    linked_root.mkdir()
    for name in ("site-01", "site-02"):
        (linked_root / name).symlink_to(federation_sites / name, target_is_directory=True)
    before = {name: fingerprint(federation_sites / name) for name in ("site-01", "site-02")}
    cache = federation_sites.parent / "federation-cache"
    config = {
        "preset": "tiny",
        "strategy": "fedavg",
        "local-epochs": 1,
        "max-windows": 8,
        "eval-pcc-windows": 2,
        "cache-dir": str(cache),
        "round-timeout": 300.0,  # no `classes`: the sites are asked for theirs
    }
    started = time.time()
    run_federated(
        run_dir,
        linked_root,
        num_sites=2,
        rounds=1,
        modality="mixed",
        subjects_per_site=3,
        seed=0,
        run_config=config,
        timeout=400,
    )
    print(f"1-round simulation: {time.time() - started:.0f} s")
    assert {name: fingerprint(federation_sites / name) for name in before} == before
    assert sorted(p.name for p in linked_root.iterdir()) == ["site-01", "site-02"]
    # and the checkpoint records what each site trained and validated on, by content: evaluation
    # on a site leaves out exactly its trained and validated subjects (tests/test_held_out.py)
    from fedneurogen.shared.splits import PROVENANCE_KEY, SeenSubjects, split_subjects, subject_keys
    from fedneurogen.shared.workflows.evaluation_subjects import evaluation_split

    provenance = json.loads((run_dir / "checkpoint" / "config.json").read_text())["provenance"]
    assert len(provenance[PROVENANCE_KEY]["sites"]) == 2
    seen = SeenSubjects.from_provenance(provenance)
    for name in ("site-01", "site-02"):
        windows = load_site(federation_sites / name, cache_dir=cache, progress=False)
        split = split_subjects(windows.subjects, seed=0)  # how a simulated site splits its subjects
        keys = subject_keys(federation_sites / name, windows.runs, windows.subjects)
        part = evaluation_split(windows, seen, keys, federation_sites / name)
        assert (part.split.train, part.split.val, part.split.test) == (split.train, split.val, split.test)

    entries = read_log(run_dir / AUDIT_FILE)
    kinds = sorted((e["round"] or 0, e["message_type"]) for e in entries)
    # four queries per site (its classes; the sums of its ridge statistics; its per-class
    # residual sums; its residuals' covariance sketch), then the round: training (whose replies
    # score the ridge path alone, early stopping's starting point) and the last round's evaluation
    assert kinds == [(0, MessageType.QUERY)] * 8 + [(1, MessageType.EVALUATE)] * 2 + [(1, MessageType.TRAIN)] * 2
    assert not any(e["error"] for e in entries)

    # what the sites hold, concretely: their windows' shapes, folders, subjects and runs
    sites = [federation_sites / "site-01", federation_sites / "site-02"]
    windows = [load_site(site, cache_dir=cache, progress=False) for site in sites]
    window_shapes = {w.eeg.shape[1:] for w in windows} | {w.target.shape[1:] for w in windows}
    assert (64, 3200) in window_shapes and (5124, 8) in window_shapes  # EEG channels x samples, ico4 vertices x frames
    identifiers = {str(s) for w in windows for s in [*np.unique(w.subjects), *np.unique(w.runs)]}
    forbidden = [
        str(federation_sites),
        str(tmp_path),
        str(linked_root),
        federation_sites.name,
        *(s.name for s in sites),
        *identifiers,
    ]
    problems = find_leaks(
        entries, parameter_shapes=tiny_shapes, window_shapes=window_shapes, forbidden_strings=forbidden
    )
    assert problems == [], "\n".join(problems)

    # and positively: a training reply is exactly the backbone and the fMRI head's trained
    # parameters, nothing else (not the frozen ridge path the server sent)
    frozen = set(frozen_names(NeuroGenModel("tiny")))
    fmri_site_params = {
        k: list(v) for k, v in tiny_shapes.items() if parameter_modality(k) in (None, "fmri") and k not in frozen
    }
    assert frozen and all(parameter_modality(k) for k in frozen)
    for e in entries:
        records = e["records"]
        if e["message_type"] == MessageType.TRAIN:
            assert set(records) == {"arrays", "metrics", "site"}
            assert {k: a["shape"] for k, a in records["arrays"]["arrays"].items()} == fmri_site_params
            assert {a["dtype"] for a in records["arrays"]["arrays"].values()} == {"float32"}
        elif "statistics" in records:  # sums over all frames of the training and held-out subjects
            assert set(records) == {"statistics", "site", "metrics"}
            assert records["metrics"]["values"] == {"private": "int", "epsilon": "float"}  # not private here
            shapes = {k: a["shape"] for k, a in records["statistics"]["arrays"].items()}
            width = tiny_shapes["modality_heads.fmri.mean.ridge.coef"][0]
            expected = {
                "n": [1],
                "sx": [width],
                "sy": [5124],
                "sxx": [width, width],
                "sxy": [width, 5124],
                "syy": [5124],
            }
            assert shapes == {f"{split}.{k}": v for split in ("train", "val") for k, v in expected.items()}
        elif "class-residuals" in records:  # per-class sums over the windows of >= min-subjects subjects
            assert set(records) == {"class-residuals", "site"}
            shapes = {k: a["shape"] for k, a in records["class-residuals"]["arrays"].items()}
            classes = tiny_shapes["modality_heads.fmri.mean.ridge.class_intercept"][0] - 1
            per_class = {
                "sums": [classes, 8, 5124],
                "squares": [classes, 8, 5124],
                "windows": [classes],
                "subjects": [classes],
            }
            assert shapes == {f"{split}.{k}": v for split in ("train", "val") for k, v in per_class.items()}
        elif "noise" in records:  # a sketch of the residuals' second moment over all training frames
            assert set(records) == {"noise", "site"}
            shapes = {k: a["shape"] for k, a in records["noise"]["arrays"].items()}
            rank = tiny_shapes["modality_heads.fmri.noise.basis"][1]
            assert shapes["components"][0] == 5124 and shapes["components"][1] <= 2 * rank
            assert shapes == {"rows": [1], "squares": [5124], "components": shapes["components"], "temporal": [8, 8],
                              "temporal_count": [1]}  # fmt: skip
        else:
            assert "arrays" not in records
        assert records["site"]["values"]["modality"] == "fmri"
        if e["message_type"] == MessageType.QUERY and not {"statistics", "class-residuals", "noise"} & set(records):
            assert (
                set(records["site"]["values"]) == {"modality", "classes"}
                and "rest" in records["site"]["values"]["classes"]
            )

    # the bytes of the round in history.json: the whole model to each site once (training), the
    # trained part again for the last round's evaluation (the frozen records are held), their
    # trained parameters back
    (entry,) = json.loads((run_dir / "history.json").read_text())
    # the sketches made the noise model, and the last evaluation's CRPS of each departure share
    # chose the samples' share of the DiT's departure from its Gaussian
    assert entry["ridge_path"]["noise_model"]["fmri"]["sites"] == 2
    departure = entry["evaluate"]["departure"]["fmri"]
    assert departure["crps"][f"{departure['chosen']:g}"] == min(departure["crps"].values())
    # and the sites' whitened mean square the noise's spread
    assert departure["spread"] == pytest.approx(np.sqrt(np.clip(departure["whitened_mean_square"], 1 / 9, 9)))
    parameters = model_parameters(NeuroGenModel("tiny", device="cpu"))
    model_bytes = array_bytes(ArrayRecord(parameters))
    trained_bytes = array_bytes(ArrayRecord({k: v for k, v in parameters.items() if k not in frozen}))
    update_bytes = sum(
        a["bytes"]
        for e in entries
        if e["message_type"] == MessageType.TRAIN
        for a in e["records"]["arrays"]["arrays"].values()
    )
    assert entry["bytes"] == {"sent": 2 * model_bytes + 2 * trained_bytes, "received": update_bytes}
    assert 0.5 * 2 * trained_bytes < update_bytes < 2 * trained_bytes  # the fNIRS head stays home


def test_ridge_statistics_pass_only_with_their_own_shapes(tiny_shapes):
    width = tiny_shapes["modality_heads.fmri.mean.ridge.coef"][0]

    def entry(arrays: dict) -> dict:
        described = {k: {"shape": list(v), "dtype": "float64", "bytes": 8} for k, v in arrays.items()}
        return {
            "round": 0,
            "message_type": "query",
            "src_node_id": 1,
            "error": None,
            "records": {"statistics": {"type": "array", "arrays": described}},
        }

    good = {
        "train.n": (1,),
        "train.sx": (width,),
        "train.sxx": (width, width),
        "train.sxy": (width, 5124),
        "val.syy": (5124,),
    }
    assert find_leaks([entry(good)], parameter_shapes=tiny_shapes, window_shapes=[(5124, 8), (64, 3200)]) == []
    bad = find_leaks(
        [entry({"train.sxy": (3200, 64), "val.n": (5,), "train.sample": (64, 3200)})],
        parameter_shapes=tiny_shapes,
        window_shapes=[(64, 3200)],
    )
    assert any("train.sxy" in p and "design features" in p for p in bad)
    assert any("val.n" in p for p in bad)
    assert any("train.sample" in p for p in bad)  # not a statistic: must be a parameter, and is window-shaped
