"""Built-in presets of ``LambdaResNetBackbone``: none.

No weights of the paper's models were published and nothing is downloaded, so no preset
names a remote (Kaggle or Hugging Face) handle. A KerasHub preset entry would read::

    "<name>": {
        "metadata": {"description": "...", "params": <count>, "path": "lambda_resnet"},
        "kaggle_handle": "kaggle://<owner>/<model>/keras/<name>/<version>",
    }

Local presets need no entry: ``model.save_to_preset(directory)`` writes one and
``keras_hub.models.ImageClassifier.from_preset(directory)`` (or ``Backbone``) reads it.
"""

backbone_presets: dict[str, dict] = {}
