"""The windowed motion sampler: AU codes + audio features → per-vertex offsets, window by window.

One sampler for every long sequence: ``animate``, ``eval motion``, training validation and the
viewer's edits (``resample_spans``) all go through ``sample_windows``.

Windowing rule (``cfg.diffusion.window_frames`` = W, ``cfg.diffusion.context_frames`` = C):

* window 0 covers frames [0, min(W, T)) and is sampled freely;
* every next window starts C frames before the end of the previous one, covers up to W frames,
  and its first C frames are the **already generated** frames, inpainted as known context at each
  denoising step (``known_x0`` + ``context`` of the samplers), so the new frames continue the old
  ones smoothly; only the W − C new frames are written;
* the last window is shorter when fewer frames remain (the denoiser takes any length).

Audio features are never cut: the whole (Ta, D) array is passed with the window's
``start_frame`` and the denoiser gathers each frame's audio window from it, so window edges see
real neighbouring audio. The template code and each window's condition embedding are computed
once and reused by every denoising step. Memory is bounded by one window: the network only ever sees ≤ W frames;
the output (T, V, 3) is assembled on the CPU.

Re-sampling spans (the viewer's AU edits): a dirty span [a, b) is sampled over [a, b + fade) by the
same rule, its first window taking up to C already known frames before ``a`` as context; the last
``fade`` frames are then cross-faded back into the old motion, so the seams do not jump.

The regression baseline (``sampler="regression"``) has nothing to inpaint; its windows overlap by C
frames that are linearly cross-faded.

Guidance. Classifier-free guidance normally extrapolates away from the *null* condition:
x̂ = x̂(∅) + s·(x̂(E, A) − x̂(∅)), which amplifies everything the codes and audio do, lips included.
With ``reference_aus`` (e.g. the speech-only AU codes of an edited clip), the "unconditional" branch
is instead the prediction under those codes and the same audio — the negative-prompt pattern:
x̂ = x̂(E_ref, A) + s·(x̂(E, A) − x̂(E_ref, A)). Only what the edit changes is amplified; where the
codes agree (no edit, lip-locked mouth AUs) guidance is a no-op and a window with no difference
takes one network call per step. With ``diffusion.edit_path=fields`` the code change reaches the
motion through the model's AU fields instead of the network's difference:
x̂ = x̂(x_t − √ᾱ_t·sΔ; E_ref, A) + s·Δ(E − E_ref), Δ = ``Denoiser.edit_offsets`` (the fitted
AU→offset map, de-attenuated), one network call per step. The network sees the reference codes
and a sample with the edit's share taken out, so the sample is the reference sample shifted by
exactly sΔ (same noise, DDIM): a network that saw the edited x_t would partly reproduce the edit
from it at low noise, and the edit would land up to twice.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from emodifftalk.au import NUM_AUS
from emodifftalk.diffusion.sampler import ddim_sample, ddpm_sample
from emodifftalk.diffusion.schedule import NoiseSchedule

SAMPLERS = ("ddim", "ddpm", "regression")


def window_model_fn(model, code, aus_w: torch.Tensor, feats_b: torch.Tensor | None, start: int,
                    ref_w: torch.Tensor | None = None, edit_scale: float | None = None,
                    schedule: NoiseSchedule | None = None):
    """The sampler's ``model_fn(x, t, cond, drop)`` for one window (see "Guidance" above).

    aus_w (1, L, 17) the window's AU codes; ref_w (1, L, 17) reference codes or None (then
    ``drop=True`` asks for the learned null condition). ``edit_scale`` (with ``ref_w``): the
    prediction under the reference codes plus ``edit_scale`` × the AU fields' offsets of the
    code change (``edit_path=fields``; the sampler must then run unguided); ``schedule``: the
    noise schedule of x_t, whose edit share is taken out before the network sees it (None for
    the regression sampler, whose x is not a sample).
    """
    ref_cond = None if ref_w is None else model.encode_condition(ref_w, feats_b, start)
    if edit_scale is not None:
        if ref_w is None:
            raise ValueError("edit_scale needs reference codes (ref_w)")
        edit = edit_scale * model.edit_offsets(code, aus_w - ref_w)

        def fields_fn(x, t, cond, drop):
            if schedule is not None:
                x = x - schedule.alpha_bar(t, x).sqrt().to(x.dtype) * edit
            return model(x, None, ref_w, feats_b, t, start_frame=start, template_code=code,
                         cond_embedding=ref_cond) + edit

        return fields_fn
    cond_w = model.encode_condition(aus_w, feats_b, start)  # the same for every denoising step

    def model_fn(x, t, cond, drop):
        if ref_w is not None and bool(torch.as_tensor(drop).any()):
            return model(x, None, ref_w, feats_b, t, start_frame=start, template_code=code,
                         cond_embedding=ref_cond)
        return model(x, None, aus_w, feats_b, t, drop_cond=drop, start_frame=start, template_code=code,
                     cond_embedding=cond_w)

    return model_fn


def reference_window(reference: torch.Tensor | None, aus: torch.Tensor, start: int, length: int,
                     guidance_scale: float) -> tuple[torch.Tensor | None, float]:
    """(reference codes (1, L, 17) or None, guidance scale) for one window: with a reference that
    equals the window's codes there is nothing to amplify, so the window is sampled unguided."""
    if reference is None:
        return None, guidance_scale
    ref = reference[None, start:start + length]
    return (None, 1.0) if torch.equal(ref, aus[None, start:start + length]) else (ref, guidance_scale)


def window_plan(begin: int, end: int, window: int, context: int) -> list[tuple[int, int, int]]:
    """[(start, length, n_context), ...] writing frames [begin, end) by the rule in the module
    docstring; the first window takes min(context, begin) known frames before ``begin`` as context."""
    if window < 1 or not 0 <= context < window:
        raise ValueError(f"need window >= 1 and 0 <= context < window, got window={window}, context={context}")
    if not 0 <= begin < end:
        raise ValueError(f"need 0 <= begin < end, got [{begin}, {end})")
    out, pos = [], begin
    while pos < end:
        n_ctx = min(context, pos)
        start = pos - n_ctx
        length = min(window, end - start)
        out.append((start, length, n_ctx))
        pos = start + length
    return out


def window_starts(n_frames: int, window: int, context: int) -> list[tuple[int, int, int]]:
    """[(start, length, n_context), ...] covering a whole clip of ``n_frames`` frames."""
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    return window_plan(0, n_frames, window, context)


def _resolve(cfg, sampler, steps, guidance_scale, window_frames, context_frames, schedule):
    """(sampler, steps, guidance, window, context) with ``cfg.diffusion``'s defaults, checked."""
    d = cfg.diffusion
    sampler = sampler or ("regression" if d.regression else d.sampler)
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    if sampler != "regression" and schedule is None:
        raise ValueError(f"sampler {sampler!r} needs a NoiseSchedule")
    guidance = float(d.guidance_scale if guidance_scale is None else guidance_scale)
    window = int(window_frames or d.window_frames)
    context = int(d.context_frames if context_frames is None else context_frames)
    return sampler, int(steps or d.ddim_steps), guidance, window, context


@torch.no_grad()
def sample_windows(model, schedule: NoiseSchedule | None, template: torch.Tensor, aus: torch.Tensor,
                   feats: torch.Tensor | None, out: torch.Tensor, windows: list[tuple[int, int, int]], *,
                   sampler: str, steps: int, guidance_scale: float, eta: float = 0.0,
                   generator: torch.Generator | None = None, reference_aus: torch.Tensor | None = None,
                   edit_path: str = "network", temperature: float = 1.0, device=None,
                   callback: Callable[[], None] | None = None) -> None:
    """Sample ``windows`` (from ``window_plan``) in order into ``out`` (T, V, 3), in place, in
    diffusion units (metres / ``model.offset_scale``), on the CPU. Each window's context frames are
    read from ``out``: frames written by an earlier window, or frames the caller put there.

    aus (T, 17) and ``reference_aus`` (T, 17) or None on ``device``; feats (Ta, D) or None;
    ``callback()`` after every network step (for progress); ``edit_path``: how code changes
    against ``reference_aus`` reach the motion ("network" | "fields", see "Guidance" above);
    ``temperature``: the samplers' noise scale (``diffusion/sampler.py``).
    """
    n_verts = template.shape[0]
    code = model.encode_template(template[None].to(device=device, dtype=torch.float32))
    feats_b = feats[None].to(device=device, dtype=torch.float32) if feats is not None else None
    tick = None if callback is None else (lambda *_: callback())
    for start, length, n_ctx in windows:
        ref_w, window_guidance = reference_window(reference_aus, aus, start, length, guidance_scale)
        edit_scale = None
        if ref_w is not None and edit_path == "fields":  # the edit is scaled, the sampling unguided
            edit_scale, window_guidance = window_guidance, 1.0
        model_fn = window_model_fn(model, code, aus[None, start:start + length], feats_b, start, ref_w,
                                   edit_scale, None if sampler == "regression" else schedule)

        shape = (1, length, n_verts, 3)
        if sampler == "regression":
            zeros = torch.zeros(shape, device=device)
            pred = model_fn(zeros, torch.zeros(1, dtype=torch.long, device=device), None, False)[0].cpu()
            if n_ctx:  # linear cross-fade over the overlap: old weight 1 → 0
                w = torch.linspace(1, 0, n_ctx + 2)[1:-1].view(-1, 1, 1)
                pred[:n_ctx] = w * out[start:start + n_ctx] + (1 - w) * pred[:n_ctx]
            out[start:start + length] = pred
            if callback is not None:
                callback()
            continue
        known = out[None, start:start + n_ctx].to(device) if n_ctx else None
        kwargs = {"cond": None, "generator": generator, "guidance_scale": window_guidance, "known_x0": known,
                  "context": n_ctx, "device": device, "callback": tick, "temperature": temperature}
        if sampler == "ddim":
            x0 = ddim_sample(model_fn, shape, schedule, steps, eta=eta, **kwargs)
        else:
            x0 = ddpm_sample(model_fn, shape, schedule, **kwargs)
        out[start + n_ctx:start + length] = x0[0, n_ctx:].float().cpu()


def _offset_scale(model) -> float:
    scale = float(model.offset_scale)
    if not scale > 0:
        raise ValueError("model.offset_scale is not set (untrained model?)")
    return scale


@torch.no_grad()
def sample_motion(model, schedule: NoiseSchedule | None, template: torch.Tensor, aus: torch.Tensor,
                  feats: torch.Tensor | None, cfg, *, sampler: str | None = None,
                  steps: int | None = None, guidance_scale: float | None = None, eta: float = 0.0,
                  generator: torch.Generator | None = None, device=None,
                  window_frames: int | None = None, context_frames: int | None = None,
                  reference_aus: torch.Tensor | None = None) -> torch.Tensor:
    """Sample offsets for a whole clip. Returns ΔP (T, V, 3) float32 on the CPU, **in metres**
    (absolute vertices = template + ΔP).

    model: a ``Denoiser`` (eval mode); template (V, 3) metres; aus (T, 17) AU codes in [0, 1];
    feats (Ta, D) audio features at ``model.feature_rate`` covering the clip (or None: null audio).
    ``sampler``: "ddim" | "ddpm" | "regression" (default: "regression" if
    ``cfg.diffusion.regression`` else ``cfg.diffusion.sampler``); ``steps`` (DDIM, default
    ``cfg.diffusion.ddim_steps``), ``guidance_scale`` (default ``cfg.diffusion.guidance_scale``).
    ``reference_aus`` (T, 17): guide away from these codes instead of the null condition (see
    "Guidance" in the module docstring); windows where they equal ``aus`` are sampled unguided.
    """
    sampler, steps, guidance, window, context = _resolve(cfg, sampler, steps, guidance_scale, window_frames,
                                                         context_frames, schedule)
    assert template.ndim == 2 and template.shape[1] == 3, f"template must be (V, 3), got {tuple(template.shape)}"
    assert aus.ndim == 2 and aus.shape[1] == NUM_AUS, f"aus must be (T, {NUM_AUS}), got {tuple(aus.shape)}"
    if feats is not None:
        assert feats.ndim == 2, f"feats must be (Ta, D), got {tuple(feats.shape)}"
    if device is None:
        device = next(model.parameters()).device
    scale = _offset_scale(model)
    aus = aus.to(device=device, dtype=torch.float32)
    if reference_aus is not None:
        assert reference_aus.shape == aus.shape, (
            f"reference_aus must be {tuple(aus.shape)}, got {tuple(reference_aus.shape)}")
        reference_aus = reference_aus.to(device=device, dtype=torch.float32)
    out = torch.zeros(aus.shape[0], template.shape[0], 3)  # diffusion units, CPU
    sample_windows(model, schedule, template, aus, feats, out, window_starts(aus.shape[0], window, context),
                   sampler=sampler, steps=steps, guidance_scale=guidance, eta=eta, generator=generator,
                   reference_aus=reference_aus, edit_path=cfg.diffusion.edit_path,
                   temperature=cfg.diffusion.sample_temperature, device=device)
    return out * scale


@torch.no_grad()
def resample_spans(model, schedule: NoiseSchedule | None, template: torch.Tensor, aus: np.ndarray,
                   feats: torch.Tensor | None, old_offsets: np.ndarray, spans: list[tuple[int, int]], cfg, *,
                   steps: int = 8, sampler: str | None = None, seed: int = 0, window_frames: int | None = None,
                   context_frames: int | None = None, fade_frames: int = 4, guidance_scale: float | None = None,
                   reference_aus: np.ndarray | None = None,
                   progress: Callable[[float, str], None] | None = None) -> np.ndarray:
    """New offsets (T, V, 3) metres: frames in ``spans`` (+ a fade after each) re-sampled for ``aus``.

    model, schedule, template, feats, ``reference_aus``, defaults: as ``sample_motion``; aus (T, 17)
    target AU codes; old_offsets (T, V, 3) the current motion; spans: half-open [a, b) frame spans
    whose AU codes changed. Frames outside ``spans`` and their fades are returned unchanged (bit
    for bit). ``progress(fraction, message)`` after every network step.
    """
    sampler, steps, guidance, window, context = _resolve(cfg, sampler, steps, guidance_scale, window_frames,
                                                         context_frames, schedule)
    aus = np.asarray(aus, dtype=np.float32)
    n_frames, n_verts = old_offsets.shape[:2]
    assert aus.shape == (n_frames, NUM_AUS), f"aus must be ({n_frames}, {NUM_AUS}), got {aus.shape}"
    assert template.shape == (n_verts, 3), f"template must be ({n_verts}, 3), got {tuple(template.shape)}"
    scale = _offset_scale(model)
    device = next(model.parameters()).device
    aus_t = torch.from_numpy(aus).to(device)
    ref_t = None
    if reference_aus is not None:
        ref = np.asarray(reference_aus, dtype=np.float32)
        assert ref.shape == aus.shape, f"reference_aus must be {aus.shape}, got {ref.shape}"
        ref_t = torch.from_numpy(ref).to(device)
    old = torch.from_numpy(np.ascontiguousarray(old_offsets, dtype=np.float32)) / scale  # diffusion units
    out = old.clone()

    plan = []  # per span: its windows and its fade [b, end)
    for a, b in spans:
        if not 0 <= a < b <= n_frames:
            raise ValueError(f"span [{a}, {b}) outside the clip's {n_frames} frames")
        end = min(n_frames, b + fade_frames)
        plan.append((window_plan(a, end, window, context), a, b, end))
    per_window = 1 if sampler == "regression" else (steps if sampler == "ddim" else schedule.num_train_steps)
    total = max(1, sum(len(w) for w, *_ in plan) * per_window)
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done / total, f"sampling motion {done}/{total}")

    gen = torch.Generator().manual_seed(seed)
    result = np.array(old_offsets, dtype=np.float32, copy=True)  # untouched frames stay bit for bit
    for windows, a, b, end in plan:
        sample_windows(model, schedule, template, aus_t, feats, out, windows, sampler=sampler, steps=steps,
                       guidance_scale=guidance, generator=gen, reference_aus=ref_t,
                       edit_path=cfg.diffusion.edit_path, temperature=cfg.diffusion.sample_temperature,
                       device=device, callback=tick)
        if end > b:  # new motion → old motion over [b, end); weight of the new 1 → 0
            w = torch.linspace(1, 0, end - b + 2)[1:-1].view(-1, 1, 1)
            out[b:end] = w * out[b:end] + (1 - w) * old[b:end]
        result[a:end] = (out[a:end] * scale).numpy()
    return result
