"""Build the onnxcfp model zoo: small video 3D-CNNs of the families Class Feature Pyramids covers.

Every architecture is defined here in torch (needs the ``zoo`` extra: ``pip install torch==2.13.0
onnxscript``), exported with BOTH torch exporters (legacy TorchScript and dynamo), and described by a JSON
card beside each file. One extra model is written with ``onnx.helper`` in the NTHWC layout the way
tf2onnx emits a Keras Conv3D net (Transposes around each Conv, MatMul+Add head).

    python models/build_zoo.py            # untrained (seeded random) weights
    python models/build_zoo.py --train    # train every arch on onnxcfp.datasets, then export

The "declared" block of each card comes from the torch modules defined here (the convs the model holds,
the residual adds / concats / splits its blocks perform), never from parsing the exported ONNX; the
builder then checks the export against it (Conv count, Concat count) and against torch outputs.

Design constraints (see /work/shared/design/evaluation.md): input 1x3x16x64x64 NCTHW; the last conv
features keep time and space resolved (8x8x8 here: one temporal stride, total spatial stride 8); channels
small so each file is far below 1 MB and CPU training takes about a minute per model.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

MODELS_DIR = Path(__file__).resolve().parent
WORK_DIR = MODELS_DIR / "_work"
IR_VERSION = 10  # onnxruntime 1.31 accepts IR <= 13; onnx 1.23 would write 12+ by default
LEGACY_OPSET = 17
DYNAMO_OPSET = 18
FRAMES, SIZE, CHANNELS = 16, 64, 3
MEAN = (0.45, 0.45, 0.45)
STD = (0.225, 0.225, 0.225)
BUILD_COMMAND = "python models/build_zoo.py --train"
TRAIN_SEED, VAL_SEED, EVAL_SEED = 1000, 1500, 2000
LEARNING_RATE = 2e-3
TARGET_VAL_ACCURACY = 0.94
EXTRA_ROUNDS, EXTRA_EPOCHS = 2, 5
EXTRA_LR_FRACTION = 0.5  # of LEARNING_RATE, for the extra rounds
# the plain 3-conv NTHWC net (no residuals) learns slower: 16 epochs + extras left it at 0.87 held-out
DEFAULT_EPOCHS = 16
EPOCHS_BY_ARCH = {"tfstyle": 32}


# ----------------------------------------------------------------------------------------------------------
# Building blocks. Each block class says how many residual adds / channel concats / channel splits it
# performs; convs are counted by walking the module tree (see `declared_structure`).
# ----------------------------------------------------------------------------------------------------------


class Counted(nn.Module):
    residual_adds = 0
    channel_concats = 0
    channel_splits = 0


def conv_bn_relu(cin: int, cout: int, kernel, stride=1, groups: int = 1, relu: bool = True) -> nn.Sequential:
    kernel = (kernel,) * 3 if isinstance(kernel, int) else tuple(kernel)
    padding = tuple(k // 2 for k in kernel)
    layers: list[nn.Module] = [
        nn.Conv3d(cin, cout, kernel, stride=stride, padding=padding, groups=groups, bias=False),
        nn.BatchNorm3d(cout),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=False))
    return nn.Sequential(*layers)


def stem3d(cout: int = 16) -> nn.Sequential:
    """3x5x5 conv, stride (2,4,4): the only temporal stride in the nets (T 16 -> 8)."""
    return conv_bn_relu(CHANNELS, cout, (3, 5, 5), stride=(2, 4, 4))


class BasicBlock(Counted):
    residual_adds = 1

    def __init__(self, cin: int, cout: int, stride=1) -> None:
        super().__init__()
        self.conv1 = conv_bn_relu(cin, cout, 3, stride)
        self.conv2 = conv_bn_relu(cout, cout, 3, relu=False)
        self.shortcut = conv_bn_relu(cin, cout, 1, stride, relu=False) if cin != cout or stride != 1 else None
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        return self.relu(self.conv2(self.conv1(x)) + identity)


class Bottleneck(Counted):
    """1x1x1 -> 3x3x3 (optionally grouped: ResNeXt) -> 1x1x1, with a residual add."""

    residual_adds = 1

    def __init__(self, cin: int, mid: int, cout: int, stride=1, groups: int = 1) -> None:
        super().__init__()
        self.reduce = conv_bn_relu(cin, mid, 1)
        self.conv = conv_bn_relu(mid, mid, 3, stride, groups=groups)
        self.expand = conv_bn_relu(mid, cout, 1, relu=False)
        self.shortcut = conv_bn_relu(cin, cout, 1, stride, relu=False) if cin != cout or stride != 1 else None
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        return self.relu(self.expand(self.conv(self.reduce(x))) + identity)


class MultiFibreUnit(Counted):
    """MFNet-style unit: a 1x1x1 multiplexer, then the channels split into fibres that each run their own
    3x3x3 conv, concatenated back and mixed by a grouped 1x3x3 conv (one group per fibre); residual add.
    ``split="chunk"`` splits with one torch.chunk (an ONNX Split); ``split="slice"`` takes each fibre's
    channel range by indexing (ONNX Slice) — both ways real exports take fibres apart."""

    residual_adds = 1
    channel_concats = 1
    # one tensor taken apart into fibres, however many Split/Slice nodes the exporter writes for it
    # (legacy exports a dynamic-batch chunk as Shape arithmetic + one Slice per fibre)
    channel_splits = 1

    def __init__(self, cin: int, mid: int, cout: int, fibres: int, stride=1, split: str = "chunk") -> None:
        super().__init__()
        self.fibres, self.split = fibres, split
        self.mux = conv_bn_relu(cin, mid, 1)
        width = mid // fibres
        self.fibre_convs = nn.ModuleList(conv_bn_relu(width, width, 3, stride) for _ in range(fibres))
        self.mix = conv_bn_relu(mid, cout, (1, 3, 3), groups=fibres, relu=False)
        self.shortcut = conv_bn_relu(cin, cout, 1, stride, relu=False) if cin != cout or stride != 1 else None
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        h = self.mux(x)
        if self.split == "chunk":
            parts = torch.chunk(h, self.fibres, dim=1)
        else:
            width = h.shape[1] // self.fibres
            parts = tuple(h[:, i * width : (i + 1) * width] for i in range(self.fibres))
        h = torch.cat([conv(p) for conv, p in zip(self.fibre_convs, parts, strict=True)], dim=1)
        return self.relu(self.mix(h) + identity)


class SeparableConv(nn.Sequential):
    """S3D / R(2+1)D factorisation: spatial 1xkxk then temporal kx1x1."""

    def __init__(self, cin: int, cout: int, stride=1, mid: int | None = None, k: int = 3) -> None:
        stride = (stride,) * 3 if isinstance(stride, int) else tuple(stride)
        mid = cout if mid is None else mid
        super().__init__(
            conv_bn_relu(cin, mid, (1, k, k), (1, stride[1], stride[2])),
            conv_bn_relu(mid, cout, (k, 1, 1), (stride[0], 1, 1)),
        )


class Inception(Counted):
    """I3D / S3D inception module: four branches concatenated on the channel axis."""

    channel_concats = 1

    def __init__(
        self, cin: int, b0: int, b1: tuple[int, int], b2: tuple[int, int], b3: int, separable: bool
    ) -> None:
        super().__init__()

        def wide(ci: int, co: int) -> nn.Module:
            return SeparableConv(ci, co) if separable else conv_bn_relu(ci, co, 3)

        self.branch0 = conv_bn_relu(cin, b0, 1)
        self.branch1 = nn.Sequential(conv_bn_relu(cin, b1[0], 1), wide(b1[0], b1[1]))
        self.branch2 = nn.Sequential(conv_bn_relu(cin, b2[0], 1), wide(b2[0], b2[1]))
        self.branch3 = nn.Sequential(nn.MaxPool3d(3, 1, 1), conv_bn_relu(cin, b3, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)], dim=1)


class R2Plus1dBlock(Counted):
    residual_adds = 1

    def __init__(self, cin: int, cout: int, stride=1) -> None:
        super().__init__()
        self.conv1 = SeparableConv(cin, cout, stride)
        # the second factorised conv ends without ReLU: BN on the temporal conv, then add
        self.conv2 = nn.Sequential(
            conv_bn_relu(cout, cout, (1, 3, 3)), conv_bn_relu(cout, cout, (3, 1, 1), relu=False)
        )
        self.shortcut = conv_bn_relu(cin, cout, 1, stride, relu=False) if cin != cout or stride != 1 else None
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        return self.relu(self.conv2(self.conv1(x)) + identity)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv3d(channels, squeeze, 1)
        self.fc2 = nn.Conv3d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.relu(self.fc1(x.mean(dim=(2, 3, 4), keepdim=True)))
        return x * torch.sigmoid(self.fc2(s))


class X3DBlock(Counted):
    """Pointwise expand -> depthwise 3x3x3 -> (squeeze-excite) -> swish -> pointwise project; residual."""

    residual_adds = 1

    def __init__(self, cin: int, expand: int, cout: int, stride=1, se: bool = True) -> None:
        super().__init__()
        self.expand = conv_bn_relu(cin, expand, 1)
        self.depthwise = conv_bn_relu(expand, expand, 3, stride, groups=expand, relu=False)
        self.se = SqueezeExcite(expand, max(8, expand // 4)) if se else nn.Identity()
        self.act = nn.SiLU()
        self.project = conv_bn_relu(expand, cout, 1, relu=False)
        self.shortcut = conv_bn_relu(cin, cout, 1, stride, relu=False) if cin != cout or stride != 1 else None
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        h = self.project(self.act(self.se(self.depthwise(self.expand(x)))))
        return self.relu(h + identity)


class VideoNet(nn.Module):
    """features -> global average pool -> head. ``head_kind`` is "gemm" (one Linear), "mlp" (Linear,
    ReLU, Linear: X3D) or "conv1x1" (a 1x1x1 Conv producing class maps, then averaged: I3D)."""

    def __init__(self, features: nn.Module, feature_channels: int, num_classes: int, head_kind: str) -> None:
        super().__init__()
        self.features = features
        self.head_kind = head_kind
        self.feature_channels = feature_channels
        self.num_classes = num_classes
        if head_kind == "gemm":
            self.head = nn.Linear(feature_channels, num_classes)
        elif head_kind == "mlp":
            self.head = nn.Sequential(nn.Linear(feature_channels, 64), nn.ReLU(), nn.Linear(64, num_classes))
        elif head_kind == "conv1x1":
            self.head = nn.Conv3d(feature_channels, num_classes, 1)
        else:
            raise ValueError(head_kind)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        if self.head_kind == "conv1x1":
            return torch.flatten(nn.functional.adaptive_avg_pool3d(self.head(f), 1), 1)
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool3d(f, 1), 1))


# ----------------------------------------------------------------------------------------------------------
# The architectures. All reach [N, C, 8, 8, 8] last features from a 16x64x64 clip.
# ----------------------------------------------------------------------------------------------------------


def r3d_basic(k: int) -> VideoNet:
    return VideoNet(
        nn.Sequential(stem3d(16), BasicBlock(16, 16), BasicBlock(16, 32, (1, 2, 2))), 32, k, "gemm"
    )


def r3d_bottleneck(k: int) -> VideoNet:
    return VideoNet(
        nn.Sequential(stem3d(16), Bottleneck(16, 16, 32), Bottleneck(32, 32, 64, (1, 2, 2))), 64, k, "gemm"
    )


def resnext3d(k: int) -> VideoNet:
    return VideoNet(
        nn.Sequential(
            stem3d(16), Bottleneck(16, 32, 48, groups=8), Bottleneck(48, 64, 64, (1, 2, 2), groups=8)
        ),
        64,
        k,
        "gemm",
    )


def mfnet(k: int) -> VideoNet:
    return VideoNet(
        nn.Sequential(
            stem3d(16),
            MultiFibreUnit(16, 16, 16, 4, split="chunk"),
            MultiFibreUnit(16, 32, 32, 4, (1, 2, 2), split="slice"),
        ),
        32,
        k,
        "gemm",
    )


def i3d(k: int) -> VideoNet:
    return VideoNet(
        nn.Sequential(
            stem3d(16),
            Inception(16, 8, (8, 12), (4, 8), 4, separable=False),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)),
            Inception(32, 12, (12, 16), (4, 8), 12, separable=False),
        ),
        48,
        k,
        "conv1x1",
    )


def r2plus1d(k: int) -> VideoNet:
    stem = nn.Sequential(
        conv_bn_relu(CHANNELS, 16, (1, 5, 5), (1, 4, 4)), conv_bn_relu(16, 16, (3, 1, 1), (2, 1, 1))
    )
    return VideoNet(
        nn.Sequential(stem, R2Plus1dBlock(16, 16), R2Plus1dBlock(16, 32, (1, 2, 2))), 32, k, "gemm"
    )


def x3d(k: int) -> VideoNet:
    # X3D stem: spatial conv then a depthwise temporal conv; conv5 widens before the MLP head
    stem = nn.Sequential(
        conv_bn_relu(CHANNELS, 16, (1, 5, 5), (1, 4, 4)),
        conv_bn_relu(16, 16, (5, 1, 1), (2, 1, 1), groups=16),
    )
    features = nn.Sequential(
        stem,
        X3DBlock(16, 40, 16, se=True),
        X3DBlock(16, 40, 32, (1, 2, 2), se=False),
        conv_bn_relu(32, 64, 1),
    )
    return VideoNet(features, 64, k, "mlp")


def s3d(k: int) -> VideoNet:
    stem = SeparableConv(CHANNELS, 16, (2, 4, 4), k=5)
    features = nn.Sequential(
        stem,
        Inception(16, 8, (8, 12), (4, 8), 4, separable=True),
        nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)),
        Inception(32, 12, (12, 16), (4, 8), 12, separable=True),
    )
    return VideoNet(features, 48, k, "gemm")


ARCHITECTURES: dict[str, Callable[[int], VideoNet]] = {
    "r3d_basic": r3d_basic,
    "r3d_bottleneck": r3d_bottleneck,
    "resnext3d": resnext3d,
    "mfnet": mfnet,
    "i3d": i3d,
    "r2plus1d": r2plus1d,
    "x3d": x3d,
    "s3d": s3d,
}


# ----------------------------------------------------------------------------------------------------------
# Declared structure, from the module tree
# ----------------------------------------------------------------------------------------------------------


def conv_kind(kernel: tuple[int, ...], groups: int, in_channels: int) -> str:
    """The ConvKind value onnxcfp.graph.layers uses. Grouping wins over kernel shape: a depthwise 3x3x3
    is "depthwise", a grouped 1x3x3 is "grouped"; then 1x1x1 "pointwise", 1xkxk "spatial", kx1x1
    "temporal", else "3d"."""
    if len(kernel) == 2:
        return "2d"
    if groups > 1 and groups == in_channels:
        return "depthwise"
    if groups > 1:
        return "grouped"
    kt, kh, kw = kernel
    if kt == kh == kw == 1:
        return "pointwise"
    if kt == 1:
        return "spatial"
    if kh == kw == 1:
        return "temporal"
    return "3d"


def declared_structure(model: VideoNet) -> dict:
    kinds: Counter[str] = Counter()
    groups: Counter[str] = Counter()
    adds = concats = splits = 0
    for module in model.modules():
        if isinstance(module, nn.Conv3d):
            kinds[conv_kind(tuple(module.kernel_size), module.groups, module.in_channels)] += 1
            if module.groups > 1:
                groups[str(module.groups)] += 1
        if isinstance(module, Counted):
            adds += module.residual_adds
            concats += module.channel_concats
            splits += module.channel_splits
    return {
        "conv_kinds": dict(sorted(kinds.items())),
        "groups": dict(sorted(groups.items(), key=lambda kv: int(kv[0]))),
        "residual_adds": adds,
        "channel_concats": concats,
        "channel_splits": splits,
        "head": {
            "kind": model.head_kind,
            "num_classes": model.num_classes,
            "feature_channels": model.feature_channels,
        },
    }


# ----------------------------------------------------------------------------------------------------------
# Export and checks
# ----------------------------------------------------------------------------------------------------------


def finalize(model: onnx.ModelProto) -> onnx.ModelProto:
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def export_legacy(net: nn.Module, example: torch.Tensor) -> onnx.ModelProto:
    import io

    buffer = io.BytesIO()
    torch.onnx.export(
        net,
        (example,),
        buffer,
        dynamo=False,
        opset_version=LEGACY_OPSET,
        input_names=["clip"],
        output_names=["logits"],
        dynamic_axes={"clip": {0: "batch"}, "logits": {0: "batch"}},
        do_constant_folding=True,
    )
    return finalize(onnx.load_from_string(buffer.getvalue()))


def export_dynamo(net: nn.Module, example: torch.Tensor) -> onnx.ModelProto:
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.onnx.export(
        net,
        (example,),
        dynamo=True,
        opset_version=DYNAMO_OPSET,
        input_names=["clip"],
        output_names=["logits"],
        dynamic_shapes=({0: batch},),
        optimize=True,
        verbose=False,
    )
    return finalize(program.model_proto)


def ort_session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def max_abs_diff_vs_torch(net: nn.Module, model: onnx.ModelProto, layout: str = "NCTHW") -> float:
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(2, CHANNELS, FRAMES, SIZE, SIZE, generator=generator)
    with torch.no_grad():
        expected = net(x).numpy()
    feed = x.numpy() if layout == "NCTHW" else x.permute(0, 2, 3, 4, 1).contiguous().numpy()
    got = ort_session(model).run(None, {model.graph.input[0].name: feed})[0]
    return float(np.abs(got - expected).max())


def check_export_structure(model: onnx.ModelProto, declared: dict, name: str) -> None:
    """The export must hold the declared convs and concats (ops the exporters never fuse away)."""
    ops = Counter(node.op_type for node in model.graph.node)
    n_conv = sum(declared["conv_kinds"].values())
    if ops["Conv"] != n_conv:
        raise AssertionError(f"{name}: {ops['Conv']} Conv nodes exported, {n_conv} declared")
    if ops["Concat"] < declared["channel_concats"]:
        raise AssertionError(f"{name}: {ops['Concat']} Concat nodes, {declared['channel_concats']} declared")


# ----------------------------------------------------------------------------------------------------------
# Data and training
# ----------------------------------------------------------------------------------------------------------


def preprocess(frames: np.ndarray) -> np.ndarray:
    """uint8 [N,T,H,W,3] RGB -> float32 [N,3,T,H,W], ((x/255) - mean) / std (what the card declares)."""
    x = frames.astype(np.float32) / 255.0
    x = (x - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)
    return np.ascontiguousarray(x.transpose(0, 4, 1, 2, 3))


def cached_clips(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    from onnxcfp.datasets import make_clips

    WORK_DIR.mkdir(exist_ok=True)
    path = WORK_DIR / f"clips_n{n}_seed{seed}.npz"
    if path.exists():
        data = np.load(path)
        return data["frames"], data["labels"], tuple(str(c) for c in data["class_names"])
    clips = make_clips(n, seed=seed, frames=FRAMES, size=SIZE)
    np.savez(path, frames=clips.frames, labels=clips.labels, class_names=np.asarray(clips.class_names))
    return clips.frames, clips.labels, tuple(clips.class_names)


def motion_aware_init(net: nn.Module) -> None:
    """Make half the output channels of the first conv that spans time antisymmetric in time (a temporal
    derivative): they ignore the static background and distractor from the first step, so training does
    not idle at chance while the net discovers motion. The other half keep their random (appearance)
    init. Only the starting point changes; every weight is trained afterwards."""
    first = next(m for m in net.modules() if isinstance(m, nn.Conv3d) and m.kernel_size[0] > 1)
    with torch.no_grad():
        half = first.out_channels // 2
        w = first.weight[:half]
        first.weight[:half] = (w - w.flip(2)) / np.sqrt(2.0)


def run_one_cycle(
    net: nn.Module,
    frames: np.ndarray,
    labels: np.ndarray,
    epochs: int,
    peak_lr: float,
    rng: np.random.Generator,
    log: Callable[[str], None],
) -> None:
    # lr 5e-3 left every net at chance (loss stuck at ln 8); 2e-3 and below learn steadily
    optimiser = torch.optim.AdamW(net.parameters(), lr=peak_lr, weight_decay=1e-4)
    batch = 16
    steps = epochs * (len(labels) // batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=peak_lr, total_steps=steps, pct_start=0.2
    )
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.05)
    net.train()
    for epoch in range(epochs):
        order = rng.permutation(len(labels))
        correct = total = 0
        for start in range(0, len(order) - batch + 1, batch):
            idx = np.sort(order[start : start + batch])
            x = torch.from_numpy(preprocess(frames[idx]))
            y = torch.from_numpy(labels[idx].astype(np.int64))
            logits = net(x)
            loss = loss_fn(logits, y)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            correct += int((logits.argmax(1) == y).sum())
            total += len(idx)
        log(
            f"    epoch {epoch + 1}/{epochs}: train acc {correct / total:.3f} loss {float(loss.detach()):.3f}"
        )
    net.eval()


def torch_accuracy(net: nn.Module, frames: np.ndarray, labels: np.ndarray) -> float:
    net.eval()
    with torch.no_grad():
        predictions = [
            net(torch.from_numpy(preprocess(frames[i : i + 32]))).argmax(1).numpy()
            for i in range(0, len(labels), 32)
        ]
    return float((np.concatenate(predictions) == labels).mean())


def train(
    net: nn.Module,
    train_set: tuple[np.ndarray, np.ndarray],
    val_set: tuple[np.ndarray, np.ndarray],
    epochs: int,
    seed: int,
    log: Callable[[str], None],
) -> None:
    """One one-cycle schedule, then up to EXTRA_ROUNDS short low-lr rounds while the VALIDATION accuracy
    (its own seed, never the card's evaluation set, so the card's figure stays unbiased) is below
    TARGET_VAL_ACCURACY."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    motion_aware_init(net)
    run_one_cycle(net, *train_set, epochs, LEARNING_RATE, rng, log)
    for _ in range(EXTRA_ROUNDS):
        accuracy = torch_accuracy(net, *val_set)
        log(f"    validation accuracy {accuracy:.3f}")
        if accuracy >= TARGET_VAL_ACCURACY:
            return
        run_one_cycle(net, *train_set, EXTRA_EPOCHS, LEARNING_RATE * EXTRA_LR_FRACTION, rng, log)
    log(f"    validation accuracy {torch_accuracy(net, *val_set):.3f}")


def onnx_accuracy(model: onnx.ModelProto, frames: np.ndarray, labels: np.ndarray, layout: str) -> float:
    session = ort_session(model)
    name = model.graph.input[0].name
    correct = 0
    for start in range(0, len(labels), 32):
        x = preprocess(frames[start : start + 32])
        if layout == "NTHWC":
            x = np.ascontiguousarray(x.transpose(0, 2, 3, 4, 1))
        # every zoo export takes a symbolic batch, so clips run 32 at a time
        batch_pred = session.run(None, {name: x})[0].argmax(1)
        correct += int((batch_pred == labels[start : start + 32]).sum())
    return correct / len(labels)


# ----------------------------------------------------------------------------------------------------------
# The NTHWC model, written the way tf2onnx writes a Keras Conv3D net
# ----------------------------------------------------------------------------------------------------------


class TfStyleNet(nn.Module):
    """The torch twin of the helper-built NTHWC model (used to train its weights): three Conv-BN-ReLU,
    global mean, one dense layer. As tf2onnx does with Keras BatchNormalization after Conv3D, the ONNX
    file gets the BN folded into each conv's weight and bias (without BN this plain net idled at chance)."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(CHANNELS, 16, (3, 5, 5), (2, 4, 4), (1, 2, 2))
        self.conv2 = nn.Conv3d(16, 32, 3, (1, 2, 2), 1)
        self.conv3 = nn.Conv3d(32, 32, 3, 1, 1)
        self.bn1, self.bn2, self.bn3 = nn.BatchNorm3d(16), nn.BatchNorm3d(32), nn.BatchNorm3d(32)
        self.dense = nn.Linear(32, k)
        self.head_kind, self.num_classes, self.feature_channels = "matmul", k, 32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        h = torch.relu(self.bn2(self.conv2(h)))
        h = torch.relu(self.bn3(self.conv3(h)))
        return self.dense(h.mean(dim=(2, 3, 4)))

    def folded_convs(self) -> list[tuple[nn.Conv3d, np.ndarray, np.ndarray]]:
        """(conv, weight, bias), eval-mode BN folded in: y = g (conv(x) + b - m) / sqrt(v + eps) + beta."""
        folded = []
        for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)):
            scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().numpy().astype(np.float64)
            weight = conv.weight.detach().numpy().astype(np.float64) * scale[:, None, None, None, None]
            bias = (conv.bias.detach().numpy() - bn.running_mean.detach().numpy()) * scale
            bias = bias + bn.bias.detach().numpy()
            folded.append((conv, weight.astype(np.float32), bias.astype(np.float32)))
        return folded


def tf_style_declared(net: TfStyleNet) -> dict:
    declared = declared_structure(net)  # type: ignore[arg-type]
    declared["head"]["kind"] = "matmul"
    return declared


def build_tf_style_onnx(net: TfStyleNet) -> onnx.ModelProto:
    """NTHWC input; each Conv wrapped in Transpose NTHWC->NCTHW / NCTHW->NTHWC (tf2onnx's literal
    translation of a channels-last Conv3D); Relu and ReduceMean act in NTHWC; MatMul + Add head."""
    to_ncthw, to_nthwc = [0, 4, 1, 2, 3], [0, 2, 3, 4, 1]
    nodes, inits = [], []
    x = "input_1"
    for i, (conv, weight, bias) in enumerate(net.folded_convs(), start=1):
        prefix = f"model/conv3d_{i}"
        w = numpy_helper.from_array(weight, f"{prefix}/kernel")
        b = numpy_helper.from_array(bias, f"{prefix}/bias")
        inits += [w, b]
        pads = [int(p) for p in conv.padding]
        nodes += [
            helper.make_node(
                "Transpose", [x], [f"{prefix}__in"], name=f"{prefix}__transpose_in", perm=to_ncthw
            ),
            helper.make_node(
                "Conv",
                [f"{prefix}__in", w.name, b.name],
                [f"{prefix}/Conv3D"],
                name=f"{prefix}/Conv3D",
                kernel_shape=list(conv.kernel_size),
                strides=list(conv.stride),
                pads=pads + pads,
                dilations=[1, 1, 1],
                group=1,
            ),
            helper.make_node(
                "Transpose",
                [f"{prefix}/Conv3D"],
                [f"{prefix}__out"],
                name=f"{prefix}__transpose_out",
                perm=to_nthwc,
            ),
            helper.make_node("Relu", [f"{prefix}__out"], [f"{prefix}/Relu"], name=f"{prefix}/Relu"),
        ]
        x = f"{prefix}/Relu"
    axes = numpy_helper.from_array(np.asarray([1, 2, 3], np.int64), "model/global_average_pooling3d/axes")
    kernel = numpy_helper.from_array(
        net.dense.weight.detach().numpy().T.astype(np.float32).copy(), "model/dense/MatMul/ReadVariableOp:0"
    )
    bias = numpy_helper.from_array(
        net.dense.bias.detach().numpy().astype(np.float32), "model/dense/BiasAdd/ReadVariableOp:0"
    )
    inits += [axes, kernel, bias]
    nodes += [
        helper.make_node(
            "ReduceMean",
            [x, axes.name],
            ["model/global_average_pooling3d/Mean"],
            name="model/global_average_pooling3d/Mean",
            keepdims=0,
        ),
        helper.make_node(
            "MatMul",
            ["model/global_average_pooling3d/Mean", kernel.name],
            ["model/dense/MatMul"],
            name="model/dense/MatMul",
        ),
        helper.make_node("Add", ["model/dense/MatMul", bias.name], ["dense"], name="model/dense/BiasAdd"),
    ]
    graph = helper.make_graph(
        nodes,
        "tf_style_conv3d",
        [
            helper.make_tensor_value_info(
                "input_1", TensorProto.FLOAT, ["unk__batch", FRAMES, SIZE, SIZE, CHANNELS]
            )
        ],
        [helper.make_tensor_value_info("dense", TensorProto.FLOAT, ["unk__batch", net.num_classes])],
        initializer=inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="tf2onnx", producer_version="1.16.1"
    )
    return finalize(model)


# ----------------------------------------------------------------------------------------------------------
# Cards and the driver
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuiltModel:
    name: str
    architecture: str
    exporter: str
    model: onnx.ModelProto
    layout: str
    declared: dict
    max_abs_diff: float


def write_card(
    built: BuiltModel, classes: tuple[str, ...], accuracy: float | None, n_eval: int, trained: bool
) -> None:
    shape = (
        [1, CHANNELS, FRAMES, SIZE, SIZE] if built.layout == "NCTHW" else [1, FRAMES, SIZE, SIZE, CHANNELS]
    )
    card = {
        "name": built.name,
        "file": f"{built.name}.onnx",
        "architecture": built.architecture,
        "exporter": built.exporter,
        "input": {
            "name": built.model.graph.input[0].name,
            "layout": built.layout,
            "shape": shape,
            "dtype": "float32",
        },
        "preprocessing": {
            "size": [SIZE, SIZE],
            "resize": "shorter_side_center_crop",
            "scale": 255.0,
            "mean": list(MEAN),
            "std": list(STD),
            "channel_order": "RGB",
        },
        "classes": list(classes),
        "accuracy": {
            "held_out": None if accuracy is None else round(accuracy, 4),
            "n": n_eval,
            "seed": EVAL_SEED,
        },
        "trained": trained,
        "build_command": BUILD_COMMAND,
        "declared": built.declared,
        "export_check": {"max_abs_diff_vs_torch": built.max_abs_diff},
    }
    (MODELS_DIR / f"{built.name}.json").write_text(json.dumps(card, indent=2) + "\n")
    onnx.save(built.model, MODELS_DIR / f"{built.name}.onnx")


def export_all(arch: str, net: nn.Module, declared: dict) -> list[BuiltModel]:
    net.eval()
    example = torch.randn(1, CHANNELS, FRAMES, SIZE, SIZE)
    built = []
    if isinstance(net, TfStyleNet):
        model = build_tf_style_onnx(net)
        built.append(
            BuiltModel(
                f"{arch}_helper",
                arch,
                "helper",
                model,
                "NTHWC",
                declared,
                max_abs_diff_vs_torch(net, model, "NTHWC"),
            )
        )
    else:
        for exporter, export in (("legacy", export_legacy), ("dynamo", export_dynamo)):
            model = export(net, example)
            name = f"{arch}_{exporter}"
            check_export_structure(model, declared, name)
            built.append(
                BuiltModel(name, arch, exporter, model, "NCTHW", declared, max_abs_diff_vs_torch(net, model))
            )
    for b in built:
        if b.max_abs_diff > 1e-3:
            raise AssertionError(f"{b.name}: onnxruntime differs from torch by {b.max_abs_diff:.2e}")
    return built


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", action="store_true", help="train on onnxcfp.datasets before exporting")
    parser.add_argument("--only", nargs="*", default=None, help="architectures to build (default: all)")
    parser.add_argument("--n-train", type=int, default=2048)
    parser.add_argument("--n-val", type=int, default=320)
    parser.add_argument("--n-eval", type=int, default=480)
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help="(default: per arch)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (the machine is shared)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    def log(msg: str) -> None:
        print(msg, flush=True)

    names = [*ARCHITECTURES, "tfstyle"]
    if args.only:
        names = [n for n in names if n in args.only]
    if args.train:
        from onnxcfp.datasets import CLASS_NAMES

        classes = tuple(CLASS_NAMES)
        train_set = cached_clips(args.n_train, TRAIN_SEED)[:2]
        val_set = cached_clips(args.n_val, VAL_SEED)[:2]
        eval_frames, eval_labels, _ = cached_clips(args.n_eval, EVAL_SEED)
    else:
        try:
            from onnxcfp.datasets import CLASS_NAMES

            classes = tuple(CLASS_NAMES)
        except ImportError:
            classes = tuple(f"class_{i}" for i in range(6))
    all_names = [*ARCHITECTURES, "tfstyle"]
    for arch in names:
        index = all_names.index(arch)  # seeds follow the arch, not its position in --only
        torch.manual_seed(index)
        net = TfStyleNet(len(classes)) if arch == "tfstyle" else ARCHITECTURES[arch](len(classes))
        declared = tf_style_declared(net) if arch == "tfstyle" else declared_structure(net)
        n_params = sum(p.numel() for p in net.parameters())
        log(f"{arch}: {n_params} parameters")
        started = time.time()
        if args.train:
            epochs = args.epochs if args.epochs != DEFAULT_EPOCHS else EPOCHS_BY_ARCH.get(arch, args.epochs)
            train(net, train_set, val_set, epochs, seed=index, log=log)
        for built in export_all(arch, net, declared):
            accuracy = None
            if args.train:
                accuracy = onnx_accuracy(built.model, eval_frames, eval_labels, built.layout)
            write_card(built, classes, accuracy, args.n_eval if args.train else 0, args.train)
            size_kb = (MODELS_DIR / f"{built.name}.onnx").stat().st_size / 1024
            log(
                f"  {built.name}: {size_kb:.0f} KB, max|ort-torch| {built.max_abs_diff:.1e}, "
                f"accuracy {accuracy}, {time.time() - started:.0f}s"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
