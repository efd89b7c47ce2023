"""FCN-8s VGG16 at paper scale: BDL's VGG16-FCN8s recipe in mmseg 1.x (docs/reference.md §8.2).

Recipe: Adam lr 1e-5 (the BDL paper's VGG learning rate; BDL's code default 2.5e-4 is shared with
DeepLab and is overridden on its command line), betas (0.9, 0.99), no weight decay, biases at 2x lr,
step decay x0.1 every 50k iterations (BDL ``adjust_learning_rate`` for VGG; a StepLR, not poly),
batch 1, lambda_adv 1e-4. Sizes as DeepLab-V2: source 1280x720 (SYNTHIA 1280x760), target/test
1024x512, 512x1024 crops (see deeplabv2_r101_paper.py for why and how to turn crops off).

Model choices (segmenters/models/vgg.py, fcn8s_head.py): VGG16 conv stages from mmcv.cnn.VGG with
ceil-mode pooling, fc6 7x7 (padded) and fc7 1x1 as convolutions with Dropout2d 0.5, FCN-8s skip
fusion with the Caffe scales 0.01 (pool4) and 1e-4 (pool3), bilinear upsampling, zero-init scores.
ImageNet VGG16 weights: ``init_from = "vgg16"`` (torchvision's vgg16 file, a registry name of
domains/weights.py resolved to the weights cache and converted on load by
segmenters.models.vgg.torchvision_vgg16_to_fcn; the head keeps its init). A path works too; ``None``
trains from scratch. See docs/weights.md.
"""
arch = "fcn8s"
preset = "paper"
default_scope = "mmseg"
num_classes = 19
crop_size = (512, 1024)          # (h, w)
train_scale = (1280, 720)        # (w, h); SYNTHIA: (1280, 760)
target_scale = (1024, 512)
test_scale = (1024, 512)
batch_size = 1
max_iters = 120000
val_interval = 5000
checkpoint_interval = 5000
log_interval = 50
init_from = "vgg16"              # torchvision ImageNet VGG16 (docs/weights.md); a path, or None: from scratch
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
        widths=(64, 128, 256, 512, 512),
        fc_channels=4096,
        fc6_kernel=7,
        dropout=0.5,
    ),
    decode_head=dict(
        type="FCN8sHead",
        in_channels=(256, 512, 4096),
        in_index=(0, 1, 2),
        input_transform="multiple_select",
        pool4_scale=0.01,
        pool3_scale=1e-4,
        num_classes=num_classes,
        align_corners=False,
        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0, avg_non_ignore=True),
    ),
    train_cfg=dict(),
    test_cfg=dict(mode="whole"),
)
optim_wrapper = dict(
    type="OptimWrapper",
    optimizer=dict(type="Adam", lr=1e-5, betas=(0.9, 0.99), weight_decay=0.0),
    paramwise_cfg=dict(bias_lr_mult=2.0),
)
param_scheduler = [
    dict(type="StepLR", step_size=50000, gamma=0.1, begin=0, end=max_iters, by_epoch=False),
]
uda = dict(
    lambda_adv=1e-4,             # BDL VGG16-FCN8s adversarial weight
    discriminator=dict(type="FCDiscriminator", ndf=64),
    d_optimizer=dict(type="Adam", lr=1e-4, betas=(0.9, 0.99)),   # x0.1 per 50k like the segmenter
    lambda_pseudo=1.0,
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
