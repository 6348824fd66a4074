"""The UNet's I/O contract (cmrt/engine/io_spec.py)."""
from cmrt.engine.io_spec import BATCHED_INPUTS, io_spec, step_io_spec


def test_the_batched_inputs_are_those_whose_first_axis_is_the_batch():
    """A batch split into calls slices exactly these: every input of either graph with a batch axis."""
    unet = {"sample_size": 16, "in_channels": 3, "out_channels": 3, "num_class_embeds": 10}
    inputs = io_spec(unet)["inputs"] + step_io_spec(unet)["inputs"]
    assert {i["name"] for i in inputs if i["shape"][0] == "batch"} == BATCHED_INPUTS
    assert all("batch" not in i["shape"] for i in inputs if i["name"] not in BATCHED_INPUTS)
