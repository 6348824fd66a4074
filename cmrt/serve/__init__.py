"""Serving cmrt on Triton Inference Server.

- `cmrt serve MODEL|DIR`: `server.serve` / `server.TritonServer`, the tritonserver that
  nvidia-pytriton ships (`pip install 'cmrt[serve]'`), one engine folder, model `cmrt`;
- `cmrt triton-repo MODEL|DIR --out REPO`: `triton_repo.write_repository`, a model
  repository for the official Triton container;
- `cmrt.serve.client.Client`: a numpy-only HTTP client (gRPC through tritonclient).

Nothing here imports pytriton, tritonclient or torch at import time.
"""
from .handler import Handler, RequestError, ServeSettings

__all__ = ["Handler", "RequestError", "ServeSettings"]
