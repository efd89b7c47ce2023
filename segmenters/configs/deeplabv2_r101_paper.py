"""DeepLab-V2 ResNet-101 (output stride 8) at paper scale: the AdaptSegNet/BDL recipe in mmseg 1.x.

Recipe (docs/reference.md §8.1, §8.3, §8.4): SGD lr 2.5e-4, momentum 0.9, weight decay 5e-4, head
(DLV2Head, 4-branch sum) at 10x lr, poly power 0.9 over BDL's 250k-step schedule stopped at 120k
(BDL with SSL; 80k without), batch 1. Source GTA5 resized to 1280x720 (SYNTHIA: override
train_scale=(1280,760)), target Cityscapes 1024x512, test 1024x512 (logits resized to the label).

Choices:
- Backbone is mmseg's ResNetV1c (deep 3x3 stem), not the Caffe ResNet-101 of DeepLab-V2. It starts
  from mmseg's ImageNet ResNetV1c-101 (``init_from = "resnet101_v1c"``, a registry name of
  domains/weights.py resolved to the weights cache; the head keeps its init). A path works too (e.g. a
  converted DeepLab init, or a local copy of the file offline); ``None`` trains from scratch.
  See docs/weights.md.
- BN affine parameters frozen (``requires_grad=False``) as in AdaptSegNet/BDL, statistics in train
  mode; ``zero_init_residual=False`` so a run without init weights does not start with dead blocks
  whose (frozen) last-BN gamma is 0.
- crop_size (512, 1024): BDL trains on the full resized images; we take a 512x1024 random crop of the
  1280x720 source so source and target batches have the same shape (the 1024x512 target is exactly
  one crop). For BDL's no-crop recipe at batch 1 use
  ``--cfg-options crop_size=(720,1280) model.data_preprocessor.size=(720,1280)``.
- CrossEntropyLoss(avg_non_ignore=True): averages over valid pixels like F.cross_entropy(ignore_index).
"""
arch = "deeplabv2"
preset = "paper"
default_scope = "mmseg"
num_classes = 19
crop_size = (512, 1024)          # (h, w)
train_scale = (1280, 720)        # (w, h) source resize, keep_ratio=False; SYNTHIA: (1280, 760)
target_scale = (1024, 512)       # (w, h)
test_scale = (1024, 512)         # (w, h)
batch_size = 1
max_iters = 120000
poly_iters = 250000              # BDL num_steps: lr follows poly over 250k and training stops at max_iters
val_interval = 5000
checkpoint_interval = 5000
log_interval = 50
init_from = "resnet101_v1c"      # ImageNet ResNetV1c-101 (docs/weights.md); a path, or None: from scratch
init_strict = True

norm_cfg = dict(type="BN", requires_grad=False)
data_preprocessor = dict(
    type="SegDataPreProcessor",
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    size=crop_size,
)
model = dict(
    type="EncoderDecoder",
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type="ResNetV1c",
        depth=101,
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        dilations=(1, 1, 2, 4),
        strides=(1, 2, 1, 1),
        norm_cfg=norm_cfg,
        norm_eval=False,
        style="pytorch",
        contract_dilation=True,
        zero_init_residual=False,
    ),
    decode_head=dict(
        type="DLV2Head",
        in_channels=2048,
        in_index=3,
        dilations=(6, 12, 18, 24),   # (6, 12) reproduces the AdaptSegNet-lineage 2-branch head
        num_classes=num_classes,
        align_corners=False,
        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0, avg_non_ignore=True),
    ),
    train_cfg=dict(),
    test_cfg=dict(mode="whole"),
)
optim_wrapper = dict(
    type="OptimWrapper",
    optimizer=dict(type="SGD", lr=2.5e-4, momentum=0.9, weight_decay=5e-4),
    paramwise_cfg=dict(custom_keys={"decode_head": dict(lr_mult=10.0)}),
)
param_scheduler = [
    dict(type="PolyLR", power=0.9, eta_min=0.0, begin=0, end=poly_iters, by_epoch=False),
]
uda = dict(
    lambda_adv=1e-3,             # output-space adversarial weight on the target (BDL, DeepLab-V2)
    discriminator=dict(type="FCDiscriminator", ndf=64),
    d_optimizer=dict(type="Adam", lr=1e-4, betas=(0.9, 0.99)),   # same poly schedule as the segmenter
    lambda_pseudo=1.0,           # weight of the target pseudo-label cross-entropy (BDL SSL)
    # (the pseudo-label keep rule is `python -m segmenters pseudolabel`'s: segmenters/pseudolabel.py PseudoLabelRule)
    # method sections (defaults live in the method modules; set keys here: --cfg-options can only
    # change keys a preset lists, as uda.sepico.alpha=0.99 at tiny; a dict value is not parsed)
    sepico=dict(),
    ldr=dict(),
    # ProDA (segmenters/uda/proda.py): teacher = previous stage's final.pth (stages 2/3)
    proda=dict(teacher=None),
    vgg19_weights="vgg19",       # LDR perceptual loss: registry name or path; None disables the term
)

# mixed precision (AmpOptimWrapper) when training on CUDA; ignored on CPU
amp = True

# --launcher pytorch|slurm (docs/multigpu.md): BatchNorm -> torch.nn.SyncBatchNorm, statistics over the
# global batch (batch_size x processes); needs CUDA. Ignored without a launcher.
sync_bn = False
