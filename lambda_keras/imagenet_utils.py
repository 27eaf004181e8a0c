"""ImageNet input preprocessing and prediction decoding for the LambdaResNets, offline.

``decode_predictions`` reads the 1000 ImageNet-1k classes from
``lambda_keras/data/imagenet_classes.txt``, shipped with the package: one
``<wordnet synset id> <class name>`` line per class, in the sorted-synset order
that TFDS ``imagenet2012`` labels (0..999) and ``keras.applications`` use (index
0 is ``n01440764 tench``). The synset ids are TFDS's ``imagenet2012/labels.txt``;
each name is the first WordNet lemma of its synset (spaces as underscores), taken
from the synset-to-lemma table that timm ships (Apache-2.0). These are the names
Keras' ``imagenet_class_index.json`` uses, which Keras downloads on first use; we
never download anything.
"""

from __future__ import annotations

import functools
from importlib import resources

import keras
import numpy as np

NUM_CLASSES = 1000


def preprocess_input(x, data_format: str | None = None):
    """Scales RGB images in ``[0, 255]`` the way the LambdaResNets are trained.

    The ResNet-RS input pipeline ([RS], and tf-models' ``normalize_image``)
    subtracts the ImageNet mean RGB ``(0.485, 0.456, 0.406) * 255`` and divides by
    the standard deviation ``(0.229, 0.224, 0.225) * 255``, which is
    ``keras.applications.imagenet_utils.preprocess_input(..., mode="torch")``.
    (keras.applications' ResNet50 uses ``mode="caffe"`` instead: BGR, means only.)
    timm's lambda ResNets (``LambdaResNet26T`` etc.) were trained with the same
    statistics, so this is their scaling too; their resize and crop differ, see
    :func:`preprocess_image`.

    Args:
      x: float or int array or tensor ``[..., height, width, 3]`` (or
        ``[..., 3, height, width]`` with ``data_format="channels_first"``), RGB in
        ``[0, 255]``. A float NumPy array is modified in place, as in Keras.
      data_format: ``"channels_last"`` or ``"channels_first"``; defaults to
        ``keras.config.image_data_format()``.

    Returns:
      The normalised images, float32, same shape.
    """
    return keras.applications.imagenet_utils.preprocess_input(x, data_format=data_format, mode="torch")


def preprocess_image(image, model_name: str, image_size: int | None = None) -> np.ndarray:
    """One RGB image of any size -> the evaluation input of the model named ``model_name``.

    The transform the SavedModel export runs (``lambda_keras.data.preprocessing``,
    TensorFlow): for a model named after one of timm's (the default names of
    ``LambdaResNet26T``, ``LambdaResNet26RPT256``, ``LambdaResNet50TS``) the
    evaluation transform of its published weights (``variants.published_eval_transform``:
    shorter side bicubic to ``floor(256 / crop_pct)``, centre 256 crop), else the
    paper recipe's (centre crop of ``image_size / (image_size + 32)``, bilinear
    resize); then :func:`preprocess_input`'s normalisation.

    Args:
      image: ``[height, width, 3]`` RGB in ``[0, 255]`` (uint8 or float).
      model_name: the model's ``name``.
      image_size: output side; default the published weights' (256) or 224.

    Returns:
      float32 ``[image_size, image_size, 3]``.
    """
    from lambda_keras.data import preprocessing  # TensorFlow, only where asked for
    from lambda_keras.models.variants import published_eval_transform

    transform = published_eval_transform(model_name)
    if transform is None:
        return preprocessing.preprocess_decoded_for_eval(image, image_size or 224).numpy()
    return preprocessing.preprocess_decoded_for_eval(
        image, image_size or transform.image_size, transform.crop_padding,
        interpolation=transform.interpolation, resize_first=transform.resize_first,
    ).numpy()


@functools.cache
def imagenet_classes() -> tuple[tuple[str, str], ...]:
    """The 1000 ImageNet-1k classes as ``(synset id, name)`` pairs, by label index."""
    text = resources.files("lambda_keras").joinpath("data/imagenet_classes.txt").read_text("utf-8")
    classes = tuple(tuple(line.split(" ", 1)) for line in text.splitlines() if line)
    if len(classes) != NUM_CLASSES:
        raise RuntimeError(f"lambda_keras/data/imagenet_classes.txt has {len(classes)} classes, not 1000")
    return classes


def decode_predictions(preds, top: int = 5) -> list[list[tuple[str, str, float]]]:
    """Turns ImageNet class scores into ``(synset id, class name, score)`` tuples.

    Same output as ``keras.applications.imagenet_utils.decode_predictions``, but
    offline (the class list ships with this package).

    Args:
      preds: array or tensor ``[samples, 1000]`` of probabilities or logits.
      top: number of classes to return per sample.

    Returns:
      One list per sample of ``top`` tuples, highest score first.

    Raises:
      ValueError: if ``preds`` is not 2-D with 1000 columns.
    """
    preds = np.asarray(keras.ops.convert_to_numpy(preds))
    if preds.ndim != 2 or preds.shape[1] != NUM_CLASSES:
        raise ValueError(
            "`decode_predictions` expects a batch of predictions (i.e. a 2D array of "
            f"shape (samples, 1000)). Received array with shape: {preds.shape}"
        )
    classes = imagenet_classes()
    results = []
    for scores in preds:
        best = np.argsort(scores)[::-1][:top]
        results.append([classes[i] + (float(scores[i]),) for i in best])
    return results
