import json

import pytest
import torch

from emodifftalk.au import AU_NAMES, NUM_AUS
from emodifftalk.cli import main
from emodifftalk.config import build_config
from emodifftalk.text2au.model import TextToAU, TextToAUEnsemble
from emodifftalk.text2au.calibration import apply_thresholds
from emodifftalk.text2au.encoders import EncoderMismatchError, HashingEncoder
from emodifftalk.text2au.evaluate import evaluate_model
from emodifftalk.text2au.metrics import multilabel_metrics
from emodifftalk.text2au.predict import Text2AU
from emodifftalk.train.task import get_task
from emodifftalk.text2au.predict import INFO_FILE
from emodifftalk.train.tasks.text2au import Text2AUTask, concept_mixup, intra_op_threads, steps_per_epoch


HASH_ID = "hashing:v1:d1024|subject=a person"  # the default prompt template is part of the id


def test_model_shapes_and_unit_norm_embedding():
    m = TextToAU(32, hidden_dim=16, proj_dim=8)
    out = m(torch.randn(5, 32))
    assert out["logits"].shape == (5, NUM_AUS) and out["z"].shape == (5, 8)
    assert torch.allclose(out["z"].norm(dim=1), torch.ones(5), atol=1e-5)
    with pytest.raises(AssertionError):
        m(torch.randn(5, 31))


def test_ensemble_members_are_independent_and_averaged():
    torch.manual_seed(0)
    m = TextToAUEnsemble(32, members=3, hidden_dim=16, proj_dim=8)
    x = torch.randn(5, 32)
    out = m.eval()(x)
    assert out["member_logits"].shape == (3, 5, NUM_AUS) and out["member_z"].shape == (3, 5, 8)
    assert torch.allclose(out["member_z"].norm(dim=-1), torch.ones(3, 5), atol=1e-5)
    assert torch.allclose(torch.sigmoid(out["logits"]), torch.sigmoid(out["member_logits"]).mean(0), atol=1e-5)
    # a loss on member 0 only leaves the other members' weights without gradient
    out = m.train()(x)
    out["member_logits"][0].sum().backward()
    assert m.weights[0].grad[1:].abs().sum() == 0 and m.weights[0].grad[0].abs().sum() > 0


def test_metrics_by_hand():
    labels = torch.zeros(4, NUM_AUS)
    probs = torch.zeros(4, NUM_AUS)
    labels[:2, 0] = 1  # AU01: 2 positives
    probs[0, 0] = 0.9  # TP
    probs[2, 0] = 0.8  # FP  -> AU01 P = 1/2, R = 1/2, F1 = 1/2
    probs[3, 1] = 0.7  # AU02: FP only -> precision 0, recall undefined, F1 0
    m = multilabel_metrics(probs.numpy(), labels.numpy())
    a1, a2, a4 = m["per_au"]["AU01"], m["per_au"]["AU02"], m["per_au"]["AU04"]
    assert (a1["precision"], a1["recall"], a1["f1"], a1["accuracy"]) == (0.5, 0.5, 0.5, 0.5)
    assert a2["precision"] == 0.0 and a2["recall"] is None and a2["f1"] == 0.0
    assert a4["precision"] is None and a4["f1"] is None and a4["accuracy"] == 1.0
    assert m["accuracy"] == pytest.approx(1 - 3 / (4 * NUM_AUS))
    assert m["macro"]["f1"] == pytest.approx(0.25) and m["n_aus"]["f1"] == 2
    assert m["micro"]["precision"] == pytest.approx(1 / 3) and m["micro"]["recall"] == pytest.approx(0.5)


@pytest.fixture(scope="module")
def hashing_cfg():
    return build_config("tiny", ["text2au.encoder=hashing", "data.batch_size=16"])


@pytest.fixture(scope="module")
def hashing_task(hashing_cfg):
    return Text2AUTask(hashing_cfg)


def test_train_batches_deterministic_rank_disjoint_and_resumable(hashing_cfg, hashing_task):
    data = hashing_task.prepare()["train"]
    it = hashing_task.train_batches(0, 1, seed=3, start_step=0)
    first = [next(it) for _ in range(5)]
    again = hashing_task.train_batches(0, 1, seed=3, start_step=0)
    assert all(torch.equal(a["anchor"], next(again)["anchor"]) for a in first)
    resumed = next(hashing_task.train_batches(0, 1, seed=3, start_step=4))
    assert torch.equal(resumed["labels"], first[4]["labels"]) and torch.equal(resumed["anchor"], first[4]["anchor"])
    b = first[0]
    assert b["anchor"].shape == (16, data.anchor.shape[1]) and b["positives"].shape[1:] == (3, data.anchor.shape[1])
    assert b["labels"].shape == (16, NUM_AUS)
    # one epoch covers every training row exactly once
    spe = steps_per_epoch(len(data), 16)
    rows = torch.cat([bt["anchor"] for bt in [next(hashing_task.train_batches(0, 1, 3, k)) for k in range(spe)]])
    assert rows.shape[0] == len(data) and torch.unique(rows, dim=0).shape[0] == torch.unique(data.anchor, dim=0).shape[0]
    # two ranks split the global batch into disjoint halves
    r0 = next(hashing_task.train_batches(0, 2, 3, 0))["anchor"]
    r1 = next(hashing_task.train_batches(1, 2, 3, 0))["anchor"]
    assert r0.shape[0] == r1.shape[0] == 8
    assert torch.equal(torch.cat([r0, r1]).sort(dim=0).values, first[0]["anchor"].sort(dim=0).values)


def test_loss_is_finite_and_decreases_with_a_few_steps(hashing_cfg, hashing_task):
    torch.manual_seed(0)
    model = hashing_task.build_model()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    it = hashing_task.train_batches(0, 1, 0, 0)
    batch = next(it)
    losses = []
    with intra_op_threads(1):
        for step in range(30):
            terms = hashing_task.loss(model, batch, step)
            assert set(terms) >= {"loss", "focal_bce", "infonce"} and torch.isfinite(terms["loss"])
            opt.zero_grad()
            terms["loss"].backward()
            opt.step()
            losses.append(terms["loss"].item())
    assert losses[-1] < 0.5 * losses[0]


def test_concept_mixup_blends_features_and_unites_labels():
    torch.manual_seed(0)
    feats = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    labels = torch.zeros(6, NUM_AUS)
    labels[:3, 0] = 1  # rows 0-2 one AU set, rows 3-5 another
    labels[3:, [4, 8]] = 1
    folds = torch.tensor([0, 0, 1, 1, 2, 2])
    mixed, mix_labels, mix_folds = concept_mixup(feats, labels, folds, rate=4.0)
    assert 0 < len(mixed) <= 24 and torch.allclose(mixed.norm(dim=-1), torch.ones(len(mixed)))
    pair_feats = torch.nn.functional.normalize(feats[:, None] + feats[None], dim=-1)  # (6, 6, 8)
    for f, y, fo in zip(mixed, mix_labels, mix_folds):
        i, j = divmod(int((pair_feats - f).norm(dim=-1).argmin()), 6)  # the two rows it blends
        assert torch.allclose(f, pair_feats[i, j], atol=1e-6)
        assert not torch.equal(labels[i], labels[j]) and torch.equal(y, torch.maximum(labels[i], labels[j]))
        assert y.sum() == 3 and sorted(fo.tolist()) == sorted([int(folds[i]), int(folds[j])])
    same = torch.ones(4, NUM_AUS)
    assert concept_mixup(feats[:4], same, folds[:4], rate=1.0) is None  # identical labels: nothing to blend


def test_loss_with_mixup_hides_blends_from_members_of_either_fold(hashing_cfg):
    from dataclasses import replace

    task = Text2AUTask(replace(hashing_cfg, text2au=replace(hashing_cfg.text2au, mixup=1.0)))
    torch.manual_seed(0)
    model = task.build_model()
    batch = next(task.train_batches(0, 1, 0, 0))
    terms = task.loss(model, batch, 0)
    assert torch.isfinite(terms["loss"])
    terms["loss"].backward()


def test_task_is_registered():
    assert isinstance(get_task("text2au", build_config("tiny")), Text2AUTask)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("t2a") / "run"
    rc = main(["text2au", "train", "--out", str(out), "text2au.encoder=hashing", "text2au.epochs=3",
               "data.batch_size=32", "train.log_every=2"])
    assert rc == 0
    return out


def test_cli_train_exports_model_and_encoder_info(trained):
    export = trained / "export"
    for name in ("model.safetensors", "config.json", INFO_FILE):
        assert (export / name).is_file(), name
    info = json.loads((export / INFO_FILE).read_text())
    assert info["encoder_id"] == HASH_ID and info["threshold"] == 0.5
    assert info["au_names"] == list(AU_NAMES) and len(info["data_sha256"]) == 64
    assert set(info["metrics"]) == {"val", "test"}
    # cross-fitted ensemble: out-of-concept metrics and a calibrated (global) threshold
    assert info["members"] == 5 and info["concept_cv"]["n_folds"] == 5
    assert 0 <= info["concept_cv"]["calibrated"]["f1_macro"] <= 1
    assert len(info["au_thresholds"]) == NUM_AUS and len(set(info["au_thresholds"])) == 1
    # compositional reading (default), one threshold shared by texts read whole and in clauses
    assert info["compose"] == "mean" and info["au_thresholds_composed"] == info["au_thresholds"]
    assert 0 < info["concept_cv"]["n_rows_composed"] < info["concept_cv"]["n_rows"]
    # epoch schedule: 3 epochs of ceil(n_train / 32) steps
    n_train = info["n_entries"]["train"]
    records = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    done = [r for r in records if r.get("event") == "done"]
    assert done and done[-1]["step"] == 3 * steps_per_epoch(n_train, 32)
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses[-1] < losses[0]
    assert list((trained / "features").glob("text_features_hashing_*.safetensors"))


def test_predict_api_and_cli_json(trained, capsys):
    t2a = Text2AU.load(trained)  # run dir resolves to run/export
    res = t2a.predict(["a furious man", "一个快乐的孩子"])
    assert [r["text"] for r in res] == ["a furious man", "一个快乐的孩子"]
    for r in res:
        assert list(r["probs"]) == list(AU_NAMES) and all(0 <= p <= 1 for p in r["probs"].values())
        assert r["aus"] == [a for a, p in r["probs"].items() if p >= 0.5]
    capsys.readouterr()
    assert main(["text2au", "predict", "--model", str(trained / "export"), "--text", "a furious man",
                 "--text", "a sad old woman", "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert [x["text"] for x in lines] == ["a furious man", "a sad old woman"]
    assert lines[0]["probs"] == pytest.approx(res[0]["probs"], abs=1e-4)


def test_predict_reads_a_composed_text_clause_by_clause(trained):
    from emodifftalk.text2au.calibration import apply_by_reading
    from emodifftalk.text2au.compose import compose_probs

    t2a = Text2AU.load(trained)
    assert t2a.compose == "mean"
    texts = ["raised brows and a dropped jaw", "not frowning, just smiling", "a furious man"]
    raw, composed = compose_probs(texts, lambda parts: t2a.raw_probs(parts).numpy(), "mean")
    assert composed.tolist() == [True, True, False]
    expected = apply_by_reading(raw, t2a.au_thresholds, t2a.au_thresholds_composed, composed)
    assert t2a.predict_probs(texts).numpy() == pytest.approx(expected, abs=1e-6)
    # the negated clause and the whole text it is in do not count: only "just smiling" is read
    assert t2a.predict_probs(["not frowning, just smiling"]).numpy() == pytest.approx(
        apply_by_reading(t2a.raw_probs(["just smiling"]).numpy(), t2a.au_thresholds_composed,
                         t2a.au_thresholds_composed, [True]), abs=1e-6)


def test_export_without_composition_reads_whole_texts(trained, tmp_path):
    import shutil

    copy = tmp_path / "export"
    shutil.copytree(trained / "export", copy)
    info = json.loads((copy / INFO_FILE).read_text())
    for key in ("compose", "au_thresholds_composed"):  # as written before text2au.compose existed
        del info[key]
    (copy / INFO_FILE).write_text(json.dumps(info))
    t2a = Text2AU.load(copy)
    assert t2a.compose == "none"
    text = "raised brows and a dropped jaw"
    whole = apply_thresholds(t2a.raw_probs([text]), t2a.au_thresholds)
    assert t2a.predict_probs([text]).numpy() == pytest.approx(whole.numpy(), abs=1e-6)


def test_predict_bad_inputs(trained, tmp_path, caplog):
    t2a = Text2AU.load(trained)
    with pytest.raises(ValueError, match="empty"):
        t2a.predict([""])
    assert main(["text2au", "predict", "--model", str(trained), "--text", "  "]) == 1
    long = "a very angry man who shouts " * 40
    out = t2a.predict([long])
    assert "truncated" in caplog.text and len(out) == 1
    assert out[0]["probs"] == t2a.predict([long[:300]])[0]["probs"]
    with pytest.raises(EncoderMismatchError, match=HASH_ID):
        Text2AU.load(trained, encoder=HashingEncoder(dim=512))
    with pytest.raises(FileNotFoundError):
        Text2AU.load(tmp_path)


def test_model_dir_recorded_with_another_encoder_is_refused(trained, tmp_path):
    import shutil

    copy = tmp_path / "export"
    shutil.copytree(trained / "export", copy)
    info = json.loads((copy / INFO_FILE).read_text())
    info["encoder_id"] = "minilm:sentence-transformers/all-MiniLM-L6-v2"
    info["encoder"] = "minilm"
    (copy / INFO_FILE).write_text(json.dumps(info))
    with pytest.raises(EncoderMismatchError):
        Text2AU.load(copy)


def test_eval_cli_reports_paper_metrics(trained, capsys, tmp_path):
    capsys.readouterr()
    out_file = tmp_path / "eval.json"
    assert main(["text2au", "eval", "--model", str(trained), "--out", str(out_file)]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res == json.loads(out_file.read_text())
    assert res["split"] == "test" and res["encoder_id"] == HASH_ID
    assert 0 <= res["accuracy"] <= 1 and set(res["macro"]) == {"precision", "recall", "f1"}
    assert set(res["per_au"]) == set(AU_NAMES)
    direct = evaluate_model(trained, split="test")
    assert direct["accuracy"] == res["accuracy"]


def test_eval_on_labelled_texts_and_holdout_default(trained, capsys, tmp_path):
    f = tmp_path / "t.jsonl"
    f.write_text('{"text": "a furious man", "aus": ["AU04", "AU05", "AU07", "AU23"], "style": "emotion"}\n'
                 '{"text": "keeps a blank face", "aus": []}\n')
    capsys.readouterr()
    assert main(["text2au", "eval", "--model", str(trained), "--texts", str(f)]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["n_entries"] == 2 and set(res["per_style"]) == {"emotion", ""} and "mistakes" in res
    assert main(["text2au", "eval", "--model", str(trained), "--texts"]) == 0
    assert json.loads(capsys.readouterr().out)["n_entries"] >= 80  # the shipped hold-out set
    f.write_text('{"text": "x", "aus": ["AU99"]}\n')
    assert main(["text2au", "eval", "--model", str(trained), "--texts", str(f)]) == 1


def test_one_place_owns_the_learning_rate(tmp_path):
    from emodifftalk.config import Text2AUConfig
    from emodifftalk.train.tasks.text2au import train_text2au

    assert not hasattr(Text2AUConfig(), "lr")
    paper = build_config("paper")
    assert (paper.train.lr, paper.train.weight_decay, paper.train.betas) == (1e-4, 0.01, (0.9, 0.999))
    assert (paper.text2au.epochs, paper.data.batch_size) == (300, 128)
    cfg = build_config("tiny", ["text2au.encoder=hashing", "text2au.epochs=3", "data.batch_size=32",
                                "train.lr=1e-4", "text2au.members=1"])
    summary = train_text2au(cfg, tmp_path / "run")
    assert cfg.train.lr == 1e-4 and summary["concept_cv"] == {}
    saved = json.loads((tmp_path / "run" / "export" / "config.json").read_text())
    assert saved["config"]["train"]["lr"] == 1e-4


def test_train_refuses_a_used_folder_before_encoding(tmp_path):
    from emodifftalk.train.checkpoint import STATE_FILE
    from emodifftalk.train.tasks.text2au import train_text2au

    class NoEncoding(HashingEncoder):
        def encode(self, texts):  # the check must come first: encoding takes about a minute with MiniLM
            raise AssertionError("encoded before checking the output folder")

    step = tmp_path / "checkpoints" / "step_0000010"
    step.mkdir(parents=True)
    (step / STATE_FILE).write_text("{}")
    cfg = build_config("tiny", ["text2au.encoder=hashing"])
    with pytest.raises(FileExistsError, match="already has checkpoints"):
        train_text2au(cfg, tmp_path, encoder=NoEncoding())


def test_thresholds_by_reading_are_calibrated_on_their_own_rows(tmp_path):
    from emodifftalk.text2au.calibration import calibrate_by_reading
    from emodifftalk.train.tasks.text2au import train_text2au

    cfg = build_config("tiny", ["text2au.encoder=hashing", "text2au.epochs=3", "data.batch_size=32",
                                "text2au.threshold_by_reading=true", "text2au.calibration=per_au"])
    summary = train_text2au(cfg, tmp_path / "run")
    info = json.loads((tmp_path / "run" / "export" / INFO_FILE).read_text())
    assert info["compose"] == "mean" and summary["concept_cv"]["n_rows_composed"] > 0
    assert len(info["au_thresholds"]) == len(info["au_thresholds_composed"]) == NUM_AUS
    # the export's thresholds are the ones calibrate_by_reading finds on the out-of-fold rows
    t2a = Text2AU.load(tmp_path / "run")
    task = Text2AUTask(cfg, cache_dir=tmp_path / "run" / "features", encoder=t2a.encoder)
    task.prepare()
    probs, labels, _, composed = task.out_of_fold(t2a.model)
    whole, comp = calibrate_by_reading(probs, labels, composed, mode="per_au")
    shared, _ = calibrate_by_reading(probs, labels, composed & False, mode="per_au")
    assert (whole != shared).any() or (comp != shared).any()  # else this test could not tell them apart
    assert info["au_thresholds"] == pytest.approx(whole.tolist())
    assert info["au_thresholds_composed"] == pytest.approx(comp.tolist())
