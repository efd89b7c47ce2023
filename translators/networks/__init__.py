"""Translator networks: CUT ResNet generator, PatchGAN, patch MLP F, SemST scale attention."""
from .blocks import BlurDownsample, BlurUpsample, ResnetBlock, make_norm
from .discriminator import NLayerDiscriminator
from .generator import ResnetGenerator
from .blocks import init_weights
from .patch_sampler import PatchSampleF, l2_normalize
from .scale_attention import ScaleAttention

__all__ = ["BlurDownsample", "BlurUpsample", "NLayerDiscriminator", "PatchSampleF", "ResnetBlock",
           "ResnetGenerator", "ScaleAttention", "init_weights", "l2_normalize", "make_norm"]
