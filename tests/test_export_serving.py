"""TF Serving around the export: warm-up records, client request formats, load.

No tensorflow_model_server can be installed here, so the client's requests are checked
against TF Serving's documented formats (g3doc/api_rest.md, apis/predict.proto) and
then fed to the loaded SavedModel the way the server decodes them.
"""

from __future__ import annotations

import base64
import http.server
import json
import threading

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

from export import client, load_test, warmup
from test_export import CLASS_NAMES, CLASSES, TOP_K, keras_probabilities
from test_export import exported, images  # noqa: F401  (module-scoped fixtures)


def test_warmup_records_parse_and_run(exported):  # noqa: F811
    _, path, loaded = exported
    logs = warmup.read_warmup_requests(path)
    assert [log.WhichOneof("log_type") for log in logs] == ["predict_log", "predict_log"]
    requests = [log.predict_log.request for log in logs]
    assert [request.model_spec.name for request in requests] == ["tiny", "tiny"]
    assert [request.model_spec.signature_name for request in requests] == [
        "serving_default", "serve_images"]
    jpeg_tensor = requests[0].inputs["image_bytes"]
    assert jpeg_tensor.dtype == tf.string.as_datatype_enum
    assert [dim.size for dim in jpeg_tensor.tensor_shape.dim] == [1]
    pixels = tf.make_ndarray(requests[1].inputs["images"])
    assert pixels.dtype == np.uint8 and pixels.shape == (1, 36, 36, 3)
    # Replayed as the server does: each request on its signature.
    by_jpeg = loaded.signatures["serving_default"](
        image_bytes=tf.constant(tf.make_ndarray(jpeg_tensor)))
    by_pixels = loaded.signatures["serve_images"](images=tf.constant(pixels))
    assert by_jpeg["probabilities"].shape == (1, CLASSES)
    # The same picture, JPEG-compressed at quality 90: the same top class.
    assert int(by_jpeg["top_k_indices"][0, 0]) == int(by_pixels["top_k_indices"][0, 0])


def _decode_rest_instances(body: dict) -> list[bytes]:
    """What TF Serving does with a b64 DT_STRING input, row or columnar format."""
    values = body["instances"] if "instances" in body else body["inputs"]["image_bytes"]
    return [base64.b64decode(value["b64"], validate=True) for value in values]


def test_rest_request_matches_the_documented_format(exported, images):  # noqa: F811
    model, _, loaded = exported
    row = json.loads(json.dumps(client.rest_request(images[:3])))
    assert row == {"signature_name": "serving_default",
                   "instances": [{"b64": base64.b64encode(image).decode()} for image in images[:3]]}
    columnar = client.rest_request(images[:3], columnar=True)
    assert set(columnar) == {"signature_name", "inputs"}
    assert list(columnar["inputs"]) == ["image_bytes"]
    assert _decode_rest_instances(columnar) == _decode_rest_instances(row) == images[:3]
    assert client.rest_url("http://host:8501/", "tiny") == "http://host:8501/v1/models/tiny:predict"
    assert (client.rest_url("http://host:8501", "tiny", 3)
            == "http://host:8501/v1/models/tiny/versions/3:predict")

    # The decoded instances run on the signature; the answer, in TF Serving's row
    # format ({"predictions": [one object per instance]}), parses back per image.
    outputs = loaded.signatures["serving_default"](
        image_bytes=tf.constant(_decode_rest_instances(row)))
    predictions = [{key: value[index].numpy().tolist() for key, value in outputs.items()}
                   for index in range(3)]
    for prediction in predictions:
        prediction["top_k_labels"] = [label.decode() for label in prediction["top_k_labels"]]
    parsed = client.parse_rest_response(json.loads(json.dumps({"predictions": predictions})))
    np.testing.assert_allclose([p["probabilities"] for p in parsed],
                               keras_probabilities(model, images[:3]), atol=1e-5)
    columnar_answer = {"outputs": {key: [p[key] for p in predictions] for key in predictions[0]}}
    assert client.parse_rest_response(columnar_answer) == predictions
    line = client.format_prediction("a.jpg", parsed[0])
    assert line.startswith(f"a.jpg: {parsed[0]['top_k_labels'][0]} (")
    assert line.count("(") == TOP_K
    with pytest.raises(RuntimeError, match="could not be decoded"):
        client.parse_rest_response({"error": "The image could not be decoded: ..."})


class _FakeRestServer(http.server.BaseHTTPRequestHandler):
    """Answers :predict from the loaded export, as TF Serving's REST server would."""

    signature = None
    seen_paths: list[str] = []

    def do_POST(self):  # noqa: N802  (http.server's naming)
        self.seen_paths.append(self.path)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        try:
            outputs = self.signature(image_bytes=tf.constant(_decode_rest_instances(body)))
            predictions = [{key: (value[index].astype(str) if value.dtype == object else value[index]
                                  ).tolist() for key, value in
                            ((k, v.numpy()) for k, v in outputs.items())}
                           for index in range(len(body["instances"]))]
            status, answer = 200, {"predictions": predictions}
        except tf.errors.InvalidArgumentError as error:
            status, answer = 400, {"error": error.message}
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_rest_client_round_trip_and_error(exported, images, tmp_path, capsys):  # noqa: F811
    """The client's HTTP plumbing against a stand-in server (not a format check)."""
    model, _, loaded = exported
    _FakeRestServer.signature = loaded.signatures["serving_default"]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeRestServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        files = []
        for index, image in enumerate(images[:2]):
            files.append(tmp_path / f"image{index}.jpg")
            files[-1].write_bytes(image)
        assert client.main(["--rest", url, "--model", "tiny", *map(str, files)]) == 0
        lines = capsys.readouterr().out.splitlines()
        expected = keras_probabilities(model, images[:2])
        for line, file, row in zip(lines, files, expected):
            assert line.startswith(f"{file}: {CLASS_NAMES[int(row.argmax())]} ({row.max():.3f})")
        with pytest.raises(RuntimeError, match="could not be decoded"):
            client.rest_predict(url, "tiny", [b"not an image"], version=1)
        assert _FakeRestServer.seen_paths[-2:] == ["/v1/models/tiny:predict",
                                                   "/v1/models/tiny/versions/1:predict"]
    finally:
        server.shutdown()
        server.server_close()


def test_grpc_request_matches_predict_proto(exported, images):  # noqa: F811
    model, _, loaded = exported
    request = client.grpc_request("tiny", images[:2], version=4)
    # What goes over the wire, parsed back as the server parses it.
    request = predict_pb2.PredictRequest.FromString(request.SerializeToString())
    assert request.model_spec.name == "tiny"
    assert request.model_spec.signature_name == "serving_default"
    assert request.model_spec.version.value == 4
    assert list(request.inputs) == ["image_bytes"]
    tensor = request.inputs["image_bytes"]
    assert tensor.dtype == tf.string.as_datatype_enum
    assert [dim.size for dim in tensor.tensor_shape.dim] == [2]
    assert list(tensor.string_val) == images[:2]

    outputs = loaded.signatures["serving_default"](image_bytes=tf.constant(tf.make_ndarray(tensor)))
    response = predict_pb2.PredictResponse()
    for key, value in outputs.items():
        response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
    parsed = client.parse_grpc_response(
        predict_pb2.PredictResponse.FromString(response.SerializeToString()))
    expected = keras_probabilities(model, images[:2])
    np.testing.assert_allclose([p["probabilities"] for p in parsed], expected, atol=1e-5)
    assert [p["top_k_labels"][0] for p in parsed] == [CLASS_NAMES[i] for i in expected.argmax(1)]


@pytest.mark.slow
def test_under_load_valid_answered_invalid_refused_memory_flat(exported, images):  # noqa: F811
    """4 threads for ~6 s (the 8-thread, 60 s run is benchmarks/serving_speed.py)."""
    _, _, loaded = exported
    invalid = [b"", b"not an image", images[0][:200], images[-1][:-30]]
    report = load_test.run_load_test(loaded.signatures["serving_default"], images, invalid,
                                     threads=4, seconds=4.0, warmup_seconds=2.0, max_batch=3)
    growth = report.rss_end_bytes - report.rss_after_warmup_bytes
    assert report.failures == []
    assert report.valid_answered > 20 and report.invalid_refused > 5
    assert growth < 40 * 2**20, f"RSS grew {growth / 2**20:.1f} MiB under load"


def test_deploy_files_parse():
    """models.config is a valid ModelServerConfig; the YAML files declare the ports and
    the batching flags. (BatchingParameters' proto is not in tensorflow-serving-api,
    so its file is checked for the fields only.)"""
    from pathlib import Path

    import yaml
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    deploy = Path(__file__).resolve().parents[1] / "export" / "deploy"
    config = text_format.Parse((deploy / "models.config").read_text(),
                               model_server_config_pb2.ModelServerConfig())
    (model,) = config.model_config_list.config
    assert (model.name, model.base_path) == ("lambda_resnet", "/models/lambda_resnet")
    batching = (deploy / "batching_parameters.txt").read_text()
    assert "max_batch_size { value: 32 }" in batching

    compose = yaml.safe_load((deploy / "docker-compose.yaml").read_text())
    service = compose["services"]["tf-serving"]
    assert service["image"].startswith("tensorflow/serving")
    assert set(service["ports"]) == {"8500:8500", "8501:8501"}
    assert "--enable_batching=true" in service["command"]

    documents = {doc["kind"]: doc for doc in yaml.safe_load_all((deploy / "kubernetes.yaml").read_text())}
    container = documents["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert {port["containerPort"] for port in container["ports"]} == {8500, 8501}
    assert "--batching_parameters_file=/config/batching_parameters.txt" in container["args"]
    assert {port["port"] for port in documents["Service"]["spec"]["ports"]} == {8500, 8501}
    assert text_format.Parse(documents["ConfigMap"]["data"]["models.config"],
                             model_server_config_pb2.ModelServerConfig()) == config
