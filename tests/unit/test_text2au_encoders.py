import json
import logging

import pytest
import torch

from emodifftalk.text2au.encoders import (
    EncoderMismatchError,
    FeatureCache,
    HashingEncoder,
    MiniLMEncoder,
    OpenCLIPEncoder,
    prepare_texts,
)

NON_ENGLISH = ["ein wütender Mann", "一个愤怒的人", "une femme très heureuse", "сердитый человек"]


def test_hashing_encoder_shape_norm_determinism_and_similarity():
    enc = HashingEncoder(dim=256)
    f = enc.encode(["a furious man", "a furious old man", "a happy child"])
    assert f.shape == (3, 256) and f.dtype == torch.float32
    assert torch.allclose(f.norm(dim=1), torch.ones(3))
    assert torch.equal(f, HashingEncoder(dim=256).encode(["a furious man", "a furious old man", "a happy child"]))
    assert (f[0] @ f[1]) > (f[0] @ f[2]) + 0.2
    assert enc.encoder_id == "hashing:v1:d256" != HashingEncoder(dim=128).encoder_id


@pytest.mark.parametrize("bad", [[""], ["   \n\t"], [], ["ok", ""], [None]])
def test_empty_or_non_text_input_is_rejected(bad):
    with pytest.raises((ValueError, TypeError)):
        HashingEncoder(dim=64).encode(bad)


def test_long_text_truncated_with_warning(caplog):
    enc = HashingEncoder(dim=64, max_chars=20)
    long = "a very angry man " * 20
    with caplog.at_level(logging.WARNING):
        f = enc.encode([long])
    assert "truncated" in caplog.text and "max_text_chars=20" in caplog.text
    assert torch.equal(f, enc.encode([long[:20]]))
    assert prepare_texts(["  a   b \n c "], 100) == ["a b c"]


def test_non_english_text_encodes():
    f = HashingEncoder(dim=128).encode(NON_ENGLISH)
    assert torch.isfinite(f).all() and torch.allclose(f.norm(dim=1), torch.ones(len(NON_ENGLISH)))


def test_feature_cache_roundtrip_and_encoder_mismatch(tmp_path):
    enc = HashingEncoder(dim=64)
    cache = FeatureCache(tmp_path, enc)
    texts = ["a sad woman", "a furious man", "a sad woman"]
    f = cache.encode(texts)
    assert torch.equal(f, enc.encode(texts)) and len(cache.index) == 2
    path = cache.save()
    assert path.suffix == ".safetensors" and "hashing" in path.name
    again = FeatureCache(tmp_path, enc)
    assert len(again.index) == 2 and torch.equal(again.encode(texts), f)
    # a cache file made by one encoder cannot be read as another encoder's
    other = HashingEncoder(dim=32)
    other_path = FeatureCache(tmp_path, other).path
    other_path.write_bytes(path.read_bytes())
    with pytest.raises(EncoderMismatchError, match="hashing:v1:d64"):
        FeatureCache(tmp_path, other)


@pytest.fixture(scope="module")
def minilm():
    return MiniLMEncoder(max_chars=300)


def test_minilm_loads_offline_from_package_and_is_semantic(minilm):
    import os

    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    f = minilm.encode(["a furious man", "an angry man", "a joyful little girl"] + NON_ENGLISH)
    assert f.shape == (7, 384) and torch.isfinite(f).all()
    assert torch.allclose(f.norm(dim=1), torch.ones(7), atol=1e-5)
    assert f[0] @ f[1] > f[0] @ f[2] + 0.2
    assert not any(p.requires_grad for p in minilm.model.parameters())


def test_minilm_layer_pooling_concatenates_unit_layer_means(minilm):
    texts = ["a person not smiling", "a person smiling"]
    enc = MiniLMEncoder(layers=(4, 6))
    enc.model = minilm.model  # same weights; skip a second load
    f = enc.encode(texts)
    assert enc.dim == 768 and f.shape == (2, 768)
    assert enc.encoder_id == minilm.encoder_id.replace("v2", "v2|layers=4,6", 1) != minilm.encoder_id
    # each half is that layer's unit-norm token mean; the last-layer half is the model's own embedding
    assert torch.allclose(f[:, :384].norm(dim=1), f[:, 384:].norm(dim=1), atol=1e-5)
    assert torch.allclose(f[:, 384:] * 2 ** 0.5, minilm.encode(texts), atol=1e-5)
    assert not torch.allclose(f[:, :384], f[:, 384:], atol=1e-2)
    with pytest.raises(ValueError, match="minilm_layers"):
        MiniLMEncoder(layers=(0, 6))
    from emodifftalk.config import Text2AUConfig
    from emodifftalk.text2au.encoders import encoder_dim

    assert encoder_dim(Text2AUConfig(minilm_layers=(4, 6))) == enc.dim  # the head is sized before loading


def test_open_clip_text_tower_from_local_checkpoint(tmp_path):
    open_clip = pytest.importorskip("open_clip")
    from safetensors.torch import save_file

    from emodifftalk.config import build_config
    from emodifftalk.text2au.encoders import build_encoder, encoder_dim

    cfg_dir = tmp_path / "cfgs"
    cfg_dir.mkdir()
    name = "t2a-tiny-clip"
    (cfg_dir / f"{name}.json").write_text(json.dumps({
        "embed_dim": 24,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}))
    open_clip.add_model_config(cfg_dir)
    torch.manual_seed(0)
    ref, _, _ = open_clip.create_model_and_transforms(name)
    ckpt = tmp_path / "tiny_clip.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(ckpt))

    enc = OpenCLIPEncoder(name, ckpt, max_chars=100)
    assert enc.dim == 24 and enc.encoder_id.startswith(f"open_clip:{name}:")
    texts = ["a furious man"] + NON_ENGLISH
    f = enc.encode(texts)
    tok = open_clip.get_tokenizer(name)
    with torch.no_grad():
        expected = torch.nn.functional.normalize(ref.eval().encode_text(tok(texts)), dim=-1)
    assert torch.allclose(f, expected, atol=1e-5)
    with pytest.raises(FileNotFoundError):
        OpenCLIPEncoder(name, tmp_path / "missing.pt")
    # the config-driven path used by training and Text2AU.load
    cfg = build_config("tiny", ["text2au.encoder=open_clip", f"text2au.open_clip_model={name}",
                                f"text2au.open_clip_checkpoint={ckpt}"])
    from_cfg = build_encoder(cfg.text2au)
    assert from_cfg.encoder_id == f"{enc.encoder_id}|subject=a person" and encoder_dim(cfg.text2au) == enc.dim == 24


def test_prompt_subject_template_applies_to_subject_free_texts_only():
    from emodifftalk.text2au.encoders import with_subject

    assert with_subject("furious", "a person") == "a person furious"
    assert with_subject("raises the inner brows", "a person") == "a person raises the inner brows"
    for t in ("a furious man", "She winks", "his jaw drops", "someone sighs"):
        assert with_subject(t, "a person") == t
    assert with_subject("furious", "") == "furious"
    plain, templ = HashingEncoder(dim=64), HashingEncoder(dim=64, prompt_subject="a person")
    assert templ.encoder_id == plain.encoder_id + "|subject=a person"
    assert torch.allclose(templ.encode(["furious"]), plain.encode(["a person furious"]))
    assert torch.allclose(templ.encode(["a furious man"]), plain.encode(["a furious man"]))


def test_prompt_templates_average_the_unit_features_of_every_template():
    from emodifftalk.config import build_config
    from emodifftalk.text2au.encoders import build_encoder, check_templates

    plain = HashingEncoder(dim=64, prompt_subject="a person")
    ens = HashingEncoder(dim=64, prompt_subject="a person", prompt_templates=("{}", "facial expression: {}"))
    assert ens.encoder_id != plain.encoder_id and "facial expression" in ens.encoder_id
    # the subject rule first, then the template; each template's feature unit-norm, then their mean
    a = plain.encode(["furious", "a man frowns"])
    b = HashingEncoder(dim=64).encode(["facial expression: a person furious", "facial expression: a man frowns"])
    got = ens.encode(["furious", "a man frowns"])
    assert torch.allclose(got, torch.nn.functional.normalize(a + b, dim=-1), atol=1e-6)
    assert not torch.allclose(got, a, atol=1e-3)
    assert torch.allclose(got.norm(dim=-1), torch.ones(2))
    # one template "{}" is the plain encoding
    assert torch.allclose(HashingEncoder(dim=64, prompt_templates=("{}",)).encode(["smiling"]),
                          HashingEncoder(dim=64).encode(["smiling"]))
    for bad in (("no placeholder",), ("{} and {}",), ("{x}",), ("{}", "{}")):
        with pytest.raises(ValueError):
            check_templates(bad)
    cfg = build_config("tiny", ["text2au.encoder=hashing", "text2au.prompt_templates={},facial expression: {}"])
    assert cfg.text2au.prompt_templates == ("{}", "facial expression: {}")
    assert build_encoder(cfg.text2au).encoder_id == HashingEncoder(
        prompt_subject="a person", prompt_templates=("{}", "facial expression: {}")).encoder_id
    with pytest.raises(Exception):
        build_config("tiny", ["text2au.prompt_templates=no placeholder"])
