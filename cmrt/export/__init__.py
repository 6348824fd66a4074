"""Build-time code: load a checkpoint with torch + diffusers and trace its UNet to ONNX.

Never imported by `cmrt` or `cmrt.runtime`; only `cmrt build` and the tests reach it.
"""
