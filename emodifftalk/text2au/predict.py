"""Inference API: ``Text2AU.load(model_dir).predict(["a furious man"])``.

``model_dir`` is a training export directory (``model.safetensors``, ``config.json``,
``text2au.json``) or a run directory that contains ``export/``. The text encoder is rebuilt from
the exported config (or passed in) and must be the one the model was trained on: its
``encoder_id`` is compared with the one recorded in ``text2au.json``.

With ``text2au.compose`` (default ``mean``) a description of several parts is read clause by
clause (:mod:`emodifftalk.text2au.compose`), with the thresholds ``text2au.json`` records for
composed readings (``au_thresholds_composed``: the same as ``au_thresholds`` unless the model was
trained with ``text2au.threshold_by_reading``).

Probabilities are calibrated: the per-AU thresholds found on out-of-concept predictions at
training time (``text2au.json`` ``au_thresholds``) are applied as a logit shift, so one decision
threshold (``threshold``, 0.5) holds for every AU and the probabilities that drive modulation
agree with the decisions.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from emodifftalk.au import AU_NAMES, NUM_AUS
from emodifftalk.config import load_config
from emodifftalk.text2au.model import TextToAUEnsemble, TunedTextToAUEnsemble
from emodifftalk.safetensors_io import load_tensors
from emodifftalk.text2au.calibration import apply_by_reading
from emodifftalk.text2au.compose import compose_probs
from emodifftalk.text2au.encoders import EncoderMismatchError, TextEncoder, build_encoder, encoder_dim, prepare_texts
from emodifftalk.text2au.tuned_top import MemberTops, text_features

INFO_FILE = "text2au.json"  # the export's Text-to-AU record: encoder, thresholds, metrics


def build_text2au_model(t2a_cfg, in_dim: int | None = None) -> TextToAUEnsemble:
    """The head ensemble ``cfg.text2au`` describes, on ``in_dim``-d text features (default: the
    configured encoder's size, found without loading it)."""
    dim = encoder_dim(t2a_cfg) if in_dim is None else int(in_dim)
    sizes = {"hidden_dim": t2a_cfg.hidden_dim, "proj_dim": t2a_cfg.proj_dim, "dropout": t2a_cfg.dropout}
    if t2a_cfg.finetune_layers:  # the tops' weights come from training or the export
        tops = MemberTops(t2a_cfg.members, t2a_cfg.finetune_layers, t2a_cfg.minilm_layers)
        return TunedTextToAUEnsemble(dim, tops, **sizes)
    return TextToAUEnsemble(dim, members=t2a_cfg.members, **sizes)


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
                 model_dir: Path | None = None, compose: str = "none"):
        self.model = model.eval()
        self.encoder = encoder
        self.threshold = float(threshold)
        self.compose = compose
        self.info = info
        self.model_dir = model_dir
        self.au_thresholds = info.get("au_thresholds")  # (17,) or None: no calibration
        # texts read in clauses; exports without composition have none
        self.au_thresholds_composed = info.get("au_thresholds_composed") or self.au_thresholds

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
        # the reading the thresholds were calibrated for (exports before composition: none)
        return cls(model, encoder, info.get("threshold", cfg.text2au.threshold), info, d,
                   compose=info.get("compose", "none"))

    @torch.no_grad()
    def raw_probs(self, texts: list[str]) -> Tensor:
        """(B,) texts -> (B, 17) ensemble probabilities of each text as a whole, uncalibrated."""
        feats = text_features(self.model, self.encoder, texts)
        device = next(self.model.parameters()).device
        return torch.sigmoid(self.model(feats.to(device))["logits"].float()).cpu()

    def predict_probs(self, texts: list[str] | str) -> Tensor:
        """(B,) texts -> (B, 17) AU probabilities (CPU float32)."""
        texts = prepare_texts(texts, self.encoder.max_chars)  # clear errors before any clause is read
        if self.compose == "none":
            probs, composed = self.raw_probs(texts).numpy(), np.zeros(len(texts), dtype=bool)
        else:
            probs, composed = compose_probs(texts, lambda parts: self.raw_probs(parts).numpy(), self.compose)
        if self.au_thresholds is not None:
            probs = apply_by_reading(probs, self.au_thresholds, self.au_thresholds_composed, composed, self.threshold)
        assert probs.shape == (len(texts), NUM_AUS)
        return torch.as_tensor(probs, dtype=torch.float32)

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
