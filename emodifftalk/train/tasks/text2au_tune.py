"""Training of the per-member MiniLM top layers (``text2au.finetune_layers``), before the heads.

Member ``k``'s copy of the top layers is tuned on every labelled training row (anchors and their
paraphrases) outside concept fold ``k``, through a throw-away linear AU probe, with BCE: first the
probe alone is fitted on the pretrained features (a zero probe would pass no gradient to the
layers, a random one a misleading one), then layers and probe are trained together for
``text2au.finetune_epochs`` epochs (AdamW: ``text2au.finetune_lr`` for the layers,
``train.weight_decay``): "linear probe, then fine-tune". The layers read cached token states
(:meth:`MiniLMEncoder.token_states`), so a step costs only the top layers. The heads are then
trained as usual on the tuned, frozen features (:mod:`emodifftalk.train.tasks.text2au`).

Joint training of layers and heads for the heads' 300 epochs would cost about a hundred times
more CPU; a short probe stage is what fits the default's ~10 CPU-minute budget.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from emodifftalk.distributed.seed import torch_generator
from emodifftalk.text2au.encoders import TokenStates
from emodifftalk.text2au.tuned_top import MemberTops

log = logging.getLogger(__name__)

PROBE_LR = 1e-2  # the probe's own fit (full batch, from zero)
PROBE_STEPS = 300
PROBE_TUNE_LR = 1e-3  # the fitted probe while the layers move
_TUNE_KEY = 7_919_011  # generator key of the tuning shuffles


def tune_member_tops(tops: MemberTops, states: TokenStates, labels: Tensor, folds: Tensor, t2a_cfg,
                     weight_decay: float, seed: int) -> MemberTops:
    """Tune ``tops.blocks[k]`` on the rows whose fold is not ``k``, in place; returns ``tops``."""
    from tqdm.auto import tqdm

    bs, epochs = t2a_cfg.finetune_batch_size, t2a_cfg.finetune_epochs
    rows = [torch.nonzero(folds != k).flatten() for k in range(tops.members)]
    total = sum(epochs * -(-len(r) // bs) for r in rows)
    base = _pretrained_features(tops, states, bs)
    tops.train()
    with torch.random.fork_rng(), tqdm(total=total, desc=f"tune MiniLM top {tops.n_top} layer(s)", unit="step") as bar:
        torch.manual_seed(seed)  # dropout
        for k, mine in enumerate(rows):
            probe = fit_probe(base[mine], labels[mine])
            opt = torch.optim.AdamW([
                {"params": tops.blocks[k].parameters(), "lr": t2a_cfg.finetune_lr, "weight_decay": weight_decay},
                {"params": probe.parameters(), "lr": PROBE_TUNE_LR, "weight_decay": 0.0}])
            for epoch in range(epochs):
                perm = mine[torch.randperm(len(mine), generator=torch_generator(seed, _TUNE_KEY, k, epoch))]
                for s in range(0, len(perm), bs):
                    idx = perm[s:s + bs]
                    logits = probe(tops.member_features(k, *states.batch(idx)))
                    loss = nn.functional.binary_cross_entropy_with_logits(logits, labels[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    bar.update(1)
                    bar.set_postfix(member=k, loss=f"{loss.item():.3f}")
            log.info("text2au: member %d top layers tuned on %d rows (last batch BCE %.4f)", k, len(mine), loss.item())
    tops.eval()
    return tops


@torch.no_grad()
def _pretrained_features(tops: MemberTops, states: TokenStates, batch_size: int) -> Tensor:
    """(N, D) features before tuning (every member starts from the same pretrained layers)."""
    tops.eval()
    return torch.cat([tops.member_features(0, *states.batch(range(s, min(s + batch_size, len(states)))))
                      for s in range(0, len(states), batch_size)])


def fit_probe(feats: Tensor, labels: Tensor, steps: int = PROBE_STEPS, lr: float = PROBE_LR) -> nn.Linear:
    """Linear AU probe fitted on fixed features (full-batch AdamW on BCE, from the base rates)."""
    probe = nn.Linear(feats.shape[1], labels.shape[1])
    nn.init.zeros_(probe.weight)
    with torch.no_grad():
        probe.bias.copy_(torch.logit(labels.mean(0).clamp(0.01, 0.99)))
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=0.0)
    for _ in range(steps):
        loss = nn.functional.binary_cross_entropy_with_logits(probe(feats), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return probe


__all__ = ["fit_probe", "tune_member_tops"]
