"""TF Serving export of trained LambdaResNets: SavedModel, warm-up requests, clients.

- `export.saved_model`: `export_model(...)` and `python -m export.saved_model`, which
  write `BASE/NAME/<version>/` with the `serving_default` (encoded JPEG/PNG bytes) and
  `serve_images` (uint8 pixels) signatures. The SavedModel is plain TensorFlow: it
  loads without this package.
- `export.portable`: `export_portable(...)` and `python -m export.portable`, one ONNX or
  builtin-op LiteRT file (float, or int8) for pre-sized pixels, with its input contract,
  checked in ONNX Runtime or the LiteRT interpreter before it is renamed into place.
- `export.warmup`: `assets.extra/tf_serving_warmup_requests` (PredictionLog records).
- `export.client`: REST and gRPC clients for a running `tensorflow_model_server`.
- `export/deploy/`: docker-compose, Kubernetes and model-server configuration files.
"""
