"""Inference API: ``Text2AU.load(model_dir).predict(["a furious man"])``.

``model_dir`` is a training export directory (``model.safetensors``, ``config.json``,
``text2au.json``) or a run directory that contains ``export/``. The text encoder is rebuilt from
the exported config (or passed in) and must be the one the model was trained on: its
``encoder_id`` is compared with the one recorded in ``text2au.json``.

Probabilities are calibrated: the per-AU thresholds found on out-of-concept predictions at
training time (``text2au.json`` ``au_thresholds``) are applied as a logit shift, so one decision
threshold (``threshold``, 0.5) holds for every AU and the probabilities that drive modulation
agree with the decisions.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from emodifftalk.au import AU_NAMES, NUM_AUS
from emodifftalk.config import load_config
from emodifftalk.text2au.model import TextToAUEnsemble
from emodifftalk.safetensors_io import load_tensors
from emodifftalk.text2au.calibration import apply_thresholds
from emodifftalk.text2au.encoders import EncoderMismatchError, TextEncoder, build_encoder, encoder_dim

INFO_FILE = "text2au.json"  # the export's Text-to-AU record: encoder, thresholds, metrics


def build_text2au_model(t2a_cfg, in_dim: int | None = None) -> TextToAUEnsemble:
    """The head ensemble ``cfg.text2au`` describes, on ``in_dim``-d text features (default: the
    configured encoder's size, found without loading it)."""
    dim = encoder_dim(t2a_cfg) if in_dim is None else int(in_dim)
    return TextToAUEnsemble(dim, members=t2a_cfg.members, hidden_dim=t2a_cfg.hidden_dim, proj_dim=t2a_cfg.proj_dim,
                            dropout=t2a_cfg.dropout)


def resolve_model_dir(model_dir: str | Path) -> Path:
    d = Path(model_dir)
    if not d.exists():
        raise FileNotFoundError(f"model directory {d} does not exist")
    if not (d / "model.safetensors").is_file() and (d / "export" / "model.safetensors").is_file():
        d = d / "export"
    for name in ("model.safetensors", "config.json", INFO_FILE):
        if not (d / name).is_file():
            raise FileNotFoundError(f"{d / name} not found: {model_dir} is not a Text-to-AU export "
                                    "(train one with `emodifftalk text2au train --out DIR`)")
    return d


class Text2AU:
    def __init__(self, model: torch.nn.Module, encoder: TextEncoder, threshold: float, info: dict,
                 model_dir: Path | None = None):
        self.model = model.eval()
        self.encoder = encoder
        self.threshold = float(threshold)
        self.info = info
        self.model_dir = model_dir
        self.au_thresholds = info.get("au_thresholds")  # (17,) or None: no calibration

    @property
    def encoder_id(self) -> str:
        return self.encoder.encoder_id

    @classmethod
    def load(cls, model_dir: str | Path, encoder: TextEncoder | None = None, device: str = "cpu") -> Text2AU:
        d = resolve_model_dir(model_dir)
        info = json.loads((d / INFO_FILE).read_text())
        if "members" not in info:
            raise ValueError(f"{d} was exported by an older Text-to-AU version (a single head, data v1); "
                             "retrain it with `emodifftalk text2au train --out DIR`")
        recorded = info.get("encoder_id")
        cfg = load_config(d / "config.json")
        if encoder is None:
            if cfg.text2au.encoder != info.get("encoder"):
                raise EncoderMismatchError(f"{d}: config.json says text2au.encoder={cfg.text2au.encoder} but the "
                                           f"model was trained with {info.get('encoder')!r}")
            encoder = build_encoder(cfg.text2au)
        if encoder.encoder_id != recorded:
            raise EncoderMismatchError(
                f"model {d} was trained on features of text encoder {recorded!r}, but the encoder in use is "
                f"{encoder.encoder_id!r}; load it with the same encoder (same kind and weights) or retrain")
        model = build_text2au_model(cfg.text2au, encoder.dim)
        try:
            model.load_state_dict(load_tensors(d / "model.safetensors", device=device), strict=True)
        except RuntimeError as e:
            raise ValueError(f"{d / 'model.safetensors'} does not fit the Text-to-AU heads its config.json "
                             f"describes: {e}") from None
        model.to(device)
        return cls(model, encoder, info.get("threshold", cfg.text2au.threshold), info, d)

    @torch.no_grad()
    def predict_probs(self, texts: list[str] | str) -> Tensor:
        """(B,) texts -> (B, 17) AU probabilities (CPU float32)."""
        feats = self.encoder.encode(texts)
        device = next(self.model.parameters()).device
        probs = torch.sigmoid(self.model(feats.to(device))["logits"].float()).cpu()
        if self.au_thresholds is not None:
            probs = apply_thresholds(probs, self.au_thresholds, self.threshold)
        assert probs.shape == (feats.shape[0], NUM_AUS)
        return probs

    def predict(self, texts: list[str] | str, threshold: float | None = None) -> list[dict]:
        """One ``{"text", "probs": {AU: p}, "aus": [active AU names]}`` per text."""
        if isinstance(texts, str):
            texts = [texts]
        thr = self.threshold if threshold is None else float(threshold)
        probs = self.predict_probs(texts)
        out = []
        for text, p in zip(texts, probs.tolist()):
            out.append({"text": text, "probs": {a: round(v, 4) for a, v in zip(AU_NAMES, p)},
                        "aus": [a for a, v in zip(AU_NAMES, p) if v >= thr]})
        return out
