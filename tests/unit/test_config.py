import json

import pytest

from emodifftalk.config import (PRESETS, Config, ConfigError, apply_overrides, build_config, config_from_dict,
                                load_config, save_config)


@pytest.mark.parametrize("name", PRESETS)
def test_presets_build_and_validate(name):
    cfg = build_config(name)
    assert cfg.name == name


def test_paper_preset_uses_paper_loss_weights():
    cfg = build_config("paper")
    assert (cfg.s2au.lambda_reg, cfg.s2au.lambda_temp) == (1.0, 0.1)
    d = cfg.diffusion
    assert (d.lambda_vertex, d.lambda_motion, d.lambda_deform, d.lambda_lip) == (1.0, 0.5, 0.1, 0.8)
    assert (cfg.feature_line.lambda_sparse, cfg.feature_line.lambda_smooth) == (0.01, 0.001)
    t = cfg.text2au
    assert (t.focal_alpha, t.focal_gamma, t.infonce_tau, t.lambda_infonce) == (0.35, 3.0, 0.07, 0.005)
    assert cfg.audio.feature_dim == 768 + 2  # HuBERT-base + 2 level channels


def test_overrides_are_typed():
    cfg = build_config("tiny", ["train.lr=1e-3", "train.betas=0.8,0.95", "text2au.lip_lock=false",
                                "synth.n_identities=5"])
    assert cfg.train.lr == 1e-3 and cfg.train.betas == (0.8, 0.95)
    assert cfg.text2au.lip_lock is False and cfg.synth.n_identities == 5


@pytest.mark.parametrize("override, needle", [
    ("train.lrr=1", "unknown key 'train.lrr'"),
    ("nosection.x=1", "config has"),
    ("train.lr=abc", "expects a number"),
    ("train.lr", "section.key=value"),
    ("train.max_steps=0", "train.max_steps must be >= 1"),
    ("s2au.n_heads=3", "divisible"),
    ("audio.frontend=hubert", "audio.hubert_path"),
])
def test_invalid_values_fail_early_with_a_fix(override, needle):
    with pytest.raises(ConfigError, match=needle):
        build_config("tiny", [override])


def test_unknown_preset():
    with pytest.raises(ConfigError, match="choose one of"):
        build_config("huge")


def test_save_load_round_trip(tmp_path):
    cfg = build_config("tiny", ["train.lr=2e-4"])
    path = save_config(cfg, tmp_path)
    payload = json.loads(path.read_text())
    assert "git_sha" in payload and payload["config"]["train"]["lr"] == 2e-4
    again = load_config(path)
    assert again == cfg


def test_from_dict_ignores_unknown_keys():
    d = Config().to_dict()
    d["train"]["removed_option"] = 1
    assert config_from_dict(d) == Config()


def test_exports_older_than_the_loudness_rule_load_without_it():
    # today's default is on; a config written before s2au.loudness_jaw existed means "off"
    assert Config().s2au.loudness_jaw is True
    d = Config().to_dict()
    del d["s2au"]["loudness_jaw"]
    old = config_from_dict(d)
    assert old.s2au.loudness_jaw is False and old.s2au.silence_gate is True
    d["s2au"]["loudness_jaw"] = True
    assert config_from_dict(d).s2au.loudness_jaw is True


def test_apply_overrides_rejects_assigning_to_section():
    with pytest.raises(ConfigError):
        apply_overrides(Config(), ["train.lr.x=1"])


def test_moved_knobs_name_their_one_home():
    # each sampler knob has one home (diffusion.*); the old infer.* spellings say where it went
    with pytest.raises(ConfigError, match=r"infer.ddim_steps is now diffusion.ddim_steps.*diffusion.ddim_steps=5"):
        build_config("tiny", ["infer.ddim_steps=5"])
    with pytest.raises(ConfigError, match="diffusion.context_frames"):
        build_config("tiny", ["infer.overlap_frames=4"])
    with pytest.raises(ConfigError, match="diffusion.animate_guidance_scale"):
        build_config("tiny", ["infer.guidance_scale=3"])
    # the sample rate is not a setting (16 kHz everywhere: data.audio.SAMPLE_RATE)
    with pytest.raises(ConfigError, match="audio.sample_rate is no longer a setting.*16 kHz"):
        build_config("tiny", ["audio.sample_rate=16000"])


def test_config_files_written_before_the_move_keep_their_values():
    d = Config().to_dict()
    for key in ("fps", "animate_guidance_scale", "guidance_reference"):
        del d["diffusion"][key]
    d["infer"].update(fps=30.0, guidance_scale=3.0, guidance_reference="null", ddim_steps=7)
    cfg = config_from_dict(d)
    assert cfg.diffusion.fps == 30.0 and cfg.diffusion.animate_guidance_scale == 3.0
    assert cfg.diffusion.guidance_reference == "null"
    assert cfg.diffusion.ddim_steps == Config().diffusion.ddim_steps  # the file's own diffusion.ddim_steps wins
