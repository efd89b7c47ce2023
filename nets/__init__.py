"""GAN building blocks that both stages share: plain torch (and torchvision), no project imports.

The bottom layer next to ``domains`` (docs/design.md §2.2): ``translators`` (the SPADE-guided
translator's discriminators) and ``segmenters`` (LDR's reconstruction network, its conditional
discriminators and loss stack) import these blocks from here, so neither stage re-exports the other's
code.

* :mod:`nets.pix2pixhd` -- pix2pixHD's :class:`~nets.pix2pixhd.GlobalGenerator` and
  :class:`~nets.pix2pixhd.ResnetBlock`, the PatchGAN :class:`~nets.pix2pixhd.NLayerDiscriminator`
  returning every intermediate activation, :class:`~nets.pix2pixhd.MultiscaleDiscriminator`, the
  N(0, 0.02) init :func:`~nets.pix2pixhd.init_normal`.
* :mod:`nets.vgg` -- :class:`~nets.vgg.VGG19Features` (relu1_1 .. relu5_1) and the
  pix2pixHD/SPADE layer weights; loading weight files is the caller's (LDR's: segmenters/uda/ldr_parts.py).
* :mod:`nets.losses` -- pure losses: multi-scale LSGAN, discriminator feature matching, VGG perceptual L1.

Importing ``nets`` itself imports nothing (not even torch); import the submodules.
"""
