"""End-to-end evaluation of one model: every method's saliency volume on every clip, scored against the
ground-truth masks (localisation) and by deletion/insertion (faithfulness), side by side.

Per clip there is ONE session run with gradients (logits, the pyramid's tensors, the classifier features
F and d score/d F), from which the pyramids of both selection methods, their random same-size channel
subsets and both Grad-CAMs are read; occlusion and the deletion/insertion curves are batched forward runs.

Scores used (also stored on the result): the pyramid's "gradients" selection and Grad-CAM differentiate
``options.gradient_score`` of the target class (default the logit); deletion/insertion curves and
occlusion record the target's softmax PROBABILITY. The target is the clip's true label when the data has
one (``options.target="label"``), else the model's top-1 class.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from scipy.stats import binomtest

from onnxcfp.datasets import SyntheticClips
from onnxcfp.errors import ConfigError
from onnxcfp.evaluate.baselines import (
    centre_prior,
    gradcam,
    gradcam_per_frame,
    occlusion,
    random_channels,
    random_tube,
)
from onnxcfp.evaluate.data import (
    MaskedClip,
    MaskedClips,
    action_frames_of,
    from_synthetic,
    masks_for_model,
    source_masks,
)
from onnxcfp.evaluate.faithfulness import saliency_curves
from onnxcfp.evaluate.localisation import auroc, energy_in_mask, frame_mass, pointing_game
from onnxcfp.explain import Explainer, ExplainOptions
from onnxcfp.gradients import check_differentiable
from onnxcfp.pyramid import Level, Pyramid, SaliencyTube, build_pyramid, level_tubes, pyramid_tensors
from onnxcfp.pyramid.features import clip_channels, pooled
from onnxcfp.pyramid.tubes import level_tube_of_parts, tensor_view
from onnxcfp.runtime import CLASS_SCORES, RuntimeConfig, run
from onnxcfp.trace import Trace
from onnxcfp.volume import normalise01, resize_volume

# Method families, in table order. "random-channels" mirrors every requested pyramid method's level sets.
FAMILIES = (
    "pyramid-gradients",
    "pyramid-weights",
    "random-channels",
    "gradcam",
    "gradcam-frames",
    "occlusion",
    "random-tube",
    "centre-prior",
)
METRICS = ("energy", "pointing", "temporal_auroc", "deletion_auc", "insertion_auc")
HIGHER_IS_BETTER = {
    "energy": True,
    "pointing": True,
    "temporal_auroc": True,
    "deletion_auc": False,
    "insertion_auc": True,
}
TARGETS = ("label", "predicted")
PYRAMID_METHODS = ("gradients", "weights")


@dataclass(frozen=True)
class EvaluationOptions:
    """What is compared and how. ``methods`` ⊆ FAMILIES; ``theta``/``depth``/``residual``/``tube`` as in
    ExplainOptions; ``gradient_score`` the score the pyramid gradients and Grad-CAM differentiate
    ("logit" or "probability"); ``target`` "label" (the true class where known) or "predicted";
    ``steps``/``fill`` of the deletion/insertion curves; ``occlusion_patch``/``occlusion_stride`` in
    input voxels (T, H, W); ``seed`` seeds random tubes, random channel draws and curve tie-breaks."""

    methods: tuple[str, ...] = FAMILIES
    theta: float = 0.6
    depth: int = 3
    residual: str = "branch"
    tube: str = "relevance"
    gradient_score: str = "logit"
    target: str = "label"
    steps: int = 20
    fill: str = "mean"
    occlusion_patch: tuple[int, int, int] = (4, 16, 16)
    occlusion_stride: tuple[int, int, int] = (4, 16, 16)
    seed: int = 0
    runtime: RuntimeConfig = field(default_factory=lambda: RuntimeConfig(provider="cpu"))

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in FAMILIES]
        if unknown or not self.methods:
            raise ConfigError(f"unknown or no methods {unknown or []}: choose from {', '.join(FAMILIES)}")
        if self.gradient_score not in CLASS_SCORES:
            raise ConfigError(f"gradient_score must be 'logit' or 'probability', not {self.gradient_score!r}")
        if self.target not in TARGETS:
            raise ConfigError(f"target must be one of {', '.join(TARGETS)}, not {self.target!r}")
        if self.steps < 1:
            raise ConfigError(f"steps must be at least 1, got {self.steps}")


@dataclass(frozen=True)
class ClipScore:
    """One method's scores on one clip. ``level`` is the pyramid level (None for whole-map methods);
    ``channels`` the size of the channel set the map was built from (None for pixel-space methods);
    ``temporal_auroc`` is NaN when every (or no) frame of the clip shows the action."""

    clip: str
    method: str
    family: str
    level: int | None
    channels: int | None
    target: int
    label: int | None
    predicted: int
    target_probability: float
    mask_fraction: float
    energy: float
    pointing: float
    temporal_auroc: float
    deletion_auc: float
    insertion_auc: float

    def metric(self, name: str) -> float:
        return float(getattr(self, name))


@dataclass(frozen=True)
class MethodSummary:
    """Mean and sample standard deviation of each metric over the clips a method was scored on
    (NaN entries, e.g. an undefined temporal AUROC, are left out of that metric)."""

    method: str
    family: str
    n: int
    mean: dict[str, float]
    std: dict[str, float]


@dataclass(frozen=True)
class Comparison:
    """Paired comparison of two methods on the clips both were scored on: ``mean_difference`` is
    method − baseline (sign as the metric, so for deletion a NEGATIVE difference means better), ``wins``
    the fraction of clips where the method is strictly better, ``p_sign`` the two-sided sign test's
    p-value of wins vs losses (ties left out) against a coin toss."""

    method: str
    baseline: str
    metric: str
    n: int
    mean_difference: float
    wins: float
    p_sign: float

    @property
    def better(self) -> bool:
        return self.mean_difference > 0 if HIGHER_IS_BETTER[self.metric] else self.mean_difference < 0


@dataclass(frozen=True, eq=False)
class EvaluationResult:
    model: str
    data: str
    options: EvaluationOptions
    rows: tuple[ClipScore, ...]
    gradient_score: str  # what the pyramid gradients and Grad-CAM differentiate
    curve_score: str  # what deletion/insertion and occlusion record
    target_rule: str
    accuracy: float  # top-1 accuracy on the labelled clips (NaN without labels)
    seconds: float
    notices: tuple[str, ...] = ()

    @property
    def methods(self) -> tuple[str, ...]:
        """Method names in table order: each pyramid method's levels followed by their random channel
        subsets, then the other families in FAMILIES order (a level missing on the first clip keeps its
        place)."""
        return tuple(sorted(dict.fromkeys(r.method for r in self.rows), key=_table_key))

    def scores(self, method: str, metric: str) -> np.ndarray:
        return np.array([r.metric(metric) for r in self.rows if r.method == method], dtype=np.float64)

    def summary(self) -> tuple[MethodSummary, ...]:
        out = []
        for method in self.methods:
            rows = [r for r in self.rows if r.method == method]
            mean, std = {}, {}
            for metric in METRICS:
                v = np.array([r.metric(metric) for r in rows], dtype=np.float64)
                v = v[np.isfinite(v)]
                mean[metric] = float(v.mean()) if v.size else float("nan")
                std[metric] = float(v.std(ddof=1)) if v.size > 1 else 0.0 if v.size else float("nan")
            out.append(MethodSummary(method, rows[0].family, len(rows), mean, std))
        return tuple(out)

    def compare(self, method: str, baseline: str, metric: str) -> Comparison:
        """``method`` vs ``baseline`` on ``metric``, paired by clip."""
        a = {r.clip: r.metric(metric) for r in self.rows if r.method == method}
        b = {r.clip: r.metric(metric) for r in self.rows if r.method == baseline}
        if not a or not b:
            raise ConfigError(
                f"no scores for {method if not a else baseline!r}; known: {', '.join(self.methods)}"
            )
        pairs = np.array([(a[c], b[c]) for c in a if c in b], dtype=np.float64)
        pairs = pairs[np.isfinite(pairs).all(axis=1)] if pairs.size else pairs.reshape(0, 2)
        if pairs.shape[0] == 0:
            return Comparison(method, baseline, metric, 0, float("nan"), float("nan"), float("nan"))
        diff = pairs[:, 0] - pairs[:, 1]
        won = diff > 0 if HIGHER_IS_BETTER[metric] else diff < 0
        decided = int(np.count_nonzero(diff))
        p_sign = float(binomtest(int(won.sum()), decided, 0.5).pvalue) if decided else 1.0
        return Comparison(
            method, baseline, metric, int(diff.size), float(diff.mean()), float(won.mean()), p_sign
        )

    def clip_rows(self) -> list[dict[str, object]]:
        return [asdict(r) for r in self.rows]


# ---------------------------------------------------------------------------------------------- helpers


def _table_key(method: str) -> tuple[int, int, int, int]:
    """Sort key of a method name ("cfp-gradients L2", "random-ch/weights L1", "gradcam", ...)."""
    name, _, level = method.partition(" L")
    for i, kind in enumerate(PYRAMID_METHODS):
        if name in (f"cfp-{kind}", f"random-ch/{kind}"):
            return (0, i, int(name.startswith("random-ch")), int(level) if level.isdigit() else 0)
    # whole-map methods are named after their family
    return (1, FAMILIES.index(name) if name in FAMILIES else len(FAMILIES), 0, 0)


def _seed(*parts: int) -> int:
    """A 32-bit seed from several integers (each clip/level/tensor draws independently)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


def random_subset_tube(pyramid: Pyramid, level: Level, trace: Trace, kind: str, seed: int) -> SaliencyTube:
    """The level's tube rebuilt from random channels: in each tensor of the level, as many distinct
    channels as the level keeps there, drawn uniformly; the level's own coefficients (relevance weights
    for "relevance", multiplicities for "sum") are shuffled onto them, so only the CHOICE of channels
    differs; for "gradcam" the drawn channels' own pooled gradients weight them."""
    parts: list[np.ndarray] = []
    used = total = 0
    rng = np.random.default_rng(seed)
    for t_index, tensor in enumerate(level.tensors):
        x = tensor_view(pyramid, trace, tensor)
        channels, weights = level.channels_of(tensor)
        unique, inverse = np.unique(channels, return_inverse=True)
        if unique.size == 0:  # the level lists the tensor but keeps none of its channels: a zero part,
            parts.append(np.zeros(x.shape[1:]))  # as in level_tubes
            total += int(x.shape[0])
            continue
        drawn = random_channels(x.shape[0], unique.size, _seed(seed, t_index))
        if kind == "relevance":
            coef = np.bincount(inverse, weights=weights, minlength=unique.size)[rng.permutation(unique.size)]
        elif kind == "sum":
            coef = np.bincount(inverse, minlength=unique.size).astype(np.float64)[
                rng.permutation(unique.size)
            ]
        else:
            grad = tensor_view(pyramid, trace, tensor, gradient=True)
            coef = pooled(grad)[drawn]
        parts.append(np.tensordot(coef, x[drawn].astype(np.float64), axes=(0, 0)))
        used, total = used + int(unique.size), total + int(x.shape[0])
    return level_tube_of_parts(level, parts, "random channels", used, total, rectify=kind == "gradcam")


@dataclass(frozen=True)
class _Map:
    """One method's saliency on one clip, at clip resolution."""

    method: str
    family: str
    level: int | None
    channels: int | None
    saliency: np.ndarray


@dataclass(frozen=True, eq=False)
class PreparedClip:
    """A clip as the model sees it: input ``tensor`` ``[1, ...]``, ``mask`` bool ``[T, H, W]`` at that
    resolution, ``action`` bool ``[T]``, the traced run and the class explained."""

    tensor: np.ndarray
    mask: np.ndarray
    action: np.ndarray
    trace: Trace
    target: int


class ModelEvaluator:
    """Holds what is built once per model: graph, preprocessing, tensor requests, predict function.
    ``evaluate_model`` drives it; ``saliency_maps`` gives the maps themselves (for inspection)."""

    def __init__(self, model: str | Path, options: EvaluationOptions, data_classes: Sequence[str] | None):
        self.options = options
        self.explainer = Explainer(
            model,
            ExplainOptions(
                theta=options.theta,
                depth=options.depth,
                method="gradients",
                residual=options.residual,
                tube=options.tube,
                score=options.gradient_score,
                device=options.runtime.provider,
                kernel_tubes=False,
            ),
        )
        self.graph = self.explainer.graph
        head = self.graph.head
        assert head is not None  # the Explainer refuses models without one
        self.features = head.features
        self.num_classes = head.num_classes
        model_classes = self.explainer.class_names
        if data_classes is not None and model_classes is not None and tuple(data_classes) != model_classes:
            raise ConfigError(
                f"the data's classes {list(data_classes)} differ from the model card's "
                f"{list(model_classes)}; "
                "labels would name the wrong classes (evaluate with matching data, or target='predicted')"
            )
        notices = list(self.explainer.notices)
        methods = list(options.methods)
        gradients_ok = self.explainer.options.method == "gradients"
        if not gradients_ok and "pyramid-gradients" in methods:
            methods.remove("pyramid-gradients")
        if not head.linear and "pyramid-weights" in methods:
            # the paper's weights rule reads one linear layer's weights; an MLP head has none to read
            notices.append(f"pyramid-weights skipped: the classifier head is {head.kind!r}, not linear")
            methods.remove("pyramid-weights")
        if any(m in methods for m in ("gradcam", "gradcam-frames")):
            problems = check_differentiable(self.graph.model, head.logits, [self.features])
            if problems:
                notices.append(f"Grad-CAM skipped: gradients to the features cannot be built ({problems[0]})")
                methods = [m for m in methods if m not in ("gradcam", "gradcam-frames")]
        self.methods = tuple(methods)
        self.notices = tuple(notices)
        pyramids = [m for m in ("gradients", "weights") if f"pyramid-{m}" in self.methods]
        if "random-channels" in self.methods and not pyramids:
            # random subsets need level sets to mirror: use the default selection, not shown itself
            pyramids = ["gradients" if gradients_ok else "weights"]
        self.pyramid_methods = tuple(pyramids)
        acts: list[str] = []
        grads: list[str] = []
        for m in self.pyramid_methods:
            request = pyramid_tensors(self.graph, options.depth, m, options.residual)
            acts += request.activations
            grads += request.gradients
            if m == "gradients" or options.tube == "gradcam":
                grads += request.activations
        if any(m in self.methods for m in ("gradcam", "gradcam-frames")):
            acts.append(self.features)
            grads.append(self.features)
        self.activations = tuple(dict.fromkeys(acts))
        self.gradients = tuple(dict.fromkeys(grads))
        axis = self.graph.flow.channel_axis(self.features)
        self.feature_axis = 1 if axis is None else int(axis)
        self.layout = self.graph.video_input.layout

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Softmax probabilities ``[B, K]`` of a stack of model inputs (one batched run)."""
        return run(self.graph, batch, config=self.options.runtime).probabilities

    def maps(self, clip_index: int, trace: Trace, target: int, tensor: np.ndarray) -> Iterator[_Map]:
        opts = self.options
        size = tuple(int(tensor.shape[self.layout.index(a)]) for a in "THW")
        seed = opts.seed
        for method in self.pyramid_methods:
            pyramid = build_pyramid(
                self.graph,
                trace,
                label=target,
                theta=opts.theta,
                depth=opts.depth,
                method=method,
                residual=opts.residual,
                tube=opts.tube,
            )
            tubes = {t.level: t for t in level_tubes(pyramid, trace, opts.tube)}
            if f"pyramid-{method}" in self.methods:
                for lv, tube in tubes.items():
                    yield _Map(
                        f"cfp-{method} L{lv}", f"pyramid-{method}", lv, tube.num_channels, tube.to_clip(size)
                    )
            if "random-channels" in self.methods:
                for lv in tubes:
                    rand = random_subset_tube(
                        pyramid,
                        pyramid.level(lv),
                        trace,
                        opts.tube,
                        _seed(seed, clip_index, lv, PYRAMID_METHODS.index(method)),
                    )
                    yield _Map(
                        f"random-ch/{method} L{lv}",
                        "random-channels",
                        lv,
                        rand.num_channels,
                        rand.to_clip(size),
                    )
        if "gradcam" in self.methods or "gradcam-frames" in self.methods:
            a = clip_channels(trace.activations[self.features], 0, 1, self.feature_axis)
            g = clip_channels(trace.gradients[self.features], 0, 1, self.feature_axis)
            if "gradcam" in self.methods:
                yield _Map(
                    "gradcam",
                    "gradcam",
                    None,
                    int(a.shape[0]),
                    normalise01(resize_volume(gradcam(a, g), size)),
                )
            if "gradcam-frames" in self.methods:
                cam = gradcam_per_frame(a, g)
                yield _Map(
                    "gradcam-frames",
                    "gradcam-frames",
                    None,
                    int(a.shape[0]),
                    normalise01(resize_volume(cam, size)),
                )
        if "occlusion" in self.methods:
            occ = occlusion(
                self.predict,
                tensor,
                target,
                layout=self.layout,
                patch=opts.occlusion_patch,
                stride=opts.occlusion_stride,
                fill=opts.fill,
            )
            yield _Map("occlusion", "occlusion", None, None, occ)
        if "random-tube" in self.methods:
            yield _Map(
                "random-tube", "random-tube", None, None, random_tube(size, _seed(seed, clip_index, 101))
            )
        if "centre-prior" in self.methods:
            yield _Map("centre-prior", "centre-prior", None, None, centre_prior(size))

    def prepare(self, clip: MaskedClip) -> PreparedClip:
        """Read the clip as the model sees it, bring its masks along, and run the one traced session."""
        opts = self.options
        loaded = self.explainer.load_clip(clip.source)
        tensor = loaded.tensor
        size_hw = (int(tensor.shape[self.layout.index("H")]), int(tensor.shape[self.layout.index("W")]))
        src_masks = source_masks(clip, loaded.frame_indices, loaded.frames.shape[1:3])
        mask = masks_for_model(src_masks, loaded, size_hw)
        if not mask.any():
            raise ConfigError(
                f"clip {clip.name}: the ground-truth mask is empty on every frame the model sees; "
                "give masks that mark the actor"
            )
        if clip.label is not None and not 0 <= clip.label < self.num_classes:
            raise ConfigError(
                f"clip {clip.name}: label {clip.label} is out of range for a model of "
                f"{self.num_classes} classes"
            )
        wanted = clip.label if opts.target == "label" and clip.label is not None else None
        trace = run(
            self.graph,
            tensor,
            activations=self.activations,
            gradients=self.gradients,
            target=wanted,
            score=opts.gradient_score,
            config=opts.runtime,
        )
        if wanted is not None:
            target = wanted
        elif trace.target is not None:
            target = int(trace.target[0])
        else:
            target = int(trace.predicted[0])
        return PreparedClip(
            tensor=tensor,
            mask=mask,
            action=action_frames_of(clip, loaded.frame_indices, mask),
            trace=trace,
            target=target,
        )

    def saliency_maps(self, clip: MaskedClip, clip_index: int = 0) -> dict[str, np.ndarray]:
        """Every method's saliency ``[T, H, W]`` at the model input's resolution, by method name."""
        prepared = self.prepare(clip)
        return {
            m.method: m.saliency
            for m in self.maps(clip_index, prepared.trace, prepared.target, prepared.tensor)
        }

    def evaluate_clip(self, clip_index: int, clip: MaskedClip) -> list[ClipScore]:
        opts = self.options
        prepared = self.prepare(clip)
        tensor, mask, action, trace, target = (
            prepared.tensor,
            prepared.mask,
            prepared.action,
            prepared.trace,
            prepared.target,
        )
        predicted = int(trace.predicted[0])
        probability = float(trace.probabilities[0, target])
        mask_fraction = float(mask.mean())
        rows = []
        # Identical maps get identical curves (e.g. per-frame Grad-CAM equals Grad-CAM whenever the head
        # pools F globally, as d score/d F is then the same at every position): run them once.
        curve_cache: dict[bytes, tuple[float, float]] = {}
        for m in self.maps(clip_index, trace, target, tensor):
            sal = np.asarray(m.saliency, dtype=np.float64)
            key = hashlib.sha1(np.ascontiguousarray(sal).tobytes()).digest()
            if key not in curve_cache:
                curves = saliency_curves(
                    self.predict,
                    tensor,
                    sal,
                    target,
                    layout=self.layout,
                    steps=opts.steps,
                    fill=opts.fill,
                    seed=_seed(opts.seed, clip_index, 7),
                )
                curve_cache[key] = (curves["deletion"].auc, curves["insertion"].auc)
            deletion_auc, insertion_auc = curve_cache[key]
            temporal = auroc(frame_mass(sal), action) if 0 < action.sum() < action.size else float("nan")
            rows.append(
                ClipScore(
                    clip=clip.name,
                    method=m.method,
                    family=m.family,
                    level=m.level,
                    channels=m.channels,
                    target=target,
                    label=clip.label,
                    predicted=predicted,
                    target_probability=probability,
                    mask_fraction=mask_fraction,
                    energy=energy_in_mask(sal, mask),
                    pointing=pointing_game(sal, mask).rate,
                    temporal_auroc=temporal,
                    deletion_auc=deletion_auc,
                    insertion_auc=insertion_auc,
                )
            )
        return rows


def evaluate_model(
    model: str | Path,
    clips: SyntheticClips | MaskedClips,
    methods: Sequence[str] | None = None,
    options: EvaluationOptions | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> EvaluationResult:
    """Score every method of ``methods`` (default ``options.methods``, i.e. all FAMILIES) on every clip
    of ``clips`` (``onnxcfp.datasets.make_clips`` output or ``read_masked_clips``) with the model at
    ``model``. ``progress(done, total)`` is called after each clip."""
    opts = options or EvaluationOptions()
    if methods is not None:
        opts = replace(opts, methods=tuple(methods))
    data = from_synthetic(clips) if isinstance(clips, SyntheticClips) else clips
    if len(data) == 0:
        raise ConfigError("no clips to evaluate: give at least one clip")
    start = time.perf_counter()
    evaluator = ModelEvaluator(model, opts, data.class_names)
    rows: list[ClipScore] = []
    for i, clip in enumerate(data.clips):
        rows.extend(evaluator.evaluate_clip(i, clip))
        if progress is not None:
            progress(i + 1, len(data))
    per_clip = {r.clip: r for r in rows}
    labelled = [r for r in per_clip.values() if r.label is not None]
    accuracy = float(np.mean([r.predicted == r.label for r in labelled])) if labelled else float("nan")
    return EvaluationResult(
        model=str(model),
        data=data.origin,
        options=opts,
        rows=tuple(rows),
        gradient_score=opts.gradient_score,
        curve_score="probability",
        target_rule="true label" if opts.target == "label" and labelled else "top-1 prediction",
        accuracy=accuracy,
        seconds=time.perf_counter() - start,
        notices=evaluator.notices,
    )
