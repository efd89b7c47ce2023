"""VGG19 perceptual feature extractor (relu1_1 .. relu5_1) for the translators.

Re-exported from :mod:`segmenters.ldr_networks`: weights come only from a user file loaded with
``weights_only=True`` (:func:`load_vgg19_features`); ``VGG19Features()`` is randomly initialised.
"""
from segmenters.ldr_networks import VGG_LAYER_WEIGHTS, VGG_SLICES, VGG19Features, load_vgg19_features

__all__ = ["VGG19Features", "VGG_LAYER_WEIGHTS", "VGG_SLICES", "load_vgg19_features"]
