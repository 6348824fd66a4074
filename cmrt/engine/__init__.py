"""Engine folders: what `cmrt build` writes and the runtime reads.

`manifest` is torch-free and shared with the runtime; `build` (which needs torch) is only
imported by the CLI's build command.
"""
