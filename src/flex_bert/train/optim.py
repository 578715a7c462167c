"""StableAdamW (torch-optimi), the optimizer the ModernBERT checkpoints were trained with.

``decoupled_stableadamw`` = ``optimi.StableAdamW(decouple_lr=True, max_lr=lr)``: weight decay is scaled by
lr / max_lr, so it follows the schedule. With ``filter_bias_norm_wd`` the first parameter group holds norms and
biases (ndim <= 1) with no weight decay and the second all matrices, in upstream's order, so upstream optimizer
states map onto ours group for group. ``adamw`` (fine-tuning) is torch's AdamW over the same groups.
"""

from __future__ import annotations

import torch
from optimi import StableAdamW


def param_groups(model: torch.nn.Module, weight_decay: float, filter_bias_norm_wd: bool) -> list[dict]:
    no_decay, decay = [], []
    for name, p in model.named_parameters():  # a tied weight appears once
        if not p.requires_grad:
            continue
        (no_decay if filter_bias_norm_wd and (p.ndim <= 1 or name.endswith(".bias")) else decay).append(p)
    groups = [{"params": no_decay, "weight_decay": 0.0}] if no_decay else []
    return groups + [{"params": decay, "weight_decay": weight_decay}]


def build_optimizer(model: torch.nn.Module, cfg) -> torch.optim.Optimizer:
    if cfg.name not in ("decoupled_stableadamw", "adamw"):
        raise ValueError(f"optimizer.name must be 'decoupled_stableadamw' or 'adamw', got {cfg.name!r}")
    betas = tuple(float(b) for b in cfg.betas)
    if len(betas) != 2:
        raise ValueError(f"optimizer.betas needs two values, got {list(cfg.betas)}")
    groups = param_groups(model, cfg.weight_decay, cfg.filter_bias_norm_wd)
    if cfg.name == "adamw":  # torch's AdamW, as Hugging Face's Trainer (fine-tuning)
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    opt = StableAdamW(
        groups,
        lr=cfg.lr,
        betas=betas,
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        decouple_lr=True,
        max_lr=cfg.lr,
        # torch-optimi 0.3.3 picks its Triton kernels on a CPU too when triton is installed (and then fails):
        # decide here; on CUDA, None lets it choose once the parameters are on the GPU.
        triton=None if torch.cuda.is_available() else False,
    )
    opt.register_load_state_dict_pre_hook(upgrade_optimi_state)
    return opt


def upgrade_optimi_state(optimizer, state_dict: dict) -> dict:
    """Let torch-optimi 0.3.x load a 0.2.x state (the official checkpoints): add the group keys it expects.

    0.3 adds ``setup`` and ``triton`` to each group (and a per-parameter ``mean_square`` scratch buffer that
    its own load hook creates when triton is on). A restored group has already been set up (it has a step).
    """
    for group in state_dict["param_groups"]:
        for key, default in optimizer.defaults.items():
            group.setdefault(key, default)
        if "step" in group:
            group["setup"] = True
            if not torch.is_tensor(group["step"]):
                group["step"] = torch.tensor(int(group["step"]), dtype=torch.int32)
        if group.get("triton") is None:
            group["triton"] = False
    return state_dict
