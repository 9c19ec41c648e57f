"""``animate --text``: empty prompts fail alike and early; the text request follows the speech."""

import numpy as np
import pytest

from emodifftalk.au import AU_INDEX, NUM_AUS
from emodifftalk.cli import main
from emodifftalk.config import build_config
from emodifftalk.pipeline.animate import AnimateError, Models, check_text, edit_aus


@pytest.mark.parametrize("text", ["", "  ", "\n\t"])
def test_empty_and_blank_prompts_are_the_same_clear_error(text, tmp_path, capsys):
    with pytest.raises(AnimateError, match="--text is empty"):
        check_text(text)
    # the CLI says so before it looks for models, rigs or audio
    rc = main(["animate", str(tmp_path / "rig"), str(tmp_path / "a.wav"), "--out", str(tmp_path / "o"),
               "--text", text])
    assert rc == 1 and "--text is empty" in capsys.readouterr().err


def test_no_prompt_is_not_an_error():
    assert check_text(None) is None and check_text("a smile") == "a smile"


class _FixedText2AU:
    threshold = 0.5

    def predict_probs(self, texts):
        import torch

        p = torch.zeros(1, NUM_AUS)
        p[0, AU_INDEX["AU01"]] = p[0, AU_INDEX["AU12"]] = 1.0
        return p


def test_edit_aus_uses_the_speech_envelope_and_strength():
    cfg = build_config("tiny")
    fps, sr = 25.0, 16000
    t = np.arange(sr) / sr
    audio = np.concatenate([0.3 * np.sin(2 * np.pi * 150 * t), np.zeros(sr)])  # 1 s speech, 1 s pause
    speech = np.full((50, NUM_AUS), 0.1, np.float32)
    models = Models(s2au=None, motion=None, motion_cfg=None, schedule=None, motion_frontend=None,
                    text2au=_FixedText2AU())
    out, info = edit_aus(models, speech, fps, "raised brows and a smile", [], cfg, audio=audio)
    a12 = AU_INDEX["AU12"]
    assert out[10:22, a12].mean() > 0.4 and out[40:48, a12].mean() < 0.15  # the smile rests in the pause
    assert info["aus"] == ["AU01", "AU12"] and info["strength"] == 1.0
    cfg.text2au.modulation_strength = 0.0
    same, _ = edit_aus(models, speech, fps, "raised brows and a smile", [], cfg, audio=audio)
    assert np.allclose(same, speech)
