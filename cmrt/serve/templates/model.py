"""Triton Python-backend model for cmrt (written by `cmrt triton-repo` and `cmrt serve`).

Inputs per sample: `seed` INT64 [1]; `class_label` INT64 [1] (optional: drawn from the seed
when absent; rejected for unconditional models); `num_inference_steps` INT32 [1]
(optional: the server's default schedule otherwise). Output: `image` UINT8 [H, W, 3].

The UNet runs either in this process through cmrt's runtime (parameter unet=inprocess:
ONNX Runtime or TensorRT, needs `onnxruntime` in this Python) or in another Triton model
through BLS (unet=triton: the `cmrt_unet` model served by Triton's ONNX Runtime backend,
which the official tritonserver container has; this process then needs only numpy).
The cmrt runtime is imported from the copy next to this file when there is one, so the
official container needs no `pip install`.
"""
import json
import os
import sys
import time

import numpy as np
import triton_python_backend_utils as pb_utils

HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.isdir(os.path.join(HERE, "cmrt")):
    sys.path.insert(0, HERE)


class TritonUnet:
    """A cmrt backend whose `run` is a BLS call to the Triton model holding the UNet."""

    name = "triton-bls"

    def __init__(self, model_name, io_spec):
        self.model_name = model_name
        self.device = model_name
        self.inputs = [i["name"] for i in io_spec["inputs"]]
        self.output = io_spec["outputs"][0]["name"]

    def run(self, sample, timestep, class_labels=None):
        b = sample.shape[0]
        feeds = [np.ascontiguousarray(sample, dtype=np.float32), np.asarray(timestep, np.float32).reshape(b, 1)]
        if class_labels is not None:
            feeds.append(np.asarray(class_labels, np.int64).reshape(b, 1))
        tensors = [pb_utils.Tensor(name, arr) for name, arr in zip(self.inputs, feeds)]
        request = pb_utils.InferenceRequest(model_name=self.model_name, requested_output_names=[self.output], inputs=tensors)
        response = request.exec()
        if response.has_error():
            raise RuntimeError(f"{self.model_name}: {response.error().message()}")
        return pb_utils.get_output_tensor_by_name(response, self.output).as_numpy()


def _error(message, invalid):
    # (pb_utils' C++ types are attached after this module is imported: look them up here)
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None) if invalid else None
    if code is not None:  # Python backend >= 23.xx: HTTP 400 / gRPC INVALID_ARGUMENT
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message))


class TritonPythonModel:
    def initialize(self, args):
        # Cold start is where a new replica's time goes: `load_seconds` records initialize's parts
        # (cmrt import, the load's own parts, the handler) and the log line says them.
        t0 = time.perf_counter()
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        self.logger = pb_utils.Logger
        import cmrt
        from cmrt.engine.manifest import parse_manifest
        from cmrt.runtime.pipeline import Pipeline
        from cmrt.serve.handler import INPUTS, Handler, RequestError, ServeSettings

        t_import = time.perf_counter()

        self.inputs = INPUTS
        self.RequestError = RequestError
        engine = params.get("engine_dir") or "engine"
        if not os.path.isabs(engine):
            engine = os.path.join(HERE, engine)
        mode = params.get("unet", "inprocess")
        if mode == "inprocess":
            device = params.get("device", "auto") or "auto"
            if args.get("model_instance_kind") == "GPU":
                # one stub process per instance: pin it to its GPU before CUDA starts
                os.environ["CUDA_VISIBLE_DEVICES"] = str(args["model_instance_device_id"])
                device = "cuda"
            threads = params.get("threads", "")
            warmup = [int(b) for b in params.get("warmup", "").split(",") if b]
            warmed = f", warmed up batch sizes {warmup}" if warmup else ""
            from cmrt.runtime.loading import load

            pipe = load(
                engine,
                backend=params.get("backend", "auto") or "auto",
                device=device,
                precision=params.get("precision") or None,
                threads=int(threads) if threads else None,
                warmup=warmup or None,  # before the model reports ready
            )
        elif mode == "triton":
            warmed = ""  # Triton warms up cmrt_unet itself (its config's model_warmup)
            # the folder holds the manifest only (the graph is cmrt_unet's): its own checks, no files
            manifest = parse_manifest(engine)
            precision = params.get("precision") or manifest.precisions[0]
            pipe = Pipeline(manifest, TritonUnet(params.get("unet_model", "cmrt_unet"), manifest.io_spec(precision)))
        else:
            raise pb_utils.TritonModelException(f"parameter unet must be 'inprocess' or 'triton', got {mode!r}")
        t_load = time.perf_counter()
        self.handler = Handler(pipe, ServeSettings.from_params(params))
        t_end = time.perf_counter()
        self.load_seconds = {"import": t_import - t0, "load": t_load - t_import, "handler": t_end - t_load, "initialize": t_end - t0}
        self.load_seconds.update({f"load.{k}": v for k, v in (getattr(pipe, "load_seconds", None) or {}).items()})
        self.logger.log_info(
            f"cmrt model {args['model_instance_name']}: {pipe!r}, unet={mode}, cmrt from {os.path.dirname(cmrt.__file__)}{warmed}; "
            "initialize " + ", ".join(f"{k} {v:.2f} s" for k, v in self.load_seconds.items())
        )

    def execute(self, requests):
        parsed = []
        for request in requests:
            inputs = {}
            for name in self.inputs:
                t = pb_utils.get_input_tensor_by_name(request, name)
                inputs[name] = None if t is None else t.as_numpy()
            try:
                parsed.append(self.handler.parse(inputs))
            except self.RequestError as e:
                parsed.append(e)
        responses = []
        for result in self.handler.run(parsed):
            if isinstance(result, Exception):
                responses.append(_error(str(result), isinstance(result, self.RequestError)))
            else:
                responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("image", result)]))
        return responses

    def finalize(self):
        self.handler = None
