"""HRNetV2 backbone + OCR head, written to export cleanly and to load the official Cityscapes weights.

The module tree mirrors the official checkpoint's state-dict keys exactly (listed with their shapes in
tests/data/hrnet_w48_ocr_cityscapes.keys.tsv), so loading is strict. Unlike upstream HRNet-OCR at 0bbb288
it uses plain BatchNorm2d, no global state, no numpy, and resizes every feature map to the exact size of
the tensor it joins, so any input size exports and runs (not only multiples of 32).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from hrnetseg.model.presets import DEFAULT_PRESET

BN_EPS = 1e-5


@dataclass(frozen=True)
class HRNetOCRConfig:
    """One variant of the network: widths and depths, as the upstream YAML files state them."""

    stem_width: int = 64
    stage1_blocks: int = 4              # Bottleneck blocks in stage 1
    stage1_width: int = 64              # Bottleneck width; stage 1 outputs 4x this
    branch_widths: Tuple[int, ...] = (48, 96, 192, 384)
    stage_modules: Tuple[int, ...] = (1, 4, 3)   # modules in stages 2, 3, 4
    blocks_per_branch: int = 4          # BasicBlocks per branch per module
    ocr_mid_channels: int = 512
    ocr_key_channels: int = 256
    num_classes: int = 19


PRESETS: Dict[str, HRNetOCRConfig] = {
    # The Cityscapes model: HRNetV2-W48 + OCR, 70.4 M parameters, 81.6% mIoU on val.
    "w48_ocr": HRNetOCRConfig(),
    # Same topology, a few thousand times cheaper: for tests and quick demos only.
    "tiny_ocr": HRNetOCRConfig(
        stem_width=16, stage1_blocks=1, stage1_width=8, branch_widths=(8, 16, 32, 64),
        stage_modules=(1, 1, 1), blocks_per_branch=1, ocr_mid_channels=32, ocr_key_channels=16),
}


def resize_to(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Bilinear, align_corners=True, to the exact spatial size of `like` (upstream's choice)."""
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=True)


def conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1, relu: bool = True) -> nn.Sequential:
    layers: List[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(cout, eps=BN_EPS),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, downsample: nn.Module = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width, eps=BN_EPS)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width, eps=BN_EPS)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, downsample: nn.Module = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width, eps=BN_EPS)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width, eps=BN_EPS)
        self.conv3 = nn.Conv2d(width, width * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width * 4, eps=BN_EPS)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


def make_blocks(block: type, cin: int, width: int, count: int) -> nn.Sequential:
    """A residual chain; the first block projects the shortcut when the channel count changes."""
    cout = width * block.expansion
    downsample = conv_bn(cin, cout, kernel=1, relu=False) if cin != cout else None
    blocks = [block(cin, width, downsample)]
    blocks += [block(cout, width) for _ in range(count - 1)]
    return nn.Sequential(*blocks)


class HighResolutionModule(nn.Module):
    """Parallel branches, then every branch receives the sum of all branches at its resolution."""

    def __init__(self, widths: Sequence[int], blocks: int) -> None:
        super().__init__()
        self.branches = nn.ModuleList(make_blocks(BasicBlock, w, w, blocks) for w in widths)
        self.fuse_layers = nn.ModuleList(
            nn.ModuleList(self._fuse_path(widths, source, target) for source in range(len(widths)))
            for target in range(len(widths)))
        self.relu = nn.ReLU(inplace=True)

    @staticmethod
    def _fuse_path(widths: Sequence[int], source: int, target: int) -> nn.Module:
        if source == target:
            return nn.Identity()
        if source > target:    # lower resolution: project channels, resized in forward()
            return conv_bn(widths[source], widths[target], kernel=1, relu=False)
        steps = target - source   # higher resolution: stride-2 convs, ReLU between them
        return nn.Sequential(*(
            conv_bn(widths[source], widths[target] if k == steps - 1 else widths[source],
                    stride=2, relu=k != steps - 1)
            for k in range(steps)))

    def forward(self, xs: List[torch.Tensor]) -> List[torch.Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        fused = []
        for target, paths in enumerate(self.fuse_layers):
            total = None
            for source, path in enumerate(paths):
                y = path(xs[source])
                if source > target:
                    y = resize_to(y, xs[target])
                total = y if total is None else total + y
            fused.append(self.relu(total))
        return fused


def make_transition(widths_in: Sequence[int], widths_out: Sequence[int]) -> nn.ModuleList:
    """Adapt existing branches' channels and grow each new branch from the lowest-resolution one."""
    layers: List[nn.Module] = []
    for i, width in enumerate(widths_out):
        if i < len(widths_in):
            layers.append(conv_bn(widths_in[i], width) if widths_in[i] != width else nn.Identity())
        else:
            layers.append(nn.Sequential(conv_bn(widths_in[-1], width, stride=2)))
    return nn.ModuleList(layers)


def conv_bn_relu_1x1(cin: int, cout: int) -> nn.Sequential:
    """conv1x1 then a nested (BN, ReLU): the layout of upstream's ModuleHelper.BNReLU keys."""
    return nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False),
                         nn.Sequential(nn.BatchNorm2d(cout, eps=BN_EPS), nn.ReLU(inplace=True)))


class ObjectAttentionBlock(nn.Module):
    """Each pixel attends over the class centres: softmax(q . k / sqrt(d)) . v, back to full width."""

    def __init__(self, channels: int, key_channels: int) -> None:
        super().__init__()
        self.key_channels = key_channels
        self.f_pixel = nn.Sequential(*conv_bn_relu_1x1(channels, key_channels),
                                     *conv_bn_relu_1x1(key_channels, key_channels))
        self.f_object = nn.Sequential(*conv_bn_relu_1x1(channels, key_channels),
                                      *conv_bn_relu_1x1(key_channels, key_channels))
        self.f_down = conv_bn_relu_1x1(channels, key_channels)
        self.f_up = conv_bn_relu_1x1(key_channels, channels)

    def forward(self, feats: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        query = self.f_pixel(feats).flatten(2).transpose(1, 2)      # N x HW x K
        key = self.f_object(centres).flatten(2)                      # N x K x classes
        value = self.f_down(centres).flatten(2).transpose(1, 2)      # N x classes x K
        similarity = torch.softmax(torch.matmul(query, key) * self.key_channels ** -0.5, dim=-1)
        context = torch.matmul(similarity, value).transpose(1, 2)    # N x K x HW
        context = context.reshape(context.shape[0], context.shape[1], feats.shape[2], feats.shape[3])
        return self.f_up(context)


class SpatialOCR(nn.Module):
    def __init__(self, channels: int, key_channels: int, dropout: float = 0.05) -> None:
        super().__init__()
        self.object_context_block = ObjectAttentionBlock(channels, key_channels)
        self.conv_bn_dropout = nn.Sequential(*conv_bn_relu_1x1(2 * channels, channels), nn.Dropout2d(dropout))

    def forward(self, feats: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        context = self.object_context_block(feats, centres)
        return self.conv_bn_dropout(torch.cat([context, feats], 1))


def gather_class_centres(feats: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Soft object regions: per class, the feature average weighted by softmax over positions.

    Returns N x C x classes x 1 so the following 1x1 convolutions see an image-shaped tensor.
    """
    weights = torch.softmax(logits.flatten(2), dim=2)                # N x classes x HW
    centres = torch.matmul(weights, feats.flatten(2).transpose(1, 2))  # N x classes x C
    return centres.transpose(1, 2).unsqueeze(3)


class HRNetOCR(nn.Module):
    """forward(image N x 3 x H x W) -> (aux logits, main logits), both N x classes x ceil(H/4) x ceil(W/4)."""

    def __init__(self, config: HRNetOCRConfig = PRESETS[DEFAULT_PRESET]) -> None:
        super().__init__()
        self.config = config
        c = config
        self.conv1 = nn.Conv2d(3, c.stem_width, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c.stem_width, eps=BN_EPS)
        self.conv2 = nn.Conv2d(c.stem_width, c.stem_width, 3, 2, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c.stem_width, eps=BN_EPS)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = make_blocks(Bottleneck, c.stem_width, c.stage1_width, c.stage1_blocks)

        widths_in = [c.stage1_width * Bottleneck.expansion]
        for stage, modules in enumerate(c.stage_modules, start=2):
            widths = list(c.branch_widths[:stage])
            setattr(self, "transition{}".format(stage - 1), make_transition(widths_in, widths))
            setattr(self, "stage{}".format(stage), nn.Sequential(
                *(HighResolutionModule(widths, c.blocks_per_branch) for _ in range(modules))))
            widths_in = widths

        concat_channels = sum(c.branch_widths)
        self.conv3x3_ocr = nn.Sequential(
            nn.Conv2d(concat_channels, c.ocr_mid_channels, 3, 1, 1),
            nn.BatchNorm2d(c.ocr_mid_channels, eps=BN_EPS),
            nn.ReLU(inplace=True))
        self.ocr_distri_head = SpatialOCR(c.ocr_mid_channels, c.ocr_key_channels)
        self.cls_head = nn.Conv2d(c.ocr_mid_channels, c.num_classes, 1)
        self.aux_head = nn.Sequential(
            nn.Conv2d(concat_channels, concat_channels, 1),
            nn.BatchNorm2d(concat_channels, eps=BN_EPS),
            nn.ReLU(inplace=True),
            nn.Conv2d(concat_channels, c.num_classes, 1))

    def backbone(self, image: torch.Tensor) -> torch.Tensor:
        """The four HRNet branches, upsampled to the 1/4-resolution branch and concatenated."""
        x = self.relu(self.bn1(self.conv1(image)))
        x = self.relu(self.bn2(self.conv2(x)))
        xs = [self.layer1(x)]
        for stage in range(2, len(self.config.stage_modules) + 2):
            transition = getattr(self, "transition{}".format(stage - 1))
            xs = [t(xs[min(i, len(xs) - 1)]) for i, t in enumerate(transition)]
            xs = getattr(self, "stage{}".format(stage))(xs)
        return torch.cat([xs[0]] + [resize_to(x, xs[0]) for x in xs[1:]], 1)

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        feats = self.backbone(image)
        aux = self.aux_head(feats)
        feats = self.conv3x3_ocr(feats)
        feats = self.ocr_distri_head(feats, gather_class_centres(feats, aux))
        return aux, self.cls_head(feats)


def build_model(preset: str = DEFAULT_PRESET) -> HRNetOCR:
    if preset not in PRESETS:
        raise KeyError("unknown preset {!r}; choose one of {}".format(preset, ", ".join(PRESETS)))
    return HRNetOCR(PRESETS[preset])


@torch.no_grad()
def init_random_weights(model: nn.Module, seed: int) -> nn.Module:
    """Seeded weights whose activations stay finite and varied through the whole network.

    For demos and tests only: conv weights scaled by 1/sqrt(fan_in), BatchNorm statistics sane
    (running_var in 0.5..2), so outputs are neither NaN nor constant.
    """
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            fan_in = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            module.weight.copy_(torch.randn(module.weight.shape, generator=gen) / math.sqrt(fan_in))
            if module.bias is not None:
                module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.1)
        elif isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.weight.copy_(torch.rand(n, generator=gen) * 0.5 + 0.5)
            module.bias.copy_(torch.randn(n, generator=gen) * 0.1)
            module.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
    return model
