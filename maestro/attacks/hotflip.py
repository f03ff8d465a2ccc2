"""HotFlip (Ebrahimi et al. 2018): swap tokens where the first-order loss change is largest.

Swapping token a for b at position i changes the loss by about (e_b − e_a) · ∇_{e_i} L; one
matrix product of the B×T×D gradient with the V×D embedding table scores every (position,
token) pair of every example at once. Each step the best ``candidates`` pairs per example are
re-scored with a real forward pass and the one that moves furthest toward the goal is kept, up
to ``eps`` swaps, on the examples not yet broken.
"""

from __future__ import annotations

import torch

from ..text import TokenBatch
from ._loop import goal_margin as margins
from ._text import (
    TextAttack,
    editable_positions,
    replace_spans,
    token_spans,
    token_surface,
)

# largest b×T×V block of first-order scores held at once (floats)
_BLOCK = 1 << 25


class HotFlip(TextAttack):
    """Greedy first-order token swaps, at most ``eps`` per example (white-box).

    ``candidates``: first-order best (position, token) pairs re-scored by a real forward pass
    per step (1: plain HotFlip, no re-scoring choice). ``loss``: the loss whose embedding
    gradient ranks the swaps (``"ce"`` or ``"margin"``). Returns the adversarial texts
    (``x_adv``: list[str], the clean strings with the swapped words replaced) and in ``info``
    the adversarial ``input_ids``/``attention_mask``, the ``swaps`` made per example
    (position, old token, new token) and ``changed`` (swaps per example).
    """

    name = "HotFlip"
    requires = "white-box"

    def __init__(self, threat, *, candidates: int = 10, loss: str = "ce", targeted: bool = False, seed: int = 0):
        super().__init__(threat, targeted=targeted, seed=seed)
        if not isinstance(candidates, int) or candidates < 1:
            raise ValueError(f"candidates must be an int ≥ 1, got {candidates!r}")
        if loss not in ("ce", "margin"):
            raise ValueError(f"loss must be 'ce' or 'margin', got {loss!r}")
        self.candidates = candidates
        self.loss = loss

    def _run(self, model, x, y, target):
        tok = model.tokenizer
        dev = model.device
        tb = model.tokenize(x)
        spans = token_spans(tok, x, tb)
        editable = editable_positions(x, spans, tb, tok.special_ids).to(dev)
        allowed = self.allowed_tokens(tok).to(dev)
        emb = model.embedding_matrix()
        ids, mask = tb.input_ids.clone().to(dev), tb.attention_mask.to(dev)
        goal = target if self.targeted else y
        n = len(x)

        grad, logits = model.gradient(TokenBatch(ids, mask), goal, self.loss, self.targeted, return_logits=True)
        margin = margins(logits, y, target, self.targeted)
        live = margin >= 0  # not yet broken and still has a swap worth trying
        flipped = torch.zeros_like(editable)
        for step in range(self.eps):
            idx = live.nonzero().flatten()
            if not len(idx):
                break
            if step:  # the first step reuses the clean gradient
                grad = model.gradient(TokenBatch(ids[idx], mask[idx]), goal[idx], self.loss, self.targeted)
            else:
                grad = grad[idx]
            pos, tokens, ok = self._first_order(grad, ids[idx], editable[idx] & ~flipped[idx], allowed, emb)
            k = pos.shape[1]
            trial = ids[idx].repeat_interleave(k, 0)
            rows = torch.arange(len(trial), device=dev)
            trial[rows, pos.flatten()] = tokens.flatten()
            out = model.logits(TokenBatch(trial, mask[idx].repeat_interleave(k, 0)))
            tgt = target[idx].repeat_interleave(k) if self.targeted else None
            trial_margin = margins(out, y[idx].repeat_interleave(k), tgt, self.targeted).view(-1, k)
            trial_margin = trial_margin.masked_fill(~ok, float("inf"))
            best_margin, best = trial_margin.min(1)
            better = best_margin < margin[idx]
            take, chosen = idx[better], best[better]
            p, t = pos[better, chosen], tokens[better, chosen]
            ids[take, p] = t
            flipped[take, p] = True
            margin[take] = best_margin[better]
            live[idx[~better]] = False
            live[take] = best_margin[better] >= 0

        x_adv, swaps = [], []
        clean_ids = tb.input_ids.tolist()
        ids, flipped = ids.cpu(), flipped.cpu()  # read per example below: no device sync per item
        for b in range(n):
            made = [(t, token_surface(tok, clean_ids[b][t]), token_surface(tok, int(ids[b, t])))
                    for t in flipped[b].nonzero().flatten().tolist()]
            swaps.append(made)
            x_adv.append(replace_spans(x[b], [(*spans[b][t], new) for t, _, new in made]))
        x_adv = self._finish(x, x_adv)
        success = self._goal(logits, y, target)
        changed = torch.tensor([len(s) for s in swaps])
        moved = (changed > 0).nonzero().flatten().tolist()
        if moved:  # judge the returned strings themselves, not the token view
            sub_y = y[moved]
            sub_t = target[moved] if self.targeted else None
            success[moved] = self._goal(model.logits([x_adv[i] for i in moved]), sub_y, sub_t)
        info = {"input_ids": ids.cpu(), "attention_mask": mask.cpu(), "swaps": swaps, "changed": changed}
        return x_adv, success, info

    def _first_order(self, grad, ids, editable, allowed, emb):
        """Best ``candidates`` (position, token) pairs per example by (e_b − e_a)·∇_{e_i}L.

        Returns positions and tokens (b×k) and a mask of the pairs that are real options."""
        b, t, _ = grad.shape
        v = emb.shape[0]
        k = min(self.candidates, t * v)
        chunk = max(1, _BLOCK // max(1, t * v))
        pos, tokens, vals = [], [], []
        for s in range(0, b, chunk):
            g = grad[s : s + chunk]
            cur = ids[s : s + chunk]
            score = g @ emb.T - (g * emb[cur]).sum(-1, keepdim=True)  # chunk×T×V
            score.masked_fill_(~editable[s : s + chunk, :, None], float("-inf"))
            score.masked_fill_(~allowed[None, None, :], float("-inf"))
            score.scatter_(2, cur[:, :, None], float("-inf"))  # no swap for itself
            top = score.flatten(1).topk(k, dim=1)
            vals.append(top.values)
            pos.append(top.indices // v)
            tokens.append(top.indices % v)
        return torch.cat(pos), torch.cat(tokens), torch.isfinite(torch.cat(vals))
