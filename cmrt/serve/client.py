"""A small client for `cmrt serve` (and any Triton serving a `cmrt triton-repo` repository).

    from cmrt.serve.client import Client
    client = Client("http://127.0.0.1:8000")
    images = client.generate(seeds=[0, 1, 2], class_labels=[3, 3, 3])   # uint8 [3, H, W, 3]

HTTP needs only numpy: it speaks the KServe v2 protocol with Triton's binary-tensor
extension through urllib. `grpc://host:port` URLs use `tritonclient[grpc]`.
Image i is what `cmrt.load(ENGINE)(seed=seeds[i], class_labels=..., output_type="np")`
makes, rounded to uint8 as the PIL output is.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any, Sequence

import numpy as np

_DTYPES = {"INT64": np.int64, "INT32": np.int32, "UINT8": np.uint8, "FP32": np.float32, "FP16": np.float16}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


class ServerError(RuntimeError):
    """The server answered with an error: `status` (HTTP code, or the gRPC status name) and its message."""

    def __init__(self, status: Any, message: str):
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


def encode_request(inputs: dict[str, np.ndarray], outputs: Sequence[str] = ("image",)) -> tuple[bytes, int]:
    """A binary-tensor inference request body and its JSON header length."""
    header: dict[str, Any] = {"inputs": [], "outputs": [{"name": n, "parameters": {"binary_data": True}} for n in outputs]}
    blobs = []
    for name, arr in inputs.items():
        arr = np.ascontiguousarray(arr)
        if arr.dtype not in _NAMES:
            raise TypeError(f"input {name!r}: dtype {arr.dtype} is not supported here")
        blob = arr.tobytes()
        header["inputs"].append(
            {"name": name, "shape": list(arr.shape), "datatype": _NAMES[arr.dtype], "parameters": {"binary_data_size": len(blob)}}
        )
        blobs.append(blob)
    head = json.dumps(header).encode()
    return head + b"".join(blobs), len(head)


def decode_response(body: bytes, header_length: int | None) -> dict[str, np.ndarray]:
    """Outputs of an inference response, binary or JSON."""
    head = json.loads(body[:header_length] if header_length else body)
    out, offset = {}, header_length or 0
    for o in head.get("outputs", []):
        dtype = _DTYPES[o["datatype"]]
        size = o.get("parameters", {}).get("binary_data_size")
        if size is not None:
            arr = np.frombuffer(body[offset : offset + size], dtype=dtype).reshape(o["shape"])
            offset += size
        else:
            arr = np.asarray(o["data"], dtype=dtype).reshape(o["shape"])
        out[o["name"]] = arr
    return out


class Client:
    """`url`: http://host:port (default scheme) or grpc://host:port; `model`: the Triton model name."""

    def __init__(self, url: str = "http://127.0.0.1:8000", model: str = "cmrt", timeout: float = 120.0):
        if "://" not in url:
            url = "http://" + url
        scheme, _, rest = url.partition("://")
        if scheme not in ("http", "grpc"):
            raise ValueError(f"server URL must start with http:// or grpc://, got {url!r}")
        self.scheme = scheme
        self.address = rest.rstrip("/")
        self.url = f"{scheme}://{self.address}"
        self.model = model
        self.timeout = timeout
        self._grpc = None
        self._config: dict | None = None

    def __repr__(self) -> str:
        return f"Client({self.url!r}, model={self.model!r})"

    # --- HTTP ----------------------------------------------------------------------------
    def _http(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        req = urllib.request.Request(f"http://{self.address}{path}", data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            data = e.read()
            try:
                message = json.loads(data).get("error", data.decode(errors="replace"))
            except (json.JSONDecodeError, AttributeError):
                message = data.decode(errors="replace")
            raise ServerError(e.code, message) from None
        except urllib.error.URLError as e:
            raise ServerError("unreachable", f"cannot reach {self.url}: {e.reason}") from None

    def ready(self) -> bool:
        """The model is loaded and the server accepts requests."""
        if self.scheme == "grpc":
            try:
                return bool(self._grpc_client().is_model_ready(self.model))
            except Exception:
                return False
        try:
            return self._http("GET", f"/v2/models/{self.model}/ready")[0] == 200
        except (ServerError, urllib.error.URLError, OSError):
            return False

    def config(self) -> dict:
        """The model's Triton configuration (max_batch_size, inputs, outputs, ...)."""
        if self._config is None:
            if self.scheme == "grpc":
                self._config = self._grpc_client().get_model_config(self.model, as_json=True)["config"]
                self._config["max_batch_size"] = int(self._config.get("max_batch_size", 0))
            else:
                self._config = json.loads(self._http("GET", f"/v2/models/{self.model}/config")[2])
        return self._config

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One inference request; arrays carry the batch dimension first."""
        if self.scheme == "grpc":
            return self._infer_grpc(inputs)
        body, n = encode_request(inputs)
        headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(n)}
        _, rheaders, data = self._http("POST", f"/v2/models/{self.model}/infer", body, headers)
        length = {k.lower(): v for k, v in rheaders.items()}.get("inference-header-content-length")
        return decode_response(data, int(length) if length is not None else None)

    # --- gRPC ----------------------------------------------------------------------------
    def _grpc_client(self):
        if self._grpc is None:
            try:
                import tritonclient.grpc as grpcclient
            except ImportError as e:
                raise ImportError("grpc:// URLs need tritonclient: `pip install 'tritonclient[grpc]'`") from e
            self._grpc = grpcclient.InferenceServerClient(self.address)
        return self._grpc

    def _infer_grpc(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        tensors = []
        for name, arr in inputs.items():
            arr = np.ascontiguousarray(arr)
            t = grpcclient.InferInput(name, list(arr.shape), _NAMES[arr.dtype])
            t.set_data_from_numpy(arr)
            tensors.append(t)
        try:
            result = self._grpc_client().infer(
                self.model, tensors, outputs=[grpcclient.InferRequestedOutput("image")], client_timeout=self.timeout
            )
        except InferenceServerException as e:
            raise ServerError(e.status(), e.message()) from None
        return {"image": result.as_numpy("image")}

    # --- images --------------------------------------------------------------------------
    def generate(
        self,
        seeds: int | Sequence[int],
        class_labels: int | Sequence[int] | None = None,
        num_inference_steps: int | Sequence[int] | None = None,
    ) -> np.ndarray:
        """uint8 images [B, H, W, 3], one per seed; requests are split at the model's max batch."""
        seeds_arr = np.atleast_1d(np.asarray(seeds, dtype=np.int64))
        b = seeds_arr.shape[0]

        def column(value, dtype, name):
            if value is None:
                return None
            arr = np.atleast_1d(np.asarray(value))
            if arr.shape[0] == 1 and b > 1:
                arr = np.repeat(arr, b)
            if arr.ndim != 1 or arr.shape[0] != b:
                raise ValueError(f"{name} has {arr.shape[0]} values for {b} seeds")
            return arr.astype(dtype)

        labels = column(class_labels, np.int64, "class_labels")
        steps = column(num_inference_steps, np.int32, "num_inference_steps")
        chunk = max(1, int(self.config().get("max_batch_size") or b))
        parts = []
        for s in range(0, b, chunk):
            inputs = {"seed": seeds_arr[s : s + chunk, None]}
            if labels is not None:
                inputs["class_label"] = labels[s : s + chunk, None]
            if steps is not None:
                inputs["num_inference_steps"] = steps[s : s + chunk, None]
            parts.append(self.infer(inputs)["image"])
        return np.concatenate(parts)

    def close(self) -> None:
        if self._grpc is not None:
            self._grpc.close()
            self._grpc = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_metrics(metrics_url: str, timeout: float = 10.0) -> dict[str, float]:
    """Triton's Prometheus metrics as {'name{labels}': value}."""
    with urllib.request.urlopen(metrics_url, timeout=timeout) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            try:
                out[key] = float(value)
            except ValueError:
                continue
    return out


def model_metric(metrics: dict[str, float], name: str, model: str = "cmrt") -> float:
    """Sum of one metric over the model's versions (and failure reasons)."""
    return sum(v for k, v in metrics.items() if k.startswith(name + "{") and f'model="{model}"' in k)
