"""What every method builds on: the model contract (``base``), the model registry, shared
blocks, timm encoders, pretrained weights, model files, BatchNorm fusion, ensembles,
recomputation, plug-in attachment and the import of authors' checkpoints (``converters``).
The networks themselves live in their method's folder, ``condseg/methods/<family>/``."""
