"""Does the mouth follow real speech? ``emodifftalk eval speech`` on recordings without labels.

For each audio file the full animation path runs as ``animate`` runs it: audio → Speech-to-AU →
AU codes → motion model → vertices on a template mesh. Then, per video frame:

* **envelope**: the RMS of the 16 kHz audio over the frame's own interval ``[t/fps, (t+1)/fps)``,
  in dB below the file's loudest frame, floored at ``SILENCE_DB`` (−40 dB) so that the depth of
  digital silence does not dominate the correlation;
* **mouth opening**: the distance between the centroids of the upper and the lower lip vertices
  (the template's ``lips`` set split at its median height) minus the template's, in mm — what the
  mesh does, whichever AUs or audio features drove it;
* **mouth AU**: max(AU25, AU26) of the Speech-to-AU codes.

Reported per file: Pearson r(envelope dB, opening) (and r against the linear RMS), the mean mouth
AU and opening in the *silent* frames (more than 40 dB below the peak), the bar (r ≥ 0.5 and
silent mouth AU ≤ 0.15) and a PNG (waveform, envelope, opening + mouth AU). The summary groups
files by language when the file name starts with a code like ``en_`` / ``zh-``.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emodifftalk.au import AU_INDEX
from emodifftalk.data.audio import SAMPLE_RATE, frame_levels_db, load_audio
from emodifftalk.data.shards import iter_dataset, shard_urls
from emodifftalk.eval.metrics import lip_gap, pearson
from emodifftalk.motion.data import load_template_infos
from emodifftalk.pipeline.animate import guidance_reference, motion_offsets, speech_aus
from emodifftalk.utils import atomic_write_text

log = logging.getLogger(__name__)

SILENCE_DB = -40.0  # frames this far below the file's peak count as silent (and floor the envelope)
BAR_R = 0.5  # per file r(envelope, mouth opening) must reach this
BAR_SILENT_AU = 0.15  # and the mean mouth AU in silent frames must stay below this
GOAL_R = 0.6  # per language
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".mp4", ".mov", ".mkv",
                  ".webm", ".wma", ".aiff", ".aif")
REPORT_JSON, REPORT_MD = "speech_eval.json", "speech_eval.md"


class SpeechEvalError(ValueError):
    """Bad inputs of ``eval speech``; the message names the argument and path."""


# ------------------------------------------------------------------------------------------------
# measures
# ------------------------------------------------------------------------------------------------


def envelope_db(audio: np.ndarray, n_frames: int, fps: float,
                floor_db: float = SILENCE_DB) -> tuple[np.ndarray, np.ndarray]:
    """(envelope dB re the loudest frame, floored at ``floor_db``; frame RMS re the loudest, linear)
    for ``n_frames`` video frames of 16 kHz ``audio`` (``data.audio.frame_levels_db``)."""
    db = frame_levels_db(audio, n_frames, fps, SAMPLE_RATE)
    return np.maximum(db, floor_db), 10.0 ** (db / 20.0)


def mouth_au(aus: np.ndarray) -> np.ndarray:
    return np.maximum(aus[:, AU_INDEX["AU25"]], aus[:, AU_INDEX["AU26"]])


@dataclass
class FileResult:
    file: str
    language: str
    seconds: float
    n_frames: int
    r: float | None  # envelope dB (floored) vs mouth opening
    r_linear: float | None  # linear RMS vs mouth opening
    r_au: float | None  # envelope dB vs mouth AU
    n_silent: int
    silent_mouth_au: float | None
    silent_opening_mm: float | None
    speech_opening_mm: float | None
    passes: bool
    plot: str | None = None


def score_file(name: str, audio: np.ndarray, aus: np.ndarray, opening: np.ndarray,
               fps: float) -> tuple[FileResult, dict]:
    """Metrics of one file; also returns the curves for plotting."""
    n = aus.shape[0]
    env, rms = envelope_db(audio, n, fps)
    silent = env <= SILENCE_DB
    m_au = mouth_au(aus)
    r = pearson(env, opening)
    silent_au = float(m_au[silent].mean()) if silent.any() else None
    res = FileResult(
        file=name, language=language_of(name), seconds=round(len(audio) / SAMPLE_RATE, 3), n_frames=n,
        r=_round(r), r_linear=_round(pearson(rms, opening)), r_au=_round(pearson(env, m_au)),
        n_silent=int(silent.sum()), silent_mouth_au=_round(silent_au),
        silent_opening_mm=_round(float(opening[silent].mean() * 1e3)) if silent.any() else None,
        speech_opening_mm=_round(float(opening[~silent].mean() * 1e3)) if (~silent).any() else None,
        passes=bool(r is not None and r >= BAR_R and (silent_au is None or silent_au <= BAR_SILENT_AU)))
    return res, {"env": env, "silent": silent, "mouth_au": m_au, "opening": opening}


def language_of(name: str) -> str:
    """``en_radio.flac`` → ``en``; names without a 2-3 letter prefix → ``?``."""
    m = re.match(r"^([a-z]{2,3})[_\-.]", Path(name).name.lower())
    return m.group(1) if m else "?"


def _round(x: float | None, nd: int = 4) -> float | None:
    return None if x is None else round(float(x), nd)


# ------------------------------------------------------------------------------------------------
# plotting and tables
# ------------------------------------------------------------------------------------------------


def plot_file(path: Path, name: str, audio: np.ndarray, curves: dict, fps: float, res: FileResult) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.arange(len(curves["env"])) / fps
    fig, axes = plt.subplots(3, 1, figsize=(10, 6), sharex=True)
    step = max(1, len(audio) // 20000)  # a readable waveform without plotting every sample
    axes[0].plot(np.arange(0, len(audio), step) / SAMPLE_RATE, audio[::step], lw=0.4, color="k")
    axes[0].set_ylabel("waveform")
    axes[1].plot(t, curves["env"], color="tab:blue", lw=1)
    axes[1].axhline(SILENCE_DB, color="grey", lw=0.8, ls="--")
    axes[1].set_ylabel("envelope dB\nre peak")
    axes[2].plot(t, curves["opening"] * 1e3, color="tab:red", lw=1, label="mouth opening (mesh)")
    axes[2].set_ylabel("opening mm")
    ax2 = axes[2].twinx()
    ax2.plot(t, curves["mouth_au"], color="tab:green", lw=0.8, alpha=0.7, label="max(AU25, AU26)")
    ax2.set_ylim(-0.02, 1.02)
    ax2.set_ylabel("mouth AU")
    for ax in axes:
        for a, b in _runs(curves["silent"]):
            ax.axvspan(a / fps, b / fps, color="grey", alpha=0.15, lw=0)
    axes[2].legend(loc="upper left", fontsize=7)
    ax2.legend(loc="upper right", fontsize=7)
    axes[2].set_xlabel("seconds (grey: 40 dB below peak)")
    r = "n/a" if res.r is None else f"{res.r:.2f}"
    au = "n/a" if res.silent_mouth_au is None else f"{res.silent_mouth_au:.3f}"
    axes[0].set_title(f"{name}: r(envelope, opening) = {r}, silent mouth AU = {au}")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    out, start = [], None
    for i, m in enumerate(list(mask) + [False]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            out.append((start, i))
            start = None
    return out


def summarize(results: list[FileResult]) -> dict:
    langs: dict[str, list[FileResult]] = {}
    for r in results:
        langs.setdefault(r.language, []).append(r)
    by_lang = {}
    for lang, rs in sorted(langs.items()):
        rvals = [r.r for r in rs if r.r is not None]
        aus = [r.silent_mouth_au for r in rs if r.silent_mouth_au is not None]
        by_lang[lang] = {"files": len(rs), "mean_r": _round(np.mean(rvals)) if rvals else None,
                         "min_r": _round(min(rvals)) if rvals else None,
                         "max_silent_mouth_au": _round(max(aus)) if aus else None,
                         "goal_r_met": bool(rvals) and min(rvals) >= GOAL_R}
    return {"files": len(results), "passing": sum(r.passes for r in results),
            "bar_met": all(r.passes for r in results), "by_language": by_lang,
            "bar": {"r_min": BAR_R, "silent_mouth_au_max": BAR_SILENT_AU, "silence_db": SILENCE_DB,
                    "goal_r_per_language": GOAL_R}}


def markdown_table(results: list[FileResult], summary: dict) -> str:
    def f(x, nd=2):
        return "–" if x is None else f"{x:.{nd}f}"

    lines = ["| file | lang | s | r(env dB, opening) | r(RMS, opening) | r(env, mouth AU) | silent frames | "
             "silent mouth AU | silent / speech opening mm | bar |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.file} | {r.language} | {r.seconds:.1f} | {f(r.r)} | {f(r.r_linear)} | {f(r.r_au)} | "
                     f"{r.n_silent} | {f(r.silent_mouth_au, 3)} | {f(r.silent_opening_mm)} / "
                     f"{f(r.speech_opening_mm)} | {'pass' if r.passes else 'FAIL'} |")
    lines.append("")
    lines.append(f"bar (per file r ≥ {BAR_R}, silent mouth AU ≤ {BAR_SILENT_AU}): "
                 f"{summary['passing']}/{summary['files']} files pass")
    for lang, s in summary["by_language"].items():
        lines.append(f"- {lang}: {s['files']} file(s), mean r {f(s['mean_r'])}, min r {f(s['min_r'])}"
                     f" (goal ≥ {GOAL_R}: {'met' if s['goal_r_met'] else 'not met'})")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# the run
# ------------------------------------------------------------------------------------------------


def audio_files(audio: str | Path) -> list[Path]:
    """``--audio``: one file, or the audio/video files of a folder (sorted, not recursive)."""
    p = Path(audio)
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in AUDIO_SUFFIXES)
        if not files:
            raise SpeechEvalError(f"--audio {p}: no audio files ({', '.join(AUDIO_SUFFIXES)}) in this folder")
        return files
    raise SpeechEvalError(f"--audio {p}: no such file or folder")


def pick_template(data: str | Path, identity: str | None):
    """The template mesh (``TemplateInfo``) the mouth is measured on: ``identity``, else the first
    identity of the shards' test split (a held-out face), else the first template."""
    if not Path(data).is_dir():
        raise SpeechEvalError(f"--data {data}: shard folder not found (it holds the template meshes)")
    templates = load_template_infos(data)
    if identity is None and shard_urls(data, "seq", "test"):
        identity = next(iter(iter_dataset(data, "seq", "test")))["meta"].get("identity")
    if identity is None:
        identity = sorted(templates)[0]
    if identity not in templates:
        raise SpeechEvalError(f"--identity {identity}: no template in {data} (have {', '.join(sorted(templates))})")
    return templates[identity]


def mesh_opening(models, template, aus: np.ndarray, audio: np.ndarray, cfg, seed: int = 0) -> np.ndarray:
    """(T,) lip gap of ``template`` animated from ``aus`` and ``audio`` as ``animate`` samples it."""
    import torch

    offsets = motion_offsets(models, torch.from_numpy(template.verts), aus, audio, cfg, seed=seed,
                             reference_aus=guidance_reference(cfg, aus))
    return lip_gap(template.verts[None] + offsets.numpy(), template.verts, template.lip_idx)


def run_eval(models, files: list[Path], template, out: Path, cfg, *, seed: int = 0,
             progress: bool = True) -> dict:
    """Evaluate ``files`` (see the module docstring); writes PNGs, JSON and markdown into ``out``."""
    from tqdm import tqdm

    fps = models.frame_rate(cfg)
    results = []
    for path in tqdm(files, desc="eval speech", unit="file", disable=not progress):
        audio = load_audio(path, target_sr=SAMPLE_RATE)
        aus = speech_aus(models, audio, fps)
        opening = mesh_opening(models, template, aus, audio, cfg, seed)
        res, curves = score_file(path.name, audio, aus, opening, fps)
        png = out / f"{path.stem}.png"
        plot_file(png, path.name, audio, curves, fps, res)
        res.plot = png.name
        results.append(res)
    summary = summarize(results)
    table = markdown_table(results, summary)
    report = {"files": [r.__dict__ for r in results], "summary": summary, "template": template.identity,
              "fps": fps, "table": table}
    # not utils.write_report: that one sorts keys and keeps "table" in the JSON (this file's format predates it)
    atomic_write_text(out / REPORT_JSON, json.dumps({k: v for k, v in report.items() if k != "table"}, indent=2))
    atomic_write_text(out / REPORT_MD, table + "\n")
    return report
