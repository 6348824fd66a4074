"""The engine folder: the contract between build time (which writes it) and run time (which reads it).

Everything here is torch-free (numpy at most): the manifest and its checks, the UNet's I/O
declaration, the model names, the paths, the pure TensorRT decisions and the Winograd
transforms. Both `cmrt.build` and `cmrt.runtime` import it; it imports neither.
"""
