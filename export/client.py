"""Classify image files with a running TF Serving model, over REST or gRPC.

Usage:
  python -m export.client --rest http://HOST:8501 --model NAME IMAGE...
  python -m export.client --grpc HOST:8500 --model NAME IMAGE... [--version N]

Sends the files' bytes (JPEG or PNG, any size) to the `serving_default` signature
and prints each file's top classes. The request formats are TF Serving's documented
ones: REST `POST /v1/models/NAME[/versions/N]:predict` with the row ("instances")
format, binary strings as {"b64": ...} (tensorflow_serving/g3doc/api_rest.md); gRPC
`PredictionService/Predict` with a `PredictRequest` whose `image_bytes` input is a
DT_STRING tensor [batch] (tensorflow_serving/apis/predict.proto). gRPC needs
`tensorflow-serving-api` (the `serve` extra); REST needs only the standard library.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Sequence

from lambda_keras import cli

SIGNATURE = "serving_default"
INPUT_KEY = "image_bytes"
# A day: beyond it the socket layer overflows, and no answer is worth the wait.
MAX_TIMEOUT_SECONDS = 86_400


class ServerError(cli.UserError, RuntimeError):
    """The server refused the request or answered something that is not a prediction."""


def rest_url(server: str, model: str, version: int | None = None) -> str:
    """`http://HOST:8501/v1/models/NAME[/versions/N]:predict`."""
    path = f"/v1/models/{model}" + (f"/versions/{version}" if version is not None else "")
    return server.rstrip("/") + path + ":predict"


def rest_request(images: Sequence[bytes], signature_name: str = SIGNATURE,
                 columnar: bool = False) -> dict[str, Any]:
    """The REST predict body for encoded images.

    Row format (default): {"signature_name": ..., "instances": [{"b64": ...}, ...]},
    one instance per image; the signature has a single input, so each instance is
    the bare value. Columnar: {"signature_name": ..., "inputs": {"image_bytes":
    [{"b64": ...}, ...]}}.
    """
    values = [{"b64": base64.b64encode(image).decode("ascii")} for image in images]
    if columnar:
        return {"signature_name": signature_name, "inputs": {INPUT_KEY: values}}
    return {"signature_name": signature_name, "instances": values}


def parse_rest_response(body: dict[str, Any]) -> list[dict[str, Any]]:
    """One dict per image with the signature's outputs, from a row or columnar answer.

    Row answers are {"predictions": [{"probabilities": [...], "top_k_labels": [...],
    ...}, ...]}; columnar ones {"outputs": {"probabilities": [[...], ...], ...}}.

    Raises:
      ServerError (a RuntimeError): the server answered {"error": ...}, or something
        that is neither form.
    """
    if isinstance(body, dict) and "error" in body:
        raise ServerError(body["error"])
    if isinstance(body, dict) and isinstance(body.get("predictions"), list):
        return list(body["predictions"])
    outputs = body.get("outputs") if isinstance(body, dict) else None
    if not isinstance(outputs, dict) or not outputs or not all(isinstance(value, list) for value in outputs.values()):
        raise ServerError(f"the answer is not a TF Serving prediction: {json.dumps(body)[:200]}")
    count = len(next(iter(outputs.values())))
    return [{key: value[index] for key, value in outputs.items()} for index in range(count)]


def rest_predict(server: str, model: str, images: Sequence[bytes], version: int | None = None,
                 timeout: float = 30.0) -> list[dict[str, Any]]:
    """POSTs `rest_request(images)` and returns `parse_rest_response` of the answer."""
    data = json.dumps(rest_request(images)).encode("utf-8")
    request = urllib.request.Request(rest_url(server, model, version), data=data,
                                     headers={"Content-Type": "application/json"})
    try:
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return parse_rest_response(json.load(response))
        except urllib.error.HTTPError as error:
            # TF Serving puts the reason (e.g. "The image could not be decoded") in the body.
            return parse_rest_response(json.load(error))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ServerError(f"{request.full_url} did not answer JSON: is it a TF Serving REST port?") from None


def grpc_request(model: str, images: Sequence[bytes], signature_name: str = SIGNATURE,
                 version: int | None = None):
    """A `predict_pb2.PredictRequest`: inputs["image_bytes"] DT_STRING [len(images)]."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from tensorflow_serving.apis import predict_pb2  # pylint: disable=import-outside-toplevel

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature_name
    if version is not None:
        request.model_spec.version.value = version
    request.inputs[INPUT_KEY].CopyFrom(
        tf.make_tensor_proto(list(images), dtype=tf.string, shape=[len(images)])
    )
    return request


def parse_grpc_response(response) -> list[dict[str, Any]]:
    """One dict per image (numpy values; labels decoded to str) from a PredictResponse."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    outputs = {key: tf.make_ndarray(tensor) for key, tensor in response.outputs.items()}
    if "top_k_labels" in outputs:
        outputs["top_k_labels"] = outputs["top_k_labels"].astype(str)
    count = len(next(iter(outputs.values())))
    return [{key: value[index] for key, value in outputs.items()} for index in range(count)]


def grpc_predict(target: str, model: str, images: Sequence[bytes], version: int | None = None,
                 timeout: float = 30.0) -> list[dict[str, Any]]:
    """Calls PredictionService/Predict on `target` (HOST:8500)."""
    import grpc  # pylint: disable=import-outside-toplevel
    from tensorflow_serving.apis import prediction_service_pb2_grpc  # pylint: disable=import-outside-toplevel

    # Large images exceed gRPC's 4 MiB default message size.
    options = [("grpc.max_send_message_length", 64 << 20),
               ("grpc.max_receive_message_length", 64 << 20)]
    with grpc.insecure_channel(target, options=options) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        try:
            response = stub.Predict(grpc_request(model, images, version=version), timeout)
        except grpc.RpcError as error:
            raise ServerError(f"{error.code().name}: {error.details()}") from None
    return parse_grpc_response(response)


def format_prediction(name: str, prediction: dict[str, Any]) -> str:
    """"NAME: label (0.912), label (0.050), ..." for one image."""
    pairs = zip(prediction["top_k_labels"], prediction["top_k_scores"])
    return f"{name}: " + ", ".join(f"{label} ({float(score):.3f})" for label, score in pairs)


def _http_url(text: str) -> str:
    if not text.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"must be an http:// or https:// URL, not {text!r}")
    return text


def _positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds <= MAX_TIMEOUT_SECONDS:
        raise argparse.ArgumentTypeError(f"must be a number of seconds in (0, {MAX_TIMEOUT_SECONDS}], not {text!r}")
    return seconds


@cli.entry_point("python -m export.client")
def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog="python -m export.client", description=__doc__.split("\n")[0])
    server = parser.add_mutually_exclusive_group(required=True)
    server.add_argument("--rest", type=_http_url, help="REST server, e.g. http://localhost:8501")
    server.add_argument("--grpc", help="gRPC server, e.g. localhost:8500")
    parser.add_argument("--model", required=True, help="model name on the server")
    parser.add_argument("--version", type=cli.integer_at_least(1), help="default: the server's latest version")
    parser.add_argument("--timeout", type=_positive_seconds, default=30.0, help="seconds (default 30)")
    parser.add_argument("images", nargs="+", help="JPEG or PNG files")
    args = parser.parse_args(argv)
    missing = [path for path in args.images if not Path(path).is_file()]
    if missing:
        print(f"python -m export.client: error: no such image file: {', '.join(missing)}", file=sys.stderr)
        return 2
    images = [Path(path).read_bytes() for path in args.images]
    if args.rest:
        predictions = rest_predict(args.rest, args.model, images, args.version, args.timeout)
    else:
        predictions = grpc_predict(args.grpc, args.model, images, args.version, args.timeout)
    for path, prediction in zip(args.images, predictions):
        print(format_prediction(path, prediction))
    return 0


if __name__ == "__main__":
    sys.exit(main())
