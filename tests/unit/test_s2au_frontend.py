"""Audio front ends: shapes, 50 Hz rate, masks, HuBERT loaded from a local dir, encoder ids."""

import math

import pytest
import torch

from emodifftalk.config import AudioConfig
from emodifftalk.models.audio_frontend import (
    HubertFrontend,
    LevelFeatures,
    MelFrontend,
    build_frontend,
    encoder_id,
    feature_dim,
    mel_filterbank,
)


def tiny_hubert_dir(tmp_path):
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(0)
    cfg = HubertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
    path = tmp_path / "hubert"
    HubertModel(cfg).save_pretrained(path)
    return path


def test_mel_shapes_rate_and_normalisation():
    fe = build_frontend(AudioConfig(frontend="mel", n_mels=40, level_features=False))
    assert isinstance(fe, MelFrontend) and fe.dim == 40 and fe.rate == 50.0
    torch.manual_seed(0)
    n = 16000 * 2 + 100  # 2.00625 s
    x = 0.1 * torch.randn(2, n)
    f = fe(x)
    assert f.shape == (2, math.ceil(n / 320), 40)
    # per-utterance normalisation: each bin zero mean / unit std over the utterance
    assert torch.allclose(f.mean(dim=1), torch.zeros(2, 40), atol=1e-4)
    assert torch.allclose(f.std(dim=1, unbiased=False), torch.ones(2, 40), atol=1e-3)
    # gain invariance (the reason for per-utterance normalisation)
    assert torch.allclose(fe(3.0 * x)[:, :-1], f[:, :-1], atol=3e-3)  # last frame: mostly padding, log floor


def test_mel_padding_mask_matches_unpadded():
    fe = MelFrontend(32)
    torch.manual_seed(1)
    a = 0.1 * torch.randn(8000)
    padded = torch.zeros(1, 12000)
    padded[0, :8000] = a
    mask = torch.zeros(1, 12000, dtype=torch.bool)
    mask[0, :8000] = True
    f_pad = fe(padded, mask)
    f_ref = fe(a[None])
    ta = f_ref.shape[1]
    assert ta == 25
    assert torch.allclose(f_pad[0, :ta], f_ref[0], atol=1e-4)
    assert torch.all(f_pad[0, ta:] == 0)
    assert fe.frames_mask(mask, f_pad.shape[1]).sum().item() == ta


def test_mel_chunked_stft_is_exact():
    fe = MelFrontend(16)
    torch.manual_seed(2)
    x = 0.1 * torch.randn(1, 320 * 57 + 13)
    ref = fe(x)
    fe.CHUNK_FRAMES = 7
    assert torch.allclose(fe(x), ref, atol=1e-5)


def test_mel_filterbank_covers_spectrum():
    fb = mel_filterbank(40)
    assert fb.shape == (257, 40)
    assert torch.all(fb >= 0) and torch.all(fb.sum(dim=0) > 0)


def test_hubert_from_local_dir(tmp_path):
    path = tiny_hubert_dir(tmp_path)
    fe = build_frontend(AudioConfig(frontend="hubert", hubert_path=str(path), level_features=False))
    assert isinstance(fe, HubertFrontend) and fe.dim == 32
    assert all(not p.requires_grad for p in fe.parameters())
    fe.train()
    assert not fe.model.training  # frozen: stays in eval mode
    n = 16000
    f = fe(0.1 * torch.randn(2, n))
    assert f.shape == (2, (n - 400) // 320 + 1, 32) == (2, 49, 32)
    assert fe.num_frames(n) == 49 and fe.rate == 50.0
    assert fe(0.1 * torch.randn(1, 100)).shape == (1, 1, 32)  # shorter than one window


def test_encoder_ids(tmp_path):
    mel = encoder_id(AudioConfig(n_mels=80))
    assert mel.startswith("mel") and "n_mels=80" in mel and mel != encoder_id(AudioConfig(n_mels=40))
    path = tiny_hubert_dir(tmp_path)
    cfg = AudioConfig(frontend="hubert", hubert_path=str(path))
    a = encoder_id(cfg)
    assert a.startswith("hubert:") and a == encoder_id(cfg)
    (path / "config.json").write_text((path / "config.json").read_text().replace("32", "33", 1))
    assert encoder_id(cfg) != a


def test_bad_frontend_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="hubert_path"):
        build_frontend(AudioConfig(frontend="hubert", hubert_path=str(tmp_path / "nope")))
    with pytest.raises(ValueError, match="feature_rate"):
        build_frontend(AudioConfig(feature_rate=100.0))


# ------------------------------------------------------------------------------------------------
# level channels (audio.level_features)
# ------------------------------------------------------------------------------------------------


def _speech_like(seconds_silence=0.5, seconds_tone=1.0, noise=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    n_sil, n_tone = int(16000 * seconds_silence), int(16000 * seconds_tone)
    t = torch.arange(n_tone) / 16000
    tone = 0.3 * torch.sin(2 * math.pi * 220 * t) * (0.6 + 0.4 * torch.sin(2 * math.pi * 4 * t))
    x = torch.cat([torch.zeros(n_sil), tone, torch.zeros(n_sil)])
    return x + noise * torch.randn(x.shape[0], generator=g)


def test_level_channels_mark_silence_and_ignore_gain():
    fe = build_frontend(AudioConfig(n_mels=40))
    assert isinstance(fe, LevelFeatures) and fe.dim == 42 == feature_dim(AudioConfig(n_mels=40))
    x = _speech_like(noise=1e-3)[None]
    f = fe(x)
    levels = f[0, :, 40:]
    silent, loud = levels[5:20], levels[35:60]  # 0.1-0.4 s: silence; 0.7-1.2 s: the tone
    assert float(silent[:, 0].max()) < 0.35 < float(loud[:, 0].min())  # re peak: ~-50 dB vs ~0..-8 dB
    assert float(silent[:, 1].max()) < 0.1 < 0.5 < float(loud[:, 1].min())  # above the noise floor
    assert torch.allclose(fe(0.05 * x)[..., 40:], f[..., 40:], atol=2e-3)  # recording gain cancels


def test_level_channels_respect_the_padding_mask():
    fe = build_frontend(AudioConfig(n_mels=16))
    a = _speech_like(0.2, 0.5)
    padded = torch.cat([a, torch.zeros(8000)])[None]
    mask = torch.zeros_like(padded, dtype=torch.bool)
    mask[0, : a.shape[0]] = True
    f_pad, f_ref = fe(padded, mask), fe(a[None])
    ta = f_ref.shape[1]
    assert torch.allclose(f_pad[0, :ta, 16:], f_ref[0, :, 16:], atol=1e-5)
    assert torch.all(f_pad[0, ta:] == 0)


def test_level_channels_on_hubert_are_per_utterance_when_chunked(tmp_path):
    from emodifftalk.s2au.inference import extract_features

    path = tiny_hubert_dir(tmp_path)
    fe = build_frontend(AudioConfig(frontend="hubert", hubert_path=str(path)))
    assert isinstance(fe, LevelFeatures) and fe.chunked and fe.dim == 34
    x = torch.cat([_speech_like(0.5, 1.0), 0.01 * _speech_like(0.5, 1.0)])  # loud, then quiet
    whole = fe(x[None])[0]
    chunked = extract_features(fe, x, window_seconds=1.0, overlap_seconds=0.2)
    assert chunked.shape == whole.shape
    # chunked HuBERT differs from one pass, but the level channels are the whole utterance's
    assert torch.allclose(chunked[:, 32:], whole[:, 32:], atol=1e-5)


def test_level_features_change_the_encoder_id_and_old_configs_keep_theirs():
    from emodifftalk.config import Config, config_from_dict

    on, off = AudioConfig(), AudioConfig(level_features=False)
    assert encoder_id(on) != encoder_id(off) and "levels" in encoder_id(on)
    old = Config().to_dict()
    del old["audio"]["level_features"]  # an export written before the option existed
    assert config_from_dict(old).audio.level_features is False
    assert config_from_dict(Config().to_dict()).audio.level_features is True
