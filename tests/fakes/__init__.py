"""Stand-ins for what the CPU machines lack: GPU environments, TensorRT, cuda-bindings."""
