"""Hand-built CNNs for 48x48 grayscale faces, created by name: `create_model("seed")`.

Every network starts with a fixed `Normalize` layer, so consumers (including the ONNX file) only
scale pixels to [0, 1] (docs/design.md). The model card stores the name and kwargs, so a saved model is
rebuilt from `create_model(card["arch"], **card["arch_kwargs"])` without guessing.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .errors import FerError
from .labels import NUM_CLASSES
from .views import ENSEMBLE, member_mirrors, view_count

# Pixel mean and std of FER2013 train (all 28,709 images, pixels / 255), measured once on
# ../shared/fer2013/train; fixed here so the normalisation never depends on the data at hand.
FER_MEAN = 0.5079
FER_STD = 0.2549

ARCHS: dict[str, Callable[..., nn.Module]] = {}


def register(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    ARCHS[builder.__name__] = builder
    return builder


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered architecture (or an `ENSEMBLE` of them); an unknown name is a clear error."""
    if name == ENSEMBLE:
        return ensemble(**kwargs)
    if name not in ARCHS:
        raise FerError(f"unknown architecture {name!r}; choose one of {', '.join(ARCHS)}")
    return ARCHS[name](**kwargs)


class Normalize(nn.Module):
    """Fixed (non-trainable) input standardisation, saved with the weights and exported to ONNX."""

    def __init__(self, mean: float = FER_MEAN, std: float = FER_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(conv_bn_relu(c_in, c_out), nn.MaxPool2d(2))


def double_conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(conv_bn_relu(c_in, c_out), conv_bn_relu(c_out, c_out), nn.MaxPool2d(2))


class GridFlatten(nn.Module):
    """Feature maps → side x side cells → one vector per image, for the dense head.

    At 48x48 input the maps already are side x side and are only flattened (the ONNX graph has no
    extra node). Smaller training faces (progressive resizing) leave 1x1 or 2x2 maps, stretched onto
    the grid bilinearly with corners aligned (for these sizes the same as adaptive average pooling,
    which MPS refuses for sizes that do not divide). No parameters, so it takes the slot a bare
    Flatten had and saved weights keep their names.
    """

    def __init__(self, side: int):
        super().__init__()
        self.side = side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.side, self.side):
            x = nn.functional.interpolate(x, size=(self.side, self.side), mode="bilinear", align_corners=True)
        return x.flatten(1)


@register
def seed(n_classes: int = NUM_CLASSES, dropout: float = 0.5) -> nn.Sequential:
    """The original network: 4 conv blocks (32-64-128-256) + 2304→512→7 head; 1,572,551 parameters."""
    return nn.Sequential(
        Normalize(),
        conv_block(1, 32), conv_block(32, 64), conv_block(64, 128), conv_block(128, 256),
        GridFlatten(3),
        nn.Linear(256 * 3 * 3, 512), nn.ReLU(inplace=True), nn.Dropout(dropout),
        nn.Linear(512, n_classes),
    )


@register
def vgg(n_classes: int = NUM_CLASSES, widths: tuple[int, ...] = (32, 64, 128, 256),
        hidden: int = 256, dropout: float = 0.5) -> nn.Sequential:
    """VGG-style: two 3x3 convs per stage, 4 stages → 3x3 maps, small MLP head (~1.76M params, ~118M MACs)."""
    channels = (1, *widths)
    stages = [double_conv_block(c_in, c_out) for c_in, c_out in zip(channels, channels[1:])]
    side = 48 // 2 ** len(widths)
    return nn.Sequential(
        Normalize(),
        *stages,
        GridFlatten(side),
        nn.Linear(widths[-1] * side * side, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
        nn.Linear(hidden, n_classes),
    )


class ResidualBlock(nn.Module):
    """Two 3x3 conv+BN layers added to a shortcut (a strided 1x1 conv+BN where the shape changes), then ReLU.

    The last BN starts at zero, so each block starts as its shortcut: deep stacks train from the
    first epoch like shallow ones (Goyal et al. 2017).
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out))
        nn.init.zeros_(self.body[-1].weight)
        self.shortcut = (nn.Identity() if stride == 1 and c_in == c_out else
                         nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


@register
def resnet(n_classes: int = NUM_CLASSES, widths: tuple[int, ...] = (32, 64, 128, 256),
           blocks: tuple[int, ...] = (1, 1, 1, 1), dropout: float = 0.2) -> nn.Sequential:
    """Small ResNet: a 3x3 stem at 48x48, then per stage residual blocks (the first one halving the maps:
    48→24→12→6→3), global average pooling and one linear layer (~1.23M params, ~37M MACs, about the
    seed net's cost). No dense head to memorise faces with, and any face size pools to one vector."""
    layers: list[nn.Module] = [Normalize(), conv_bn_relu(1, widths[0])]
    channels = widths[0]
    for width, count in zip(widths, blocks, strict=True):
        layers.append(ResidualBlock(channels, width, stride=2))
        layers.extend(ResidualBlock(width, width) for _ in range(count - 1))
        channels = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels, n_classes))


class Ensemble(nn.Module):
    """Several trained networks answering as one: the mean of their calibrated probabilities.

    With `shifts` = s > 0 each network also sees every face moved by up to s whole pixels in each
    direction, (2s+1)² views with the border filled by reflection (the same views training's
    `--max-shift` draws from), and its probabilities are averaged over the views too. Trained
    networks still mistake a face for a neighbouring class when it sits a pixel off; averaging
    over positions smooths that out, at (2s+1)² times the inference cost. A member whose `mirrors`
    entry is true also sees each of those views mirrored left-right (twice its views): worth it for
    networks trained on mirrored faces, harmful for ones that never saw a mirror (docs/results.md,
    shifted views), so it is chosen member by member.
    `forward` returns log(mean probability), which are logits in the ONNX contract's sense (softmax
    gives the mean back), so calibration, export and every predictor treat it like one network.
    """

    def __init__(self, members: list[nn.Module], temperatures: list[float], shifts: int, mirrors: list[bool]):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.register_buffer("temperatures", torch.tensor(temperatures, dtype=torch.float32))
        self.shifts = shifts
        self.mirrors = mirrors
        if len(self.mirrors) != len(members):
            raise ValueError(f"one mirrors entry per member: {len(self.mirrors)} for {len(members)} members")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        views = shifted_views(x, self.shifts)
        with_mirrors = torch.cat([views, views.flip(-1)]) if any(self.mirrors) else views
        probs = torch.stack([torch.softmax(member(with_mirrors if mirror else views) / self.temperatures[index], dim=1)
                             .reshape(view_count(self.shifts, mirror), -1, NUM_CLASSES).mean(dim=0)
                             for index, (member, mirror) in enumerate(zip(self.members, self.mirrors))]).mean(dim=0)
        return torch.log(probs.clamp_min(torch.finfo(probs.dtype).tiny))


def view_offsets(shifts: int) -> list[tuple[int, int]]:
    """(rows, columns) by which each view's crop is offset, in the order `shifted_views` stacks them."""
    return [(dy, dx) for dy in range(-shifts, shifts + 1) for dx in range(-shifts, shifts + 1)]


def shifted_views(x: torch.Tensor, shifts: int) -> torch.Tensor:
    """[N, C, H, W] → [views * N, C, H, W]: view v of face i at row v * N + i, cropped at `view_offsets(shifts)[v]`
    from the reflect-padded face; the unmoved face is a view, and shifts 0 returns `x` itself."""
    if shifts == 0:
        return x
    height, width = x.shape[-2:]
    padded = nn.functional.pad(x, (shifts, shifts, shifts, shifts), mode="reflect")
    return torch.cat([padded[..., shifts + dy:shifts + dy + height, shifts + dx:shifts + dx + width]
                      for dy, dx in view_offsets(shifts)])


def ensemble(members: list[dict], shifts: int = 0, mirrors: bool = False) -> Ensemble:
    """Members as a model card lists them: [{"arch": "vgg", "arch_kwargs": {...}, "temperature": 1.08, "mirrors": true}, …].

    A member's `mirrors` says whether it also sees mirrored views; `mirrors` = True for the whole
    ensemble mirrors every member (how cards written before 2026-11-29 say it)."""
    if not members:
        raise FerError("an ensemble needs at least one member network")
    if any(member.get("arch") == ENSEMBLE for member in members):
        raise FerError("an ensemble's members must be single networks; list the networks of the inner ensemble instead")
    if not isinstance(shifts, int) or not 0 <= shifts < 24:
        raise FerError(f"shifts must be a whole number of pixels from 0 to 23, got {shifts!r} (a shift must stay under half of a 48-pixel face)")
    return Ensemble([create_model(member["arch"], **member.get("arch_kwargs", {})) for member in members],
                    [float(member.get("temperature", 1.0)) for member in members], shifts,
                    member_mirrors(members, ensemble_wide=mirrors))


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (the Normalize buffers are not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_macs(model: nn.Module, input_shape: tuple[int, ...] = (1, 1, 48, 48)) -> int:
    """Multiply-accumulates per input image, counted over Conv2d and Linear layers.

    Counted over every row a layer sees, so an ensemble's shifted views of one face all count.
    """
    total = 0

    def conv_hook(layer: nn.Conv2d, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        kernel = layer.in_channels // layer.groups * layer.kernel_size[0] * layer.kernel_size[1]
        total += output.numel() * kernel

    def linear_hook(layer: nn.Linear, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        total += output.numel() * layer.in_features

    handles = [m.register_forward_hook(conv_hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    handles += [m.register_forward_hook(linear_hook) for m in model.modules() if isinstance(m, nn.Linear)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(input_shape))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return total // input_shape[0]
