"""autoseg: self-configuring medical image segmentation.

The pipeline, one stage per package::

    raw dataset -> fingerprint.json -> plans.json -> preprocessed/<config>/
      -> results/<config>/fold_<k>/ -> selection.json -> predictions
"""
__version__ = "0.1.0"
