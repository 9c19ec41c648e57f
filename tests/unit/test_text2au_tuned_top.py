"""Tuned MiniLM top layers (``text2au.finetune_layers``): same features as the frozen encoder
before tuning, honest concept folds while tuning, and an export that loads and predicts."""

import json

import pytest
import torch

from emodifftalk.config import Text2AUConfig, build_config
from emodifftalk.text2au.encoders import MINILM_DIM, MiniLMEncoder, TokenStates
from emodifftalk.text2au.model import TextToAUEnsemble
from emodifftalk.text2au.tuned_top import MemberTops, check_finetune_layers
from emodifftalk.train.tasks.text2au_tune import tune_member_tops


@pytest.fixture(scope="module")
def minilm():
    return MiniLMEncoder(prompt_subject="a person", layers=(1, 2, 3, 4, 5, 6))


TEXTS = ["furious", "she raises her inner brows and drops her jaw", "a little annoyed"]


@pytest.mark.parametrize("n_top", [1, 2])
def test_pretrained_tops_give_the_frozen_encoders_features(minilm, n_top):
    tops = MemberTops(2, n_top, minilm.layers)
    tops.load_pretrained(minilm)
    states = minilm.token_states(TEXTS, tops.first - 1)
    assert states.frozen.shape == (3, MINILM_DIM * (6 - n_top))
    feats = tops.features(states)
    assert feats.shape == (3, 2, minilm.dim)
    assert torch.allclose(feats, minilm.encode(TEXTS)[:, None].expand_as(feats), atol=1e-5)
    with torch.no_grad():  # each member has its own copy
        tops.blocks[1][-1].ffn_out.weight.mul_(1.1)
    moved = tops.features(states)
    assert torch.equal(moved[:, 0], feats[:, 0]) and not torch.allclose(moved[:, 1], feats[:, 1], atol=1e-4)


def test_finetune_layers_must_tune_a_pooled_layer():
    with pytest.raises(ValueError, match="pools none"):
        check_finetune_layers(1, (4, 5))
    with pytest.raises(ValueError, match="0..5"):
        check_finetune_layers(6, (6,))
    with pytest.raises(ValueError, match="minilm"):
        build_config("tiny", ["text2au.encoder=hashing", "text2au.finetune_layers=1"])


def test_ensemble_reads_one_feature_per_member():
    torch.manual_seed(0)
    ens = TextToAUEnsemble(8, members=3).eval()
    x = torch.randn(4, 8)
    shared = ens(x)["member_logits"]
    per_member = ens(x[:, None].expand(4, 3, 8).contiguous())["member_logits"]
    assert torch.allclose(shared, per_member, atol=1e-6)
    y = x[:, None].repeat(1, 3, 1)
    y[:, 2] += 1.0  # only member 2's input changes
    out = ens(y)["member_logits"]
    assert torch.allclose(out[:2], shared[:2], atol=1e-6) and not torch.allclose(out[2], shared[2])


def _tune(labels, folds, states):
    torch.manual_seed(0)
    tops = MemberTops(3, 1, (5, 6))
    cfg = Text2AUConfig(finetune_layers=1, finetune_epochs=2, finetune_lr=1e-3, finetune_batch_size=4)
    return tune_member_tops(tops, states, labels, folds, cfg, weight_decay=0.01, seed=0)


def test_a_members_layers_never_see_its_held_out_fold():
    g = torch.Generator().manual_seed(1)
    n = 18
    states = TokenStates([torch.randn(int(t), MINILM_DIM, generator=g) for t in torch.randint(2, 6, (n,), generator=g)],
                         torch.nn.functional.normalize(torch.randn(n, MINILM_DIM, generator=g), dim=-1))
    labels = (torch.rand(n, 17, generator=g) > 0.7).float()
    folds = torch.arange(n) % 3
    a = _tune(labels, folds, states)
    changed = labels.clone()
    changed[folds == 2] = 1 - changed[folds == 2]  # other labels on fold 2 only
    b = _tune(changed, folds, states)
    torch.manual_seed(0)
    fresh = MemberTops(3, 1, (5, 6))  # the weights _tune started from
    for k in range(3):
        same = all(torch.equal(p, q) for p, q in zip(a.blocks[k].parameters(), b.blocks[k].parameters()))
        assert same == (k == 2), k  # only the member that held fold 2 out is blind to the change
        assert not torch.equal(next(a.blocks[k].parameters()), next(fresh.blocks[k].parameters()))


@pytest.mark.slow
def test_tuned_training_exports_a_model_that_loads_and_predicts(minilm, tmp_path, capsys):
    from emodifftalk.cli import main
    from emodifftalk.text2au.dataset import DEFAULT_DATA
    from emodifftalk.text2au.predict import INFO_FILE, Text2AU
    from emodifftalk.train.tasks.text2au import train_text2au

    lines = DEFAULT_DATA.read_text().splitlines()
    data = tmp_path / "small.jsonl"
    data.write_text("\n".join(lines[::8]) + "\n")
    cfg = build_config("tiny", ["text2au.finetune_layers=1", "text2au.epochs=2", "text2au.finetune_epochs=1"])
    summary = train_text2au(cfg, tmp_path / "run", data=data, encoder=minilm)
    assert summary["concept_cv"]["n_folds"] == 5
    t2a = Text2AU.load(tmp_path / "run", encoder=minilm)
    assert t2a.model.tops.members == 5
    probs = t2a.predict_probs(TEXTS)
    assert probs.shape == (3, 17) and ((probs >= 0) & (probs <= 1)).all()
    # the tops were tuned: the export's features are not the frozen encoder's
    from emodifftalk.text2au.tuned_top import text_features
    assert not torch.allclose(text_features(t2a.model, minilm, TEXTS)[:, 0], minilm.encode(TEXTS), atol=1e-4)
    capsys.readouterr()
    assert main(["text2au", "predict", "--model", str(tmp_path / "run"), "--json", "--text", "furious"]) == 0
    out = json.loads(capsys.readouterr().out.strip())
    assert set(out) == {"text", "probs", "aus"} and out["probs"] == pytest.approx(t2a.predict("furious")[0]["probs"],
                                                                                     abs=1e-4)
    assert json.loads((tmp_path / "run" / "export" / INFO_FILE).read_text())["members"] == 5
