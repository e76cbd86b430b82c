"""The gradient norm over shared and expert parameters alike.

fairseq's ``utils.clip_grad_norm_`` computes the norm over the parameters not marked ``expert``
and scales every gradient, experts included, by the clip coefficient. With experts spread over
ranks, a norm that leaves them out understates the global norm, and a per-rank norm that
includes them differs between ranks (fairseq then stops with "gradients are inconsistent between
workers"). fairseq's function is therefore wrapped (``install``) so that, for placed experts,
the norm is that of the whole model: the squared norms of this rank's experts are summed over all
ranks, each replicated expert counted once, and added to fairseq's own norm of the shared part.
Under --ddp-backend fully_sharded fairseq's own part is the norm of the shared shards, all-reduced
over the ranks by the aggregate function fairseq's Trainer passes in.
"""

import torch
import torch.distributed as dist
from fairseq import utils

_fairseq_clip_grad_norm = utils.clip_grad_norm_


@torch.no_grad()
def clip_grad_norm_with_experts(params, max_norm, aggregate_norm_fn=None) -> torch.Tensor:
    params = [params] if isinstance(params, torch.Tensor) else list(params)
    # Placed experts only: fairseq marks its own BASE layers' parameters ``expert`` too.
    experts = [p for p in params
               if hasattr(p, "expert_placement") and getattr(p, "grad", None) is not None]
    if not experts:
        return _fairseq_clip_grad_norm(params, max_norm, aggregate_norm_fn)
    shared_norm = _fairseq_clip_grad_norm(params, 0, aggregate_norm_fn).float()  # 0: measure only
    # On the shared norm's device, where the process group communicates (the expert gradients
    # may have been moved to the CPU by --cpu-offload).
    expert_square = sum(
        p.grad.detach().float().square().sum().to(shared_norm.device) / gradient_copies(p)
        for p in experts
    )
    dist.all_reduce(expert_square)
    total_norm = (shared_norm.square() + expert_square).sqrt()
    if max_norm > 0:
        clip_coef = (float(max_norm) / (total_norm + 1e-6)).clamp_(max=1)
        grads = [p.grad.detach() for p in params if getattr(p, "grad", None) is not None]
        torch._foreach_mul_(grads, clip_coef.to(grads[0].device))
    return total_norm


def gradient_copies(parameter) -> int:
    """Ranks holding the same copy of this expert parameter's gradient (1 unless there are more
    ranks than experts and no FSDP shards the gradient over them)."""
    placement = getattr(parameter, "expert_placement", None)
    return 1 if placement is None else placement.gradient_copies


def install_expert_grad_norm() -> None:
    """Route fairseq's optimizers (which call ``utils.clip_grad_norm_``) through the version
    above; without expert gradients it is fairseq's own."""
    utils.clip_grad_norm_ = clip_grad_norm_with_experts
