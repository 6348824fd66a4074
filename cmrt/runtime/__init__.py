"""Run time: numpy + an engine backend. Importing this never imports torch or diffusers."""
from .loading import generate, load
from .pipeline import Pipeline, PipelineOutput

__all__ = ["Pipeline", "PipelineOutput", "generate", "load"]
