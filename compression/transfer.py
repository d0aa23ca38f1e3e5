"""Transfer fine-tuning: a new head trained alone first, then the whole network at a lower learning rate."""

from __future__ import annotations

from torch import nn

from compression.models import head_name


def transfer_param_groups(model: nn.Module, lr: float, backbone_lr_factor: float) -> list[dict]:
    """Optimizer groups: the head at `lr`, everything else at `lr * backbone_lr_factor`."""
    prefix = head_name(model) + "."
    head_params = [p for n, p in model.named_parameters() if n.startswith(prefix)]
    backbone = [p for n, p in model.named_parameters() if not n.startswith(prefix)]
    return [{"params": head_params, "lr": lr}, {"params": backbone, "lr": lr * backbone_lr_factor}]


def freeze_backbone_for(freeze_epochs: int):
    """`on_epoch_start` hook: backbone frozen (weights and BatchNorm statistics) for the first epochs."""

    def on_epoch_start(epoch: int, model: nn.Module) -> None:
        frozen = epoch < freeze_epochs
        prefix = head_name(model) + "."
        for name, p in model.named_parameters():
            if not name.startswith(prefix):
                p.requires_grad_(not frozen)
        if frozen:
            for module in model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()

    return on_epoch_start
