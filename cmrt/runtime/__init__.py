"""Run time: numpy + an engine backend. Importing it never imports torch, diffusers or cmrt.build.

`load`, `generate`, `Pipeline` and `PipelineOutput` are resolved on first use, so that
importing one submodule (a backend, the selection rules) does not open the others.
"""
__all__ = ["Pipeline", "PipelineOutput", "generate", "load"]


def __getattr__(name):
    if name in ("load", "generate"):
        from . import loading

        return getattr(loading, name)
    if name == "Pipeline":
        from .pipeline import Pipeline

        return Pipeline
    if name == "PipelineOutput":
        from .postprocess import PipelineOutput

        return PipelineOutput
    raise AttributeError(f"module 'cmrt.runtime' has no attribute {name!r}")
