"""Long-audio windowing/stitching and predict_aus input handling."""

import logging

import numpy as np
import pytest
import torch

from emodifftalk.config import AudioConfig, Config, S2AUConfig
from emodifftalk.data.audio import AudioError, write_wav
from emodifftalk.models.audio_frontend import MelFrontend, build_frontend
from emodifftalk.s2au.inference import (
    crossfade_weights,
    encode_windowed,
    extract_features,
    predict_aus,
    stitch,
    window_spans,
)
from emodifftalk.s2au.model import SpeechToAU


def local_model(in_dim=16, global_layers=0):
    torch.manual_seed(0)
    cfg = S2AUConfig(d_model=16, n_heads=2, local_layers=2, global_layers=global_layers, local_window=3,
                     dropout=0.0, calib_dim=8)
    m = SpeechToAU(cfg, in_dim=in_dim).eval()
    for layer in m.layers:
        torch.nn.init.normal_(layer.rel_bias.table, std=0.5)
    return m


def test_window_spans_and_weights():
    spans = window_spans(25, 10, 3)
    assert spans == [(0, 10), (7, 17), (14, 24), (21, 25)]
    assert window_spans(5, 10, 3) == [(0, 5)]
    total = torch.zeros(25, dtype=torch.float64)
    for (s, e), w in zip(spans, crossfade_weights(spans)):
        total[s:e] += w
    assert torch.allclose(total, torch.ones(25, dtype=torch.float64))
    w0 = crossfade_weights(spans)[0]
    assert torch.all(w0[:7] == 1) and torch.all(torch.diff(w0[7:]) < 0)  # linear ramp down
    with pytest.raises(ValueError):
        window_spans(0, 10, 3)


def test_stitch_constant_pieces_is_linear_crossfade():
    spans = [(0, 6), (4, 10)]
    out = stitch([torch.zeros(6, 1), torch.ones(6, 1)], spans, 10)[:, 0]
    assert torch.allclose(out, torch.tensor([0, 0, 0, 0, 0.25, 0.75, 1, 1, 1, 1]))


def test_windowed_equals_single_pass_away_from_seams_and_is_continuous():
    m = local_model()
    rf = int(m.receptive_field)  # 6 frames
    torch.manual_seed(1)
    feats = torch.randn(300, 16)  # 6 s at 50 Hz
    single = m.encode(feats[None])[0]
    window_s, overlap_s = 1.0, 0.4  # 50-frame windows, 20-frame overlaps
    win = encode_windowed(m, feats, window_s, overlap_s)
    assert win.shape == single.shape
    spans = window_spans(300, 50, 20)
    assert len(spans) > 5
    # a frame is exact if every window that covers it holds its whole receptive field
    exact = torch.ones(300, dtype=torch.bool)
    for s, e in spans:
        a = s + rf if s > 0 else 0
        b = e - rf if e < 300 else 300
        inside = torch.zeros(300, dtype=torch.bool)
        inside[a:b] = True
        covered = torch.zeros(300, dtype=torch.bool)
        covered[s:e] = True
        exact &= ~covered | inside
    assert exact.sum() > 150  # overlap (20) > 2 * receptive field (6 + 6): only overlap edges differ
    assert torch.allclose(win[exact], single[exact], atol=1e-5)
    # with overlap > 2 * receptive field, the middle of each overlap is exact for both windows
    # and the whole output stays close to the single pass; continuity: no jump at any seam
    assert (win - single).abs().max() < 0.2
    jumps = (win[1:] - win[:-1]).abs().amax(dim=1)
    ref_jumps = (single[1:] - single[:-1]).abs().amax(dim=1)
    assert jumps.max() <= ref_jumps.max() + 0.05


def test_windowed_with_global_layers_is_continuous():
    m = local_model(global_layers=1)
    feats = torch.randn(260, 16)
    win = encode_windowed(m, feats, 1.0, 0.4)
    single = m.encode(feats[None])[0]
    jumps = (win[1:] - win[:-1]).abs().amax(dim=1)
    assert jumps.max() <= (single[1:] - single[:-1]).abs().max() + 0.05


def test_extract_features_mel_single_pass():
    fe = MelFrontend(16)
    audio = 0.1 * np.random.default_rng(0).standard_normal(16000 * 3).astype(np.float32)
    f = extract_features(fe, audio, window_seconds=1.0, overlap_seconds=0.2)
    assert torch.allclose(f, fe(torch.from_numpy(audio)[None])[0])


def tiny_hubert_dir(tmp_path):
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(0)
    cfg = HubertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
    HubertModel(cfg).save_pretrained(tmp_path / "hubert")
    return tmp_path / "hubert"


def test_extract_features_hubert_chunked(tmp_path):
    fe = build_frontend(AudioConfig(frontend="hubert", hubert_path=str(tiny_hubert_dir(tmp_path)),
                                    level_features=False))  # the chunking itself (levels: test_s2au_frontend)
    n = 16000 * 3 + 123
    audio = 0.1 * np.random.default_rng(0).standard_normal(n).astype(np.float32)
    f = extract_features(fe, audio, window_seconds=1.0, overlap_seconds=0.2)
    assert f.shape == (fe.num_frames(n), 32)
    full = fe(torch.from_numpy(audio)[None])[0]
    # 50-frame chunks with 10-frame overlaps: frames 0..39 come from chunk 0 = samples [0, 49*320+400)
    chunk0 = fe(torch.from_numpy(audio[: 49 * 320 + 400])[None])[0]
    assert chunk0.shape[0] == 50
    assert torch.allclose(f[:40], chunk0[:40], atol=1e-5)
    assert not torch.allclose(f[40:50], chunk0[40:50], atol=1e-5)  # cross-faded with chunk 1
    assert torch.all(torch.isfinite(f)) and f.shape == full.shape


def _bundle_args():
    cfg = Config()
    cfg.s2au.window_seconds, cfg.s2au.overlap_seconds = 1.0, 0.2
    return {"model": local_model(in_dim=16), "frontend": MelFrontend(16), "cfg": cfg}


@pytest.mark.parametrize("fps", [25.0, 30.0, 24.5])
def test_predict_aus_array_any_fps_and_resampling(fps):
    sr = 8000
    audio = 0.1 * np.random.default_rng(0).standard_normal(int(2.5 * sr)).astype(np.float32)
    out = predict_aus(audio, sample_rate=sr, fps=fps, **_bundle_args())
    assert out.shape == (round(2.5 * fps), 17) and out.dtype == np.float32
    assert np.all((out >= 0) & (out <= 1))


def test_predict_aus_file_and_multichannel(tmp_path, caplog):
    import soundfile as sf

    audio = 0.1 * np.random.default_rng(1).standard_normal(16000).astype(np.float32)
    mono = predict_aus(write_wav(tmp_path / "a.wav", audio, 16000), **_bundle_args())
    assert mono.shape == (25, 17)
    stereo = np.stack([audio, audio], axis=1)
    sf.write(tmp_path / "s.wav", stereo, 16000, subtype="PCM_16")
    with caplog.at_level(logging.WARNING):
        out = predict_aus(tmp_path / "s.wav", **_bundle_args())
    assert "channels" in caplog.text
    assert np.allclose(out, mono, atol=1e-4)
    # (C, N) arrays are recognised too
    assert predict_aus(stereo.T, sample_rate=16000, **_bundle_args()).shape == (25, 17)


def test_predict_aus_bad_inputs(tmp_path):
    args = _bundle_args()
    with pytest.raises(FileNotFoundError):
        predict_aus(tmp_path / "missing.wav", **args)
    (tmp_path / "junk.wav").write_bytes(b"not a wav file at all")
    with pytest.raises(AudioError, match="junk.wav"):
        predict_aus(tmp_path / "junk.wav", **args)
    write_wav(tmp_path / "x.wav", np.zeros(10, np.float32), 16000)
    import soundfile as sf
    sf.write(tmp_path / "empty.wav", np.zeros((0,), np.float32), 16000)
    with pytest.raises(AudioError, match="empty"):
        predict_aus(tmp_path / "empty.wav", **args)
    with pytest.raises(AudioError, match="sample_rate"):
        predict_aus(np.zeros(100, np.float32), **args)
    with pytest.raises(AudioError, match="empty"):
        predict_aus(np.zeros(0, np.float32), sample_rate=16000, **args)
    with pytest.raises(AudioError, match="NaN"):
        predict_aus(np.full(100, np.nan, np.float32), sample_rate=16000, **args)
    with pytest.raises(ValueError, match="fps"):
        predict_aus(np.zeros(100, np.float32), sample_rate=16000, fps=0, **args)
    with pytest.raises(ValueError, match="model_dir"):
        predict_aus(np.zeros(100, np.float32), sample_rate=16000)
    with pytest.raises(FileNotFoundError, match="not a Speech-to-AU export"):
        predict_aus(np.zeros(100, np.float32), sample_rate=16000, model_dir=tmp_path)


def test_package_level_export():
    import emodifftalk

    assert emodifftalk.predict_aus is predict_aus


def test_silence_gate_closes_only_the_mouth_codes_in_silence():
    from emodifftalk.au import AU_INDEX, NUM_AUS
    from emodifftalk.config import S2AUConfig
    from emodifftalk.s2au.inference import gate_silence, speech_activity

    fps = 25.0
    t = np.arange(16000 * 3) / 16000
    audio = (0.3 * np.sin(2 * np.pi * 200 * t) * ((t > 1.0) & (t < 2.0))).astype(np.float32)
    audio += 1e-4 * np.random.default_rng(0).standard_normal(audio.shape).astype(np.float32)  # -70 dB bed
    w = speech_activity(audio, 75, fps, -45.0, -30.0)
    assert np.all(w[:20] == 0) and np.all(w[27:48] == 1) and np.all(w[55:] == 0)
    assert w[22] == 0 and w[23] == 1 and w[51] == 1 and w[52] == 0  # speech: frames 25-49, held ±2
    aus = np.full((75, NUM_AUS), 0.5, np.float32)
    gated = gate_silence(aus, 10 * audio, fps, S2AUConfig())  # gain invariant
    mouth = [AU_INDEX["AU25"], AU_INDEX["AU26"]]
    assert np.all(gated[:20][:, mouth] == 0) and np.all(gated[30:45][:, mouth] == 0.5)
    others = [k for k in range(NUM_AUS) if k not in mouth]
    np.testing.assert_array_equal(gated[:, others], aus[:, others])


def test_loudness_jaw_follows_the_worlds_rule_on_the_mouth_codes_only():
    from emodifftalk.au import AU_INDEX, NUM_AUS
    from emodifftalk.s2au.inference import loudness_jaw, loudness_jaw_gain

    fps = 25.0
    per = 640  # samples per video frame at 16 kHz
    levels_db = np.array([0.0, -6.0, -12.0, -24.0, -40.0])  # one frame each, re the loudest
    t = np.arange(per) / 16000
    tone = np.sin(2 * np.pi * 250 * t)  # 16 whole periods per frame: every frame has the same RMS shape
    audio = np.concatenate([10 ** (d / 20) * tone for d in levels_db]).astype(np.float32)
    s2au = Config().s2au
    g = loudness_jaw_gain(audio, len(levels_db), fps, s2au)
    np.testing.assert_allclose(g, [1.0, 0.35 + 0.65 * 0.75, 0.35 + 0.65 * 0.5, 0.35, 0.35], atol=1e-3)
    np.testing.assert_allclose(loudness_jaw_gain(0.01 * audio, len(levels_db), fps, s2au), g, atol=1e-6)  # gain invariant
    s2au.loudness_jaw_quiet_db, s2au.loudness_jaw_quiet_gain = -12.0, 0.0  # the ramp is the config's
    np.testing.assert_allclose(loudness_jaw_gain(audio, len(levels_db), fps, s2au), [1.0, 0.5, 0.0, 0.0, 0.0], atol=1e-3)
    aus = np.full((len(levels_db), NUM_AUS), 0.8, np.float32)
    out = loudness_jaw(aus, audio, fps, Config().s2au)
    for name in ("AU25", "AU26"):
        np.testing.assert_allclose(out[:, AU_INDEX[name]], 0.8 * g, atol=1e-6)
    others = [k for k in range(NUM_AUS) if k not in (AU_INDEX["AU25"], AU_INDEX["AU26"])]
    np.testing.assert_array_equal(out[:, others], aus[:, others])


def test_predict_aus_applies_loudness_jaw_only_when_configured():
    from emodifftalk.au import AU_INDEX
    from emodifftalk.s2au.inference import loudness_jaw_gain

    rng = np.random.default_rng(2)
    ramp = np.repeat(np.linspace(0.02, 1.0, 25), 640)  # 1 s, louder every frame
    audio = (ramp * rng.standard_normal(ramp.size)).astype(np.float32)
    args = _bundle_args()
    args["cfg"].s2au.silence_gate = args["cfg"].s2au.loudness_jaw = False
    off = predict_aus(audio, sample_rate=16000, **args)
    args["cfg"].s2au.loudness_jaw = True
    on = predict_aus(audio, sample_rate=16000, **args)
    g = loudness_jaw_gain(audio, 25, 25.0, args["cfg"].s2au)
    assert g.min() < 0.5 and g.max() == 1.0
    mouth = [AU_INDEX["AU25"], AU_INDEX["AU26"]]
    np.testing.assert_allclose(on[:, mouth], off[:, mouth] * g[:, None], atol=1e-6)
    others = [k for k in range(17) if k not in mouth]
    np.testing.assert_array_equal(on[:, others], off[:, others])
