"""TensorFlow-specific training code of lambda-keras: input pipeline, data tools, training.

`training.input_pipeline.build_dataset` builds the tf.data ImageNet pipeline from an
`training.input_config.InputConfig`; `training.prepare_imagenet` converts an ImageNet
folder into TFRecords and `training.demo_data` writes the scikit-learn digits in the same
format, each with a manifest that `training.verify_data` checks the shards against. The
rules over a folder's shards (listing, one set per split, against the manifest, the label
map) are `training.shard_set`'s; the two sources are `training.tfrecord_source` and
`training.tfds_source`. The
record schema (`lambda_keras.data.records`), the manifest (`lambda_keras.data.manifest`)
and the image preprocessing (`lambda_keras.data.preprocessing`) live in the library,
which the serving export shares.
"""
