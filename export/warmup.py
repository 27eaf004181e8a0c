"""TF Serving warm-up requests: `<version>/assets.extra/tf_serving_warmup_requests`.

At load time TF Serving replays these `PredictionLog` records (a TFRecord file, as
tensorflow_serving/example/resnet_warmup.py writes it) before it marks the version
AVAILABLE, so that the first client request does not pay for graph initialisation
and kernel set-up (oneDNN primitives, GPU autotuning). One request per signature and
batch size; TF Serving accepts at most 1000 records.

Needs `tensorflow-serving-api` (the `serve` extra) for the protos.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")


def sample_image(size: int) -> np.ndarray:
    """A deterministic, smooth test pattern: uint8 [size, size, 3] (not random noise,
    which JPEG-encodes into an unusually large file)."""
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    red = np.broadcast_to(ramp[None, :], (size, size))
    green = np.broadcast_to(ramp[:, None], (size, size))
    blue = 255 - (red + green) / 2
    return np.stack([red, green, blue], axis=-1).astype(np.uint8)


def warmup_requests(
    model_name: str, image_size: int, batch_sizes: Sequence[int] = (1,)
) -> list[prediction_log_pb2.PredictionLog]:
    """PredictionLogs for `serving_default` (JPEG bytes) and `serve_images` (uint8).

    Args:
      model_name: the model's name on the server (the BASE/NAME directory's NAME).
      image_size: side of the square sample image, e.g. the model's input size plus
        the crop padding, so that the warm-up crops and resizes as real images do.
      batch_sizes: one request per signature and batch size, e.g. the batching
        configuration's allowed_batch_sizes.

    Returns:
      2 * len(batch_sizes) PredictionLog protos.
    """
    image = sample_image(image_size)
    jpeg = tf.io.encode_jpeg(image, quality=90).numpy()
    logs = []
    for batch in batch_sizes:
        inputs = {
            "serving_default": ("image_bytes", tf.make_tensor_proto([jpeg] * batch, tf.string)),
            "serve_images": ("images", tf.make_tensor_proto(np.stack([image] * batch))),
        }
        for signature, (key, tensor) in inputs.items():
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature)
            )
            request.inputs[key].CopyFrom(tensor)
            logs.append(
                prediction_log_pb2.PredictionLog(
                    predict_log=prediction_log_pb2.PredictLog(request=request)
                )
            )
    return logs


def write_warmup_requests(
    version_dir: str | os.PathLike,
    model_name: str,
    image_size: int,
    batch_sizes: Sequence[int] = (1,),
) -> Path:
    """Writes `warmup_requests(...)` to version_dir/assets.extra/ and returns the file."""
    path = Path(version_dir) / WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for log in warmup_requests(model_name, image_size, batch_sizes):
            writer.write(log.SerializeToString())
    return path


def read_warmup_requests(version_dir: str | os.PathLike) -> list[prediction_log_pb2.PredictionLog]:
    """Parses the warm-up file back, as TF Serving does at load time."""
    path = Path(version_dir) / WARMUP_FILE
    return [
        prediction_log_pb2.PredictionLog.FromString(record.numpy())
        for record in tf.data.TFRecordDataset(str(path))
    ]
