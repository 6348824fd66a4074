"""cmrt: OpenAI Consistency Models, fast, from a torch-free runtime.

    import cmrt
    pipe = cmrt.load("engines/cd_imagenet64_l2")   # built by `cmrt build cd_imagenet64_l2`
    image = pipe(timesteps=[22, 0], seed=0).images[0]
"""
from ._version import __version__

__all__ = ["Pipeline", "PipelineOutput", "__version__", "generate", "load"]


def __getattr__(name):
    # Lazy so that `import cmrt` stays cheap (no numpy/onnxruntime until first use).
    if name in ("load", "generate", "Pipeline", "PipelineOutput"):
        from . import runtime

        return getattr(runtime, name)
    raise AttributeError(f"module 'cmrt' has no attribute {name!r}")
