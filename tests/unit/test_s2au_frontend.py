"""Audio front ends: shapes, 50 Hz rate, masks, HuBERT loaded from a local dir, encoder ids."""

import math

import pytest
import torch

from emodifftalk.config import AudioConfig
from emodifftalk.models.audio_frontend import HubertFrontend, MelFrontend, build_frontend, encoder_id, mel_filterbank


def tiny_hubert_dir(tmp_path):
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(0)
    cfg = HubertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
    path = tmp_path / "hubert"
    HubertModel(cfg).save_pretrained(path)
    return path


def test_mel_shapes_rate_and_normalisation():
    fe = build_frontend(AudioConfig(frontend="mel", n_mels=40))
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
    fe = build_frontend(AudioConfig(frontend="hubert", hubert_path=str(path)))
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
