"""``Explainer``: the whole data path for one model — load the graph once, then for each clip run one
session (logits, activations, gradients), select the pyramid, build its tubes, and on request render them.

    explainer = Explainer("models/r3d_basic_legacy.onnx", ExplainOptions(theta=0.6, depth=3))
    result = explainer.explain("clip.mp4")
    result.prediction, result.pyramid, result.tubes
    result.save("out/clip")
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from onnxcfp.errors import ConfigError, ModelLoadError
from onnxcfp.gradients import check_differentiable
from onnxcfp.graph import load_graph
from onnxcfp.pyramid import (
    Pyramid,
    SaliencyTube,
    build_pyramid,
    check_pyramid_options,
    kernel_tube,
    level_tubes,
    pyramid_tensors,
)
from onnxcfp.render import (
    DEFAULT_FORMATS,
    Prediction,
    RenderedExplanation,
    RenderOptions,
    render_explanation,
)
from onnxcfp.render.writers import write_json
from onnxcfp.runtime import CLASS_SCORES, RuntimeConfig, run
from onnxcfp.trace import Trace
from onnxcfp.video import FILL_MODES, Clip, Preprocessing, read_clip

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExplainOptions:
    """Everything that decides an explanation (and so goes into batch fingerprints and golden files).

    ``label``: a class index, a class name from the model card, or None for each clip's top-1 class.
    ``method``: "gradients" (class-specific at every depth) or "weights" (the paper's); a model whose
    backward graph cannot be built falls back to "weights" with a notice. ``kernel_tubes``: also build
    the tube of every kept kernel (the report's interactive graph shows them). ``fill``: how a clip shorter
    than the model's T is completed ("none" refuses it, "loop", "pad").
    """

    label: int | str | None = None
    theta: float = 0.6
    depth: int = 3
    top_n: int | None = None
    method: str = "gradients"
    residual: str = "branch"
    tube: str = "relevance"
    score: str = "logit"
    normalise: str = "max"
    device: str = "auto"
    threads: int | None = None  # onnxruntime intra-op threads (None: onnxruntime's default, all cores)
    kernel_tubes: bool = True
    fill: str = "none"
    formats: frozenset[str] = DEFAULT_FORMATS
    colormap: str = "viridis"

    def __post_init__(self) -> None:
        # Every value is checked here, by the stage that owns it, so a bad option fails before a model is
        # loaded or a batch starts (not once per clip).
        check_pyramid_options(**self.pyramid_params())
        if self.score not in CLASS_SCORES:
            raise ConfigError(f"score={self.score!r} is not one of {', '.join(map(repr, CLASS_SCORES))}")
        if self.fill not in FILL_MODES:
            raise ConfigError(f"fill={self.fill!r} is not one of {', '.join(map(repr, FILL_MODES))}")
        self.runtime_config()
        self.render_options()

    def pyramid_params(self) -> dict[str, Any]:
        """The options the pyramid stage takes, as keyword arguments of ``build_pyramid``."""
        return {
            "theta": self.theta,
            "depth": self.depth,
            "method": self.method,
            "residual": self.residual,
            "top_n": self.top_n,
            "normalise": self.normalise,
            "tube": self.tube,
        }

    def runtime_config(self) -> RuntimeConfig:
        """The session settings these options ask for (validates ``device`` and ``threads``)."""
        return RuntimeConfig(provider=self.device, intra_threads=self.threads)

    def render_options(self, formats: Sequence[str] | None = None) -> RenderOptions:
        """The render settings (validates ``formats`` and ``colormap``); ``formats`` overrides ours."""
        chosen = frozenset(formats) if formats is not None else self.formats
        return RenderOptions(formats=chosen, colormap=self.colormap)

    def fingerprint(self) -> dict[str, Any]:
        """The options that decide the outputs, as JSON-able values (formats sorted; threads left out)."""
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "threads"}
        out["formats"] = sorted(self.formats)
        return out


def read_card(model_path: Path) -> dict[str, Any] | None:
    """The model card beside an .onnx file (same stem, .json), or None when there is none."""
    card_path = model_path.with_suffix(".json")
    if not card_path.is_file():
        return None
    try:
        card = json.loads(card_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"model card {card_path} is not valid JSON ({err}); fix or remove it") from err
    return card if isinstance(card, dict) else None


@dataclass(frozen=True, eq=False)
class Explanation:
    """One clip's explanation: the prediction, the pyramid, its tubes, and what they were computed from."""

    clip: Clip
    trace: Trace
    pyramid: Pyramid
    tubes: tuple[SaliencyTube, ...]
    prediction: Prediction
    options: ExplainOptions
    model_source: str
    seconds: float
    notices: tuple[str, ...] = field(default=())

    @property
    def level_tubes(self) -> tuple[SaliencyTube, ...]:
        return tuple(t for t in self.tubes if t.node is None)

    def kept_per_layer(self) -> dict[str, int]:
        """How many kept kernels each layer has, over all levels."""
        counts: dict[str, int] = {}
        for level in range(1, len(self.pyramid.levels) + 1):
            for node in self.pyramid.nodes(level):
                counts[node.layer] = counts.get(node.layer, 0) + 1
        return counts

    def summary(self) -> dict[str, Any]:
        """Small JSON-able facts about the explanation (what a batch summary row holds)."""
        top1 = int(self.trace.predicted[0])
        return {
            "clip": self.clip.source,
            "predicted": top1,
            "predicted_name": self.prediction.top5[0].name if self.prediction.top5 else None,
            "target": self.prediction.index,
            "target_name": self.prediction.name,
            "score": self.prediction.score,
            "score_kind": self.prediction.score_kind,
            "method": self.pyramid.params.get("method"),
            "kept": self.kept_per_layer(),
            "levels": [level.size for level in self.pyramid.levels],
            "time": round(self.seconds, 6),
        }

    def save(
        self, out_dir: str | Path, formats: Sequence[str] | None = None, *, compat_json: bool = False
    ) -> RenderedExplanation:
        """Write the outputs (each file atomically) under ``out_dir``; ``formats`` ⊆ render.FORMATS."""
        rendered = render_explanation(
            out_dir,
            self.clip.overlay_frames,
            self.tubes,
            self.pyramid.to_json(),
            self.prediction,
            options=self.options.render_options(formats),
            clip_source=self.clip.source,
            model_source=self.model_source,
            source_frames=[int(i) for i in self.clip.frame_indices],
        )
        if compat_json:
            path = write_json(Path(out_dir) / "pyramid_compat.json", self.pyramid.to_compat_json())
            rendered = replace(rendered, files=(*rendered.files, path))
        return rendered


class Explainer:
    """Explains clips with one model. The graph, the tensor request and the session are built once, so
    explaining many clips costs one session run each."""

    def __init__(
        self,
        model: str | Path,
        options: ExplainOptions | None = None,
        *,
        preprocessing: Preprocessing | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        self.options = options or ExplainOptions()
        self.model_path = Path(model)
        self.graph = load_graph(self.model_path)
        if not self.graph.explainable:
            why = "; ".join(self.graph.problems) or "no classifier head was found"
            raise ConfigError(f"{self.model_path} cannot be explained: {why}")
        card = read_card(self.model_path)
        self.card = card
        self.preprocessing = preprocessing or (
            Preprocessing.from_card(card) if card is not None else self._preprocessing_from_graph()
        )
        names = class_names if class_names is not None else (card or {}).get("classes")
        self.class_names: tuple[str, ...] | None = tuple(names) if names else None
        self.resolve_label(self.options.label)  # a bad label fails here, not once per clip of a batch
        self.notices: tuple[str, ...] = ()
        opts = self.options
        self.request = pyramid_tensors(self.graph, opts.depth, opts.method, opts.residual)
        if opts.method == "gradients":
            assert self.graph.head is not None  # explainable
            problems = check_differentiable(self.graph.model, self.graph.head.logits, self.request.gradients)
            if problems:
                notice = f"gradients cannot be built for this model ({problems[0]}); using method='weights'"
                log.warning(notice)
                self.notices = (notice,)
                self.options = replace(opts, method="weights")
                self.request = pyramid_tensors(self.graph, opts.depth, "weights", opts.residual)
        self.config = self.options.runtime_config()

    def _preprocessing_from_graph(self) -> Preprocessing:
        """Without a card: resize to the model's static H×W and T, inputs scaled to [0, 1]."""
        vin = self.graph.video_input
        size = tuple(vin.dim(a) for a in "HW")
        frames = vin.dim("T")
        return Preprocessing(
            size=size if all(isinstance(s, int) for s in size) else None,
            frames=frames if isinstance(frames, int) else None,
            layout=vin.layout,
        )

    def resolve_label(self, label: int | str | None) -> int | None:
        """A class index from an index, a card class name, "top1" or None (None = each clip's top-1)."""
        if label is None or label == "top1":
            return None
        num_classes = self.graph.head.num_classes if self.graph.head is not None else 0
        if isinstance(label, str) and not label.lstrip("-").isdigit():
            if not self.class_names or label not in self.class_names:
                known = ", ".join(self.class_names or ()) or "none (the model has no card)"
                raise ConfigError(f"unknown class name {label!r}; known classes: {known}")
            return self.class_names.index(label)
        index = int(label)
        if not 0 <= index < num_classes:
            raise ConfigError(
                f"label {index} is out of range: the model has {num_classes} classes (0..{num_classes - 1})"
            )
        return index

    def load_clip(self, clip: Clip | np.ndarray | str | Path) -> Clip:
        """A Clip from a Clip, a video/frames-folder/.npy path, or uint8 RGB frames ``[T, H, W, 3]``."""
        if isinstance(clip, Clip):
            return clip
        if isinstance(clip, np.ndarray) and (clip.dtype != np.uint8 or clip.ndim != 4 or clip.shape[-1] != 3):
            raise ConfigError(
                f"an array clip must be uint8 RGB frames [T, H, W, 3]; got {clip.dtype} {clip.shape} "
                "(model-ready tensors go through onnxcfp.runtime.run)"
            )
        return read_clip(clip, self.preprocessing, fill=self.options.fill)

    def explain(self, clip: Clip | np.ndarray | str | Path, label: int | str | None = None) -> Explanation:
        """Explain one clip for ``label`` (default: the options' label, else the clip's top-1 class)."""
        start = time.perf_counter()
        opts = self.options
        loaded = self.load_clip(clip)
        target = self.resolve_label(label if label is not None else opts.label)
        trace = run(
            self.graph,
            loaded.tensor,
            activations=self.request.activations,
            gradients=self.request.gradients,
            target=target,
            score=opts.score,
            config=self.config,
        )
        pyramid = build_pyramid(
            self.graph, trace, label=target, class_names=self.class_names, **opts.pyramid_params()
        )
        tubes = level_tubes(pyramid, trace, opts.tube)
        if opts.kernel_tubes:
            tubes += [
                kernel_tube(pyramid, trace, node.layer, node.channel, node.level)
                for level in range(1, len(pyramid.levels) + 1)
                for node in pyramid.nodes(level)
            ]
        prediction = Prediction.from_logits(
            trace.logits[0], pyramid.class_index, self.class_names, score_kind=opts.score
        )
        return Explanation(
            clip=loaded,
            trace=trace,
            pyramid=pyramid,
            tubes=tuple(tubes),
            prediction=prediction,
            options=opts,
            model_source=str(self.model_path),
            seconds=time.perf_counter() - start,
            notices=self.notices,
        )
