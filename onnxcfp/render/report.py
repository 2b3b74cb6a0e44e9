"""``report.html``: one self-contained page (assets inlined as data URIs, a Content-Security-Policy that
forbids any network load). Everything shown comes from a JSON blob the page renders with ``textContent``,
so class and file names can never become markup; the title is HTML-escaped on the server side."""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from importlib import resources
from typing import Any

from onnxcfp.render.writers import json_for_script

_TEMPLATE_SLOT = re.compile(r"\{\{(TITLE|DATA)\}\}")


def load_template() -> str:
    return resources.files("onnxcfp.render").joinpath("templates/report.html").read_text(encoding="utf-8")


def report_html(title: str, data: Mapping[str, Any]) -> str:
    """The page for ``data`` (see ``build_report_data`` in ``onnxcfp.render``). One substitution pass,
    so text inside the data can never be mistaken for a template slot."""
    values = {"TITLE": html.escape(title, quote=True), "DATA": json_for_script(data)}
    return _TEMPLATE_SLOT.sub(lambda m: values[m.group(1)], load_template())


def trim_pyramid(pyramid: Mapping[str, Any], max_nodes_per_level: int) -> dict[str, Any]:
    """The levels of a pyramid.json dict with at most ``max_nodes_per_level`` nodes each (the most
    relevant, JSON order kept), parents restricted to nodes still shown; ``hidden`` counts the rest."""
    levels = []
    shown: set[str] = set()
    for level in pyramid.get("levels", []):
        nodes = list(level.get("nodes", []))
        order = sorted(range(len(nodes)), key=lambda i: -float(nodes[i].get("relevance") or 0.0))
        keep = sorted(order[:max_nodes_per_level])
        kept = []
        for i in keep:
            n = nodes[i]
            kept.append(
                {
                    "id": str(n["id"]),
                    "layer": str(n.get("layer", "")),
                    "channel": int(n.get("channel", -1)),
                    "score": float(n.get("score") or 0.0),
                    "relevance": float(n.get("relevance") or 0.0),
                    "parents": [
                        {"node": str(p["node"]), "score": float(p.get("score") or 0.0)}
                        for p in n.get("parents", [])
                        if str(p["node"]) in shown
                    ],
                }
            )
        shown |= {k["id"] for k in kept}
        levels.append(
            {
                "level": int(level.get("level", len(levels) + 1)),
                "shape": list(level.get("shape", [])),
                "nodes": kept,
                "hidden": len(nodes) - len(kept),
            }
        )
    return {"levels": levels}
