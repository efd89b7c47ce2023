"""FCN-8s tiny preset: narrow VGG16 (8-16-32-64-64, fc 128, fc6 3x3) + FCN-8s head at 256x128.

Same structure as ``fcn8s_vgg16_paper.py``. Differences for quick CPU runs from random init:
Adam lr 1e-3, poly decay over max_iters, dropout 0.1, skip scales 1.0 (the Caffe 0.01/1e-4 scales
assume a pretrained FCN-32s and a long schedule; in a few hundred Adam steps the scaled skips would
stay negligible), full-image "crops", batch 2. Measured: 150 iterations on the conftest-style
synthetic scenes reach ~84 mIoU on held-out images (CPU, 1 thread, ~40 s).
"""
arch = "fcn8s"
preset = "tiny"
default_scope = "mmseg"
num_classes = 19
crop_size = (128, 256)           # (h, w)
train_scale = (256, 128)         # (w, h)
target_scale = (256, 128)
test_scale = (256, 128)
batch_size = 2
max_iters = 300
val_interval = 100
checkpoint_interval = 100
log_interval = 10
init_from = None
init_strict = True

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
        type="FCNVGG",
        depth=16,
        widths=(8, 16, 32, 64, 64),
        fc_channels=128,
        fc6_kernel=3,
        dropout=0.1,
    ),
    decode_head=dict(
        type="FCN8sHead",
        in_channels=(32, 64, 128),
        in_index=(0, 1, 2),
        input_transform="multiple_select",
        pool4_scale=1.0,
        pool3_scale=1.0,
        num_classes=num_classes,
        align_corners=False,
        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0, avg_non_ignore=True),
    ),
    train_cfg=dict(),
    test_cfg=dict(mode="whole"),
)
optim_wrapper = dict(
    type="OptimWrapper",
    optimizer=dict(type="Adam", lr=1e-3, betas=(0.9, 0.99), weight_decay=0.0),
    paramwise_cfg=dict(bias_lr_mult=2.0),
)
param_scheduler = [
    dict(type="PolyLR", power=0.9, eta_min=0.0, begin=0, end=max_iters, by_epoch=False),
]
uda = dict(
    lambda_adv=1e-4,
    discriminator=dict(type="FCDiscriminator", ndf=16),
    d_optimizer=dict(type="Adam", lr=1e-4, betas=(0.9, 0.99)),
    lambda_pseudo=1.0,
    pseudo_threshold=0.9,
    # method sections (defaults live in the method modules; set keys here or with
    # --cfg-options "uda.sepico={'contrast_mode': 'proto'}")
    sepico=dict(),
    ldr=dict(),
    vgg19_weights=None,
)

# mixed precision (AmpOptimWrapper) when training on CUDA; ignored on CPU
amp = True
