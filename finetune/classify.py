"""The finetuning task: video classification with Mixup/CutMix, label smoothing and EMA.

Batch -> loss like the pretraining task (`forward(batch) -> (loss, report)`), so the
shared loop in pretrain/runtime.py trains it unchanged. Mixup/CutMix, the soft-target
loss and the weight EMA are timm's.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.utils import ModelEmaV3


class Classification(nn.Module):
    """model: an MViT with a head of num_classes outputs."""

    def __init__(self, model: nn.Module, num_classes: int, *, mixup: float = 0.8, cutmix: float = 1.0,
                 mix_prob: float = 1.0, switch_prob: float = 0.5, label_smoothing: float = 0.1,
                 ema_decay: float | None = None):
        super().__init__()
        self.model = model
        self.mixup = None
        if (mixup > 0 or cutmix > 0) and mix_prob > 0:
            self.mixup = Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, prob=mix_prob, switch_prob=switch_prob,
                               label_smoothing=label_smoothing, num_classes=num_classes)
            self.criterion = SoftTargetCrossEntropy()
        elif label_smoothing > 0:
            self.criterion = LabelSmoothingCrossEntropy(label_smoothing)
        else:
            self.criterion = nn.CrossEntropyLoss()
        # the EMA copy lives in the task so that save_state checkpoints it with the model
        self.ema = ModelEmaV3(model, decay=ema_decay) if ema_decay else None

    def mix(self, video: torch.Tensor, label: torch.Tensor):
        """video (B, 3, T, H, W) -> mixed video, soft targets (B, C). timm's CutMix cuts the
        last two dims, so frames are folded into channels: one box for all frames of a clip."""
        B, C, T, H, W = video.shape
        mixed, target = self.mixup(video.reshape(B, C * T, H, W).clone(), label)
        return mixed.view(B, C, T, H, W), target

    def forward(self, batch: dict):
        video, label = batch["video"], batch["label"]  # labels checked on the host (require_labels)
        if self.mixup is not None:
            if video.shape[0] % 2:
                raise ValueError(f"Mixup/CutMix need an even batch, got {video.shape[0]} (set train.batch_size)")
            video, target = self.mix(video, label)
        else:
            target = label
        logits = self.model(video)
        loss = self.criterion(logits, target)
        acc = (logits.argmax(-1) == label).float().mean()  # against the unmixed label: a rough signal
        return loss, {"acc": acc.detach()}

    @torch.no_grad()
    def update_ema(self, step: int):
        if self.ema is not None:
            self.ema.update(self.model, step=step)

    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    # the optimizer sees the classifier's parameters with its own decay rules and layer ids

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {f"model.{n}" for n in self.model.no_weight_decay()}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        inner = self.model.group_matcher(coarse)
        add = lambda r: r.replace("^", "^model\\.")  # noqa: E731
        return {"stem": add(inner["stem"]), "blocks": [(add(r), v) for r, v in inner["blocks"]]}

    def images(self, batch: dict) -> dict:
        return {}
