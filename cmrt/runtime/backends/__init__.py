"""Engine backends: each runs the UNet on fixed-contract fp32 inputs and returns fp32 outputs.

A backend is any object with `run(sample, timestep, class_labels) -> np.ndarray`, a `name`
and a `device`; the pipeline never looks further inside, except for two optional parts:

- `warmup(batch_sizes)`: does before the first request what the first call at each batch
  size would pay for (`cmrt.load(..., warmup=[1, 4])`); without it the pipeline makes one
  `run` with zeros per batch size.
- `step_graph` (True) with `run_steps(sample, timesteps, class_labels, coefs, renoise,
  on_step=None) -> x_0`: the backend runs every step of a generation through its step graph
  (cmrt/build/step_graph.py), from the numpy scheduler's per-step timesteps, constants
  (`StepArrays.coefs`) and scaled noise terms ([steps, B, C, H, W], None for one step);
  `on_step(i, x)` is called after each step when given. Such a backend also has a `warmup`.
"""
