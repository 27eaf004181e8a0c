"""ImageNet data for lambda-keras: preprocessing and the TFRecord schema, in TensorFlow ops.

Unlike `lambda_keras.layers` and `lambda_keras.models`, which use keras.ops only and run
on any Keras backend, this subpackage uses TensorFlow ops directly, for tf.data input
pipelines and for the graphs of a TF Serving export. `import lambda_keras` does not
import it; import its modules by name:

- `lambda_keras.data.preprocessing`: decode, crop, resize and normalise one image, the
  training and the evaluation (and serving) transforms;
- `lambda_keras.data.records`: the tf.Example layout of the ImageNet TFRecord shards,
  written by `training.prepare_imagenet` and `training.demo_data` and read by
  `training.tfrecord_source`;
- `lambda_keras.data.image_files`: which image files are acceptable (what TensorFlow
  decodes, up to 50 MP) and their 8-bit RGB pixels, the rule the converter applies;
- `lambda_keras.data.manifest`: the `manifest.json` those writers put next to the
  shards (record counts, sizes, checksums, label map), against which
  `training.shard_set` checks them.

`imagenet_classes.txt` (the 1000 ImageNet class names) also lives here; it is read by
`lambda_keras.imagenet_utils` without TensorFlow.
"""
