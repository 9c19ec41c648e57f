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

A recording filmed with its speaker may carry the speaker's own mouth beside it: ``NAME.mouth.csv``
next to ``NAME.wav`` (columns ``time_s`` and ``aperture``: the lips' inner gap over a face size, from
a landmark tracker such as ``tools/track_mouth.py``; empty or NaN where no face was found). Then the
file also gets ``r_tracked`` (the predicted opening against the real mouth: lip sync itself, not a
proxy), ``r_env_tracked`` (the real mouth against the envelope: what the speaker's own face scores
on the bar's measure) and ``tracked_speech_opening_mm``, how far the speaker's lips part in the
speech frames, above their own closed state (the track's 5th percentile), in mm for an outer
eye-corner distance of ``EYE_CORNER_MM``, to set beside the mesh's ``speech_opening_mm``.
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
TRACK_SUFFIX = ".mouth.csv"  # the speaker's tracked mouth beside a recording (module docstring)
EYE_CORNER_MM = 90.0  # adult outer eye-corner distance (about 85-95 mm): a tracked aperture's scale
CLOSED_PERCENTILE = 5  # a speaker's closed lips: this percentile of their tracked aperture


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


def read_mouth_track(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(times in s, aperture) of a tracked-mouth CSV; aperture NaN where the tracker found no face."""
    import csv

    path = Path(path)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"time_s", "aperture"} <= set(rows[0]):
        raise SpeechEvalError(f"{path}: a tracked mouth needs the columns time_s and aperture")
    try:
        times = np.array([float(r["time_s"]) for r in rows])
        aperture = np.array([float(r["aperture"]) if r["aperture"].strip() else np.nan for r in rows])
    except ValueError as e:
        raise SpeechEvalError(f"{path}: {e}") from None
    if len(times) < 2:
        raise SpeechEvalError(f"{path}: a tracked mouth needs at least two rows")
    if np.any(np.diff(times) <= 0):
        raise SpeechEvalError(f"{path}: time_s must increase row by row")
    return times, aperture


def track_on_frames(times: np.ndarray, aperture: np.ndarray, n_frames: int, fps: float) -> np.ndarray:
    """The tracked aperture at each animation frame's centre, linearly interpolated between tracked
    frames; NaN where a neighbour has no face or the frame lies outside the track."""
    centres = (np.arange(n_frames) + 0.5) / fps
    out = np.full(n_frames, np.nan)
    inside = (centres >= times[0]) & (centres <= times[-1])
    hi = np.clip(np.searchsorted(times, centres[inside]), 1, len(times) - 1)
    lo = hi - 1
    w = (centres[inside] - times[lo]) / (times[hi] - times[lo])
    out[inside] = (1 - w) * aperture[lo] + w * aperture[hi]  # NaN if either neighbour is NaN
    return out


def _pearson_finite(a: np.ndarray, b: np.ndarray) -> float | None:
    ok = np.isfinite(a) & np.isfinite(b)
    return pearson(a[ok], b[ok])


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
    r_tracked: float | None = None  # predicted opening vs the speaker's tracked mouth (TRACK_SUFFIX)
    r_env_tracked: float | None = None  # the tracked mouth vs the envelope
    tracked_frames: int | None = None  # frames with a tracked face
    tracked_speech_opening_mm: float | None = None  # the speaker's lips apart in speech frames (EYE_CORNER_MM)


def score_file(name: str, audio: np.ndarray, aus: np.ndarray, opening: np.ndarray,
               fps: float, tracked: np.ndarray | None = None) -> tuple[FileResult, dict]:
    """Metrics of one file (``tracked``: the speaker's mouth per frame, ``track_on_frames``); also
    returns the curves for plotting."""
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
    if tracked is not None:
        res.r_tracked = _round(_pearson_finite(opening, tracked))
        res.r_env_tracked = _round(_pearson_finite(env, tracked))
        res.tracked_frames = int(np.isfinite(tracked).sum())
        speaking = ~silent & np.isfinite(tracked)
        if speaking.any():
            closed = np.nanpercentile(tracked, CLOSED_PERCENTILE)
            res.tracked_speech_opening_mm = _round(float(tracked[speaking].mean() - closed) * EYE_CORNER_MM)
    return res, {"env": env, "silent": silent, "mouth_au": m_au, "opening": opening, "tracked": tracked}


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
    tracked = curves.get("tracked")
    if tracked is not None and np.isfinite(tracked).any():  # the speaker's own mouth, scaled to its max
        ax2.plot(t, tracked / np.nanmax(np.abs(tracked)), color="tab:purple", lw=0.8, alpha=0.8,
                 label="tracked real mouth (/ max)")
    ax2.set_ylim(-0.02, 1.02)
    ax2.set_ylabel("mouth AU")
    for ax in axes:
        for a, b in _runs(curves["silent"]):
            ax.axvspan(a / fps, b / fps, color="grey", alpha=0.15, lw=0)
    axes[2].legend(loc="upper left", fontsize=7)
    ax2.legend(loc="upper right", fontsize=7)
    axes[2].set_xlabel("seconds (grey: 40 dB below peak)")
    title = (f"{name}: r(envelope, opening) = {_fmt(res.r, missing='n/a')}, "
             f"silent mouth AU = {_fmt(res.silent_mouth_au, 3, 'n/a')}")
    if tracked is not None:
        title += (f"\nr(opening, tracked real mouth) = {_fmt(res.r_tracked, missing='n/a')}, "
                  f"r(envelope, real mouth) = {_fmt(res.r_env_tracked, missing='n/a')}")
    axes[0].set_title(title)
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
        by_lang[lang] = {"files": len(rs), "mean_r": _mean_or_none(rvals),
                         "min_r": _round(min(rvals)) if rvals else None,
                         "max_silent_mouth_au": _round(max(aus)) if aus else None,
                         "goal_r_met": bool(rvals) and min(rvals) >= GOAL_R}
    tracked = _with_track(results)
    return {"files": len(results), "passing": sum(r.passes for r in results),
            "bar_met": all(r.passes for r in results), "by_language": by_lang,
            "tracked": {"files": len(tracked),
                        "mean_r_tracked": _mean_or_none([r.r_tracked for r in tracked]),
                        "mean_r_env_tracked": _mean_or_none([r.r_env_tracked for r in tracked]),
                        "mean_speech_opening_mm": _mean_or_none([r.speech_opening_mm for r in tracked]),
                        "mean_tracked_speech_opening_mm": _mean_or_none([r.tracked_speech_opening_mm
                                                                         for r in tracked])},
            "bar": {"r_min": BAR_R, "silent_mouth_au_max": BAR_SILENT_AU, "silence_db": SILENCE_DB,
                    "goal_r_per_language": GOAL_R}}


def _with_track(results: list[FileResult]) -> list[FileResult]:
    """The files that came with their speaker's tracked mouth."""
    return [r for r in results if r.tracked_frames is not None]


def _mean_or_none(values) -> float | None:
    values = [v for v in values if v is not None]
    return _round(np.mean(values)) if values else None


def _fmt(x: float | None, nd: int = 2, missing: str = "–") -> str:
    return missing if x is None else f"{x:.{nd}f}"


def markdown_table(results: list[FileResult], summary: dict) -> str:
    f = _fmt
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
    tracked = _with_track(results)
    if tracked:
        lines += ["", "Recordings with the speaker's tracked mouth (`NAME.mouth.csv`):", "",
                  "| file | tracked frames | r(opening, real mouth) | r(env dB, real mouth) | r(env dB, opening) | "
                  "speech opening mm: mesh / real |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r.file} | {r.tracked_frames} | {f(r.r_tracked)} | {f(r.r_env_tracked)} | {f(r.r)} | "
                  f"{f(r.speech_opening_mm, 1)} / {f(r.tracked_speech_opening_mm, 1)} |" for r in tracked]
        t = summary["tracked"]
        lines.append(f"mean over {t['files']} file(s): r(opening, real mouth) {f(t['mean_r_tracked'])}, "
                     f"r(envelope, real mouth) {f(t['mean_r_env_tracked'])}; speech opening "
                     f"{f(t['mean_speech_opening_mm'], 1)} mm (mesh) / {f(t['mean_tracked_speech_opening_mm'], 1)} mm "
                     f"(real, at {EYE_CORNER_MM:g} mm between the outer eye corners)")
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


def mouth_tracks(files: list[Path]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The speakers' tracked mouths found beside ``files`` (``TRACK_SUFFIX``), by file name; read
    and checked before any model loads."""
    tracks = {}
    for p in files:
        track = p.with_name(p.stem + TRACK_SUFFIX)
        if track.is_file():
            tracks[p.name] = read_mouth_track(track)
    return tracks


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
             tracks: dict | None = None, progress: bool = True) -> dict:
    """Evaluate ``files`` (see the module docstring); writes PNGs, JSON and markdown into ``out``.
    ``tracks``: ``mouth_tracks(files)``, read here when not given."""
    from tqdm import tqdm

    tracks = mouth_tracks(files) if tracks is None else tracks
    fps = models.frame_rate(cfg)
    results = []
    for path in tqdm(files, desc="eval speech", unit="file", disable=not progress):
        audio = load_audio(path, target_sr=SAMPLE_RATE)
        aus = speech_aus(models, audio, fps)
        opening = mesh_opening(models, template, aus, audio, cfg, seed)
        tracked = track_on_frames(*tracks[path.name], len(aus), fps) if path.name in tracks else None
        res, curves = score_file(path.name, audio, aus, opening, fps, tracked)
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
