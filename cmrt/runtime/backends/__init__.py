"""Engine backends: each runs the UNet on fixed-contract fp32 inputs and returns fp32 outputs.

A backend is any object with `run(sample, timestep, class_labels) -> np.ndarray`, a `name`
and a `device`; the pipeline never looks further inside.
"""
