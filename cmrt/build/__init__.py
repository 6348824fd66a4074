"""Build time: load a checkpoint with torch + diffusers, trace its UNet to ONNX, build TensorRT engines,
and write the engine folder that `cmrt.runtime` reads.

Never imported by `cmrt` or a generation; the run time reaches it only through `cmrt.load`
building a missing folder (cmrt/runtime/loading.py), and the CLI's `build` and `demo`.
"""
