"""Which step graph of an engine folder a backend runs (the graphs: cmrt/build/step_graph.py).

Every graph in a folder has its step graph beside it, recorded under the graph's manifest
entry as `step` (file, I/O names, the order of its constants, validation): the plain graph
of each precision in `onnx[precision]["step"]`, the Winograd CPU graph in
`onnx["fp32"]["winograd"]["step"]`. Folders built before step graphs existed have none.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import EngineFolderError
from .manifest import Manifest


def has_step_graph(manifest: Manifest, precision: str) -> bool:
    """Whether the folder has a step graph of its `precision` plain graph."""
    return precision in manifest.data["onnx"] and bool(manifest.data["onnx"][precision].get("step"))


def step_graph(manifest: Manifest, precision: str, winograd: bool | None = False) -> tuple[Path, dict[str, Any], dict[str, Any] | None]:
    """(path, step record, Winograd record or None) of the step graph of the graph ONNX Runtime
    would run: `winograd` as in `Manifest.cpu_graph` (None: the build's choice; False, the
    default: the plain graph, what GPU backends run). EngineFolderError when there is none."""
    _, wino = manifest.cpu_graph(precision, winograd)
    record = (wino or manifest.onnx_entry(precision)).get("step")
    if not record:
        graph = "Winograd " if wino else ""
        raise EngineFolderError(
            f"engine folder {manifest.folder} has no step graph of its {graph}{precision} graph (it was built by an older "
            "cmrt); rebuild it with `cmrt build`, or load it with step_graph=False"
        )
    return manifest.folder / record["file"], dict(record), wino
