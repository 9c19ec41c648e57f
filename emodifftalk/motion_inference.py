"""Long-sequence motion sampling: AU codes + audio features → per-vertex offsets, window by window.

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

The regression baseline (``sampler="regression"``) has nothing to inpaint; its windows overlap by C
frames that are linearly cross-faded.

Guidance. Classifier-free guidance normally extrapolates away from the *null* condition:
x̂ = x̂(∅) + s·(x̂(E, A) − x̂(∅)), which amplifies everything the codes and audio do, lips included.
With ``reference_aus`` (e.g. the speech-only AU codes of an edited clip), the "unconditional" branch
is instead the prediction under those codes and the same audio — the negative-prompt pattern:
x̂ = x̂(E_ref, A) + s·(x̂(E, A) − x̂(E_ref, A)). Only what the edit changes is amplified; where the
codes agree (no edit, lip-locked mouth AUs) guidance is a no-op and a window with no difference
takes one network call per step.
"""

from __future__ import annotations

import torch

from emodifftalk.au import NUM_AUS
from emodifftalk.diffusion.sampler import ddim_sample, ddpm_sample
from emodifftalk.diffusion.schedule import NoiseSchedule

SAMPLERS = ("ddim", "ddpm", "regression")


def window_model_fn(model, code, aus_w: torch.Tensor, feats_b: torch.Tensor | None, start: int,
                    ref_w: torch.Tensor | None = None):
    """The sampler's ``model_fn(x, t, cond, drop)`` for one window (see "Guidance" above).

    aus_w (1, L, 17) the window's AU codes; ref_w (1, L, 17) reference codes or None (then
    ``drop=True`` asks for the learned null condition).
    """
    cond_w = model.encode_condition(aus_w, feats_b, start)  # the same for every denoising step
    ref_cond = None if ref_w is None else model.encode_condition(ref_w, feats_b, start)

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


def window_starts(n_frames: int, window: int, context: int) -> list[tuple[int, int, int]]:
    """[(start, length, n_context), ...] covering ``n_frames`` by the rule in the module docstring."""
    if window < 1 or not 0 <= context < window:
        raise ValueError(f"need window >= 1 and 0 <= context < window, got window={window}, context={context}")
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    out = [(0, min(window, n_frames), 0)]
    end = out[0][1]
    while end < n_frames:
        start = end - context
        length = min(window, n_frames - start)
        out.append((start, length, context))
        end = start + length
    return out


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
    d = cfg.diffusion
    sampler = sampler or ("regression" if d.regression else d.sampler)
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    if sampler != "regression" and schedule is None:
        raise ValueError(f"sampler {sampler!r} needs a NoiseSchedule")
    steps = steps or d.ddim_steps
    guidance = d.guidance_scale if guidance_scale is None else guidance_scale
    window = window_frames or d.window_frames
    context = d.context_frames if context_frames is None else context_frames

    assert template.ndim == 2 and template.shape[1] == 3, f"template must be (V, 3), got {tuple(template.shape)}"
    assert aus.ndim == 2 and aus.shape[1] == NUM_AUS, f"aus must be (T, {NUM_AUS}), got {tuple(aus.shape)}"
    if feats is not None:
        assert feats.ndim == 2, f"feats must be (Ta, D), got {tuple(feats.shape)}"
    if device is None:
        device = next(model.parameters()).device
    n_frames, n_verts = aus.shape[0], template.shape[0]
    scale = float(model.offset_scale)
    if not scale > 0:
        raise ValueError("model.offset_scale is not set (untrained model?)")

    code = model.encode_template(template[None].to(device=device, dtype=torch.float32))
    feats_b = feats[None].to(device=device, dtype=torch.float32) if feats is not None else None
    aus = aus.to(device=device, dtype=torch.float32)
    if reference_aus is not None:
        assert reference_aus.shape == aus.shape, (
            f"reference_aus must be {tuple(aus.shape)}, got {tuple(reference_aus.shape)}")
        reference_aus = reference_aus.to(device=device, dtype=torch.float32)
    out = torch.zeros(n_frames, n_verts, 3)  # normalised units, CPU

    for start, length, n_ctx in window_starts(n_frames, window, context):
        ref_w, window_guidance = reference_window(reference_aus, aus, start, length, guidance)
        model_fn = window_model_fn(model, code, aus[None, start:start + length], feats_b, start, ref_w)

        shape = (1, length, n_verts, 3)
        if sampler == "regression":
            zeros = torch.zeros(shape, device=device)
            pred = model_fn(zeros, torch.zeros(1, dtype=torch.long, device=device), None, False)[0].cpu()
            if n_ctx:  # linear cross-fade over the overlap: old weight 1 → 0
                w = torch.linspace(1, 0, n_ctx + 2)[1:-1].view(-1, 1, 1)
                pred[:n_ctx] = w * out[start:start + n_ctx] + (1 - w) * pred[:n_ctx]
            out[start:start + length] = pred
            continue
        known = out[None, start:start + n_ctx].to(device) if n_ctx else None
        kwargs = {"cond": None, "generator": generator, "guidance_scale": window_guidance, "known_x0": known,
                  "context": n_ctx, "device": device}
        if sampler == "ddim":
            x0 = ddim_sample(model_fn, shape, schedule, steps, eta=eta, **kwargs)
        else:
            x0 = ddpm_sample(model_fn, shape, schedule, **kwargs)
        out[start + n_ctx:start + length] = x0[0, n_ctx:].float().cpu()
    return out * scale
