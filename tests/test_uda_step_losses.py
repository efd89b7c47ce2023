"""One training step of every registered UDA method (segmenters/uda): each logged loss term against a
value computed by hand.

The expected values come from a copy of the model taken before the step (the step's own forward
passes see the same weights and inputs) and from the labels the method must use: source labels
read from the prepared source, target labels / pseudo-labels read from the files the test wrote,
255 ignored, times the documented weight. Weights are set to values other than 1 so a dropped or
swapped weight changes the number. Each test also checks that the plausible wrong labels (the
source labels, the target ground truth, the model's own argmax, ignored pixels counted as a class)
give a clearly different value, so the comparison can tell them apart.

Setup: tiny DeepLab-V2 (no dropout; BN in train mode uses batch statistics, so a forward of the
copy equals the step's forward on the same input), 64x32 images, batches of two, flips off (the
labels on disk are the labels in the batch). The random-init head is re-drawn with a larger spread
so the logits are informative (with the default N(0, 0.01) every pixel's CE is ~log 19 whatever
its label).
"""
from __future__ import annotations

import copy
import dataclasses
import math
import uuid
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import segmenters  # noqa: F401  (mmcv.ops stand-in before mmseg)
from domains.prepared import PreparedDataset
from mmengine.config import ConfigDict
from mmengine.dataset import pseudo_collate
from mmengine.logging import MessageHub
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DefaultScope
from mmseg.registry import DATASETS
from segmenters import uda as seg_uda
from segmenters.checkpoint import build_segmentor
from segmenters.configs import load_config
from segmenters.datasets import UDADataset
from segmenters.uda import TrainInputs
from segmenters.uda.proda_parts import save_prototypes
from segmenters.uda.mix import class_mix_masks

IGNORE = 255
C = 19
H, W = 32, 64
SMALL = ["crop_size=(32,64)", "model.data_preprocessor.size=(32,64)", "train_scale=(64,32)",
         "target_scale=(64,32)", "test_scale=(64,32)", "batch_size=1", "log_interval=1"]
REL = 1e-4


# ------------------------------------------------------------------ helpers
def _cfg(*options: str, **uda):
    cfg = load_config("deeplabv2", "tiny", SMALL + list(options))
    cfg.train_aug = dict(flip_prob=0.0)
    for key, value in uda.items():
        cfg.uda[key] = value
    return cfg


def _inputs(tiny, pseudo: Path | None = None) -> TrainInputs:
    return TrainInputs(source=tiny["source"], target=tiny["target"], pseudo=pseudo)


def _build(name: str, cfg, inputs: TrainInputs):
    """The registered method's model (head re-drawn, see module docstring), optimiser and a batch of two."""
    method = seg_uda.METHODS[name]
    torch.manual_seed(0)
    model = build_segmentor(method.model(cfg, inputs))
    model.init_weights()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.decode_head.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    with DefaultScope.overwrite_default_scope("mmseg"):
        optim = build_optim_wrapper(model, ConfigDict(method.optim_wrapper(cfg)))
        spec = method.train_dataset(cfg, inputs)
        data = (UDADataset(spec["source"], spec["target"], seed=spec["seed"]) if spec["type"] == "UDADataset"
                else DATASETS.build(spec))
    batch = pseudo_collate([data[0], data[1]])
    return model, optim, batch


def _step(model, optim, batch, t: int = 0) -> dict[str, float]:
    hub = MessageHub.get_instance(f"step_losses_{uuid.uuid4().hex[:8]}")  # becomes the current instance
    hub.update_info("iter", t)
    logs = model.train_step(batch, optim)
    return {k: float(v.detach() if isinstance(v, torch.Tensor) else v) for k, v in logs.items()}


def _stems(samples: dict) -> list[str]:
    return [Path(ds.metainfo["img_path"]).stem for ds in samples["data_samples"]]


def _png(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(path))).long()


def _gt(root: Path, stems: list[str]) -> torch.Tensor:
    """Ground-truth train labels (B, H, W) of a prepared dataset."""
    return torch.stack([_png(root / "labels" / "train" / f"{s}_labelTrainIds.png") for s in stems])


def _images(root: Path) -> set[str]:
    return {str(s.image) for s in PreparedDataset.load(root).samples("train")}


def _write_pseudo(target: Path, out: Path) -> Path:
    """Pseudo-labels unlike every other label map of the scene: the target ground truth upside down,
    with the top 6 rows and the left quarter ignored (255)."""
    out.mkdir(parents=True, exist_ok=True)
    for s in PreparedDataset.load(target).samples("train"):
        lab = np.flipud(np.array(Image.open(s.label))).copy()
        lab[:6] = IGNORE
        lab[:, : lab.shape[1] // 4] = IGNORE
        Image.fromarray(lab).save(out / f"{s.stem}.png")
    return out


def _pseudo(folder: Path, stems: list[str]) -> torch.Tensor:
    return torch.stack([_png(folder / f"{s}.png") for s in stems])


def _x(model, samples: dict) -> torch.Tensor:
    """Network inputs of one half of a batch (the model's data preprocessor, on a copy)."""
    return model.data_preprocessor(copy.deepcopy(samples), True)["inputs"]


def _logits(net, x: torch.Tensor) -> torch.Tensor:
    return net.decode_head(net.extract_feat(x))


def _up(logits: torch.Tensor, size=(H, W)) -> torch.Tensor:
    return F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)


def _ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Decode-head CE: logits upsampled to the label size, mean over non-ignored pixels."""
    return F.cross_entropy(_up(logits, labels.shape[-2:]), labels, ignore_index=IGNORE)


def _bce(d: torch.Tensor, label: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(d, torch.full_like(d, label))


def _differs(a, b, rel: float = 0.01) -> bool:
    a, b = float(a), float(b)
    return abs(a - b) > rel * max(abs(a), abs(b), 1e-8)


def _check(logs: dict[str, float], expected: dict[str, torch.Tensor], rel: float = REL) -> None:
    """Every expected term logged with its hand-computed value; ``loss`` is the sum of the ``loss`` terms."""
    for key, value in expected.items():
        assert key in logs, f"{key} not logged (logged: {sorted(logs)})"
        assert logs[key] == pytest.approx(float(value), rel=rel, abs=1e-6), \
            f"{key}: logged {logs[key]:.6f}, expected {float(value):.6f}"
    def generator_terms(keys):  # the terms summed into ``loss`` (the discriminators' losses are logged apart)
        return sorted(k for k in keys if "loss" in k.split(".")[-1] and k != "loss"
                      and not k.startswith(("disc.", "recon_disc.")))

    terms = generator_terms(logs)
    assert terms == generator_terms(expected), "logged loss terms differ from the documented ones"
    assert logs["loss"] == pytest.approx(sum(float(expected[k]) for k in terms), rel=rel, abs=1e-6)


# ------------------------------------------------------------------ registry
def test_every_method_is_registered_by_the_package_import():
    expected = {"source_only": "SourceOnly", "oracle": "Oracle", "bdl": "BDL", "sepico": "SePiCo", "ldr": "LDR",
                "proda_warmup": "ProDAWarmup", "proda_stage1": "ProDAStage1", "proda_distill": "ProDADistill"}
    assert {n: type(m).__name__ for n, m in seg_uda.METHODS.items()} == expected
    for name in expected:
        assert seg_uda.get_method(name).name == name


# ------------------------------------------------------------------ plain EncoderDecoder methods
@pytest.mark.parametrize("name,domain", [("source_only", "source"), ("oracle", "target")])
def test_plain_method_step_is_ce_on_its_domain_labels(tiny_prepared, name, domain):
    """source_only: CE on the source train labels; oracle: CE on the target train labels."""
    other = "target" if domain == "source" else "source"
    model, optim, batch = _build(name, _cfg(), _inputs(tiny_prepared))
    assert {ds.metainfo["img_path"] for ds in batch["data_samples"]} <= _images(tiny_prepared[domain])
    stems = _stems(batch)
    y, y_other = _gt(tiny_prepared[domain], stems), _gt(tiny_prepared[other], stems)
    ref = copy.deepcopy(model)
    with torch.no_grad():
        logits = _logits(ref, _x(ref, batch))
    expected = _ce(logits, y)
    assert _differs(expected, _ce(logits, y_other))
    logs = _step(model, optim, batch)
    _check(logs, {"decode.loss_ce": expected})


# ------------------------------------------------------------------ BDL
def test_bdl_step_losses(tiny_prepared, tmp_path):
    """L_G = CE(G(x_s), y_s) + lambda_pseudo CE(G(x_t), y^_t) + lambda_adv BCE(D(softmax G(x_t)), 0);
    L_D = 1/2 [BCE(D(P_s), 0) + BCE(D(P_t), 1)]; y^_t are the loaded pseudo-labels, 255 ignored."""
    pseudo_dir = _write_pseudo(tiny_prepared["target"], tmp_path / "pseudo")
    cfg = _cfg("uda.lambda_adv=0.2", "uda.lambda_pseudo=0.5")
    model, optim, batch = _build("bdl", cfg, _inputs(tiny_prepared, pseudo_dir))
    y_s = _gt(tiny_prepared["source"], _stems(batch["src"]))
    trg_stems = _stems(batch["trg"])
    y_t = _pseudo(pseudo_dir, trg_stems)
    ref = copy.deepcopy(model)
    with torch.no_grad():
        ls, lt = _logits(ref, _x(ref, batch["src"])), _logits(ref, _x(ref, batch["trg"]))
        d_s = ref.discriminator(F.softmax(_up(ls), dim=1))
        d_t = ref.discriminator(F.softmax(_up(lt), dim=1))
    ce_t = _ce(lt, y_t)
    # the pseudo-label term can tell the loaded pseudo-labels from every other label map
    for wrong in (y_s, _gt(tiny_prepared["target"], trg_stems), _up(lt).argmax(1), y_t.masked_fill(y_t == IGNORE, 0)):
        assert _differs(ce_t, _ce(lt, wrong))
    expected = {"src.decode.loss_ce": _ce(ls, y_s), "trg.decode.loss_ce": 0.5 * ce_t,
                "trg.loss_adv": 0.2 * _bce(d_t, 0.0),
                "disc.loss_d": 0.5 * (_bce(d_s, 0.0) + _bce(d_t, 1.0))}
    _check(_step(model, optim, batch), expected)


# ------------------------------------------------------------------ ProDA
def test_proda_warmup_step_losses(tiny_prepared):
    """Stage 0: CE(G(x_s), y_s) + adv MSE(D(softmax G(x_t)), 0); L_D = 1/2 [MSE(D(P_s), 0) + MSE(D(P_t), 1)]."""
    cfg = _cfg(proda=dict(adv=0.3))
    model, optim, batch = _build("proda_warmup", cfg, _inputs(tiny_prepared))
    y_s = _gt(tiny_prepared["source"], _stems(batch["src"]))
    ref = copy.deepcopy(model)
    with torch.no_grad():
        ls, lt = _logits(ref, _x(ref, batch["src"])), _logits(ref, _x(ref, batch["trg"]))
        d_s = ref.discriminator(F.softmax(_up(ls), dim=1))
        d_t = ref.discriminator(F.softmax(_up(lt), dim=1))
    expected = {"src.decode.loss_ce": _ce(ls, y_s), "trg.loss_adv": 0.3 * (d_t ** 2).mean(),
                "disc.loss_d": 0.5 * ((d_s ** 2).mean() + ((d_t - 1) ** 2).mean())}
    _check(_step(model, optim, batch), expected)


def _write_stage1_folder(target: Path, out: Path) -> Path:
    """A ``segmenters prototypes``-style folder: hard labels (the target ground truth, which stage 1
    must NOT train on), soft labels ``soft/<stem>`` (C, 8, 16) and placeholder prototypes."""
    out.mkdir(parents=True)
    gen = torch.Generator().manual_seed(3)
    with h5py.File(out / "confidences.h5", "w") as h5:
        for s in PreparedDataset.load(target).samples("train"):
            Image.fromarray(np.array(Image.open(s.label))).save(out / f"{s.stem}.png")
            soft = F.softmax(torch.randn(C, 8, 16, generator=gen) * 2.0, dim=0)
            h5.create_dataset(f"soft/{s.stem}", data=soft.numpy().astype(np.float16))
    save_prototypes(out / "prototypes.h5", torch.zeros(C, 128), torch.ones(C))
    return out


def test_proda_stage1_step_losses(tiny_prepared, tmp_path):
    """Stage 1 at 1/4 resolution: y^ = argmax_k(w_k p_k^soft) with the prototype weights of the EMA
    teacher's features (Eq. 4-5; classes without a prototype weigh 0; normalised score below
    rectify_min_confidence -> 255), then rce_alpha CE + rce_beta RCE on y^ (RCE = -log(1e-4) sum_{k != y} p_k),
    regular_w * mean(-log p) and proto_consistW * KL(teacher || student prototype assignment)."""
    folder = _write_stage1_folder(tiny_prepared["target"], tmp_path / "pseudo")
    opts = dict(rce_alpha=0.3, rce_beta=0.7, regular_w=0.2, proto_consistW=0.5, proto_temperature=0.05,
                rectify_min_confidence=0.6, color_jitter_p=1.0, blur=False)  # strong view = weak view
    model, optim, batch = _build("proda_stage1", _cfg(proda=opts), _inputs(tiny_prepared, folder))
    y_s = _gt(tiny_prepared["source"], _stems(batch["src"]))
    trg_stems = _stems(batch["trg"])
    with torch.no_grad():
        # the EMA teacher starts as the student (eval mode: BN running statistics)
        teacher = copy.deepcopy(model).eval()
        x_t = _x(teacher, batch["trg"])
        f_t = teacher.extract_feat(x_t)[3]                                    # (B, 128, 4, 8)
        # prototypes near the teacher's own features (so the rectification is not degenerate);
        # classes 3..18 have none (count 0)
        valid = torch.zeros(C, dtype=torch.bool)
        valid[:3] = True
        protos = torch.zeros(C, f_t.shape[1])
        for k, (b, i, j) in enumerate(((0, 0, 0), (0, 3, 5), (1, 2, 7))):
            protos[k] = f_t[b, :, i, j] + 0.1 * torch.randn(f_t.shape[1], generator=torch.Generator().manual_seed(k))
        model.proto_memory.set(protos, valid.double())
        ref = copy.deepcopy(model).train()

        def assignment(f):  # softmax_k(-||f - eta_k|| T) over the classes with a prototype, (B, K, h, w)
            d = (f[:, None] - protos[valid][None, :, :, None, None]).norm(dim=2)
            return F.log_softmax(-d * 0.05, dim=1)

        w = torch.zeros(f_t.shape[0], C, *f_t.shape[2:])
        w[:, valid] = assignment(f_t).exp()
        soft = torch.stack([ds.soft_label.data.float() for ds in batch["trg"]["data_samples"]])
        with h5py.File(folder / "confidences.h5", "r") as h5:  # the stored soft labels, resized by the pipeline
            stored = torch.stack([torch.from_numpy(h5[f"soft/{s}"][()].astype(np.float32)) for s in trg_stems])
        torch.testing.assert_close(soft, _up(stored), atol=2e-3, rtol=0)
        r = _up(w, (8, 16)) * _up(soft, (8, 16))
        conf, y_rect = r.max(1)
        y_rect[conf / r.sum(1) < 0.6] = IGNORE

        ls = _logits(ref, _x(ref, batch["src"]))
        lt = _up(_logits(ref, x_t), (8, 16))
        f_s = ref.extract_feat(x_t)[3]
    valid_px = y_rect != IGNORE
    assert 0 < int(valid_px.sum()) < valid_px.numel()                       # some pixels ignored, some not
    assert bool((y_rect[valid_px] != _up(soft, (8, 16)).argmax(1)[valid_px]).any())  # rectification changed some
    p = F.softmax(lt, 1).clamp(1e-7, 1.0)
    rce_px = -math.log(1e-4) * (p.sum(1) - p.gather(1, y_rect.clamp(max=C - 1)[:, None])[:, 0])
    ce = F.cross_entropy(lt, y_rect, ignore_index=IGNORE)
    sce = 0.3 * ce + 0.7 * rce_px[valid_px].mean()
    hard = _gt(tiny_prepared["target"], trg_stems)  # the folder's png labels
    assert _differs(ce, _ce(lt, hard)) and _differs(ce, F.cross_entropy(lt, y_rect.clamp(max=C - 1)))
    log_t, log_s = assignment(f_t), assignment(f_s)
    kl = (log_t.exp() * (log_t - log_s)).sum() / log_t.numel()
    expected = {"src.decode.loss_ce": _ce(ls, y_s), "trg.loss_sce": sce,
                "trg.loss_reg": 0.2 * -F.log_softmax(lt, 1).mean(), "trg.loss_consist": 0.5 * kl}
    logs = _step(model, optim, batch)
    _check(logs, expected)
    changed = (y_rect != _up(soft, (8, 16)).argmax(1)) & valid_px
    assert logs["proda.rectified_changed"] == pytest.approx(float(changed.sum() / valid_px.sum()), rel=REL)


def test_proda_distill_step_losses(tiny_prepared, tmp_path):
    """Stages 2/3: source_weight_distill CE(G(x_s), y_s) + CE(G(x_t), y^) + S_pseudo CE(G(A(x_t)), y^)
    + distillation KL(T(x_t) || G(x_t)) (sum over pixels and classes / (C x pixels), head resolution)."""
    cfg = _cfg()
    torch.manual_seed(5)
    teacher = build_segmentor(cfg.model)
    teacher.init_weights()
    with torch.no_grad():
        for p in teacher.decode_head.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(7)) * 0.3)
    teacher_file = tmp_path / "teacher_final.pth"
    torch.save({"state_dict": teacher.state_dict()}, teacher_file)
    pseudo_dir = _write_pseudo(tiny_prepared["target"], tmp_path / "pseudo")
    cfg.uda["proda"] = dict(teacher=str(teacher_file), S_pseudo=0.4, distillation=0.6, source_weight_distill=0.7,
                            color_jitter_p=1.0, blur=False)  # strong view = weak view
    model, optim, batch = _build("proda_distill", cfg, _inputs(tiny_prepared, pseudo_dir))
    y_s = _gt(tiny_prepared["source"], _stems(batch["src"]))
    trg_stems = _stems(batch["trg"])
    y_t = _pseudo(pseudo_dir, trg_stems)
    ref = copy.deepcopy(model)
    with torch.no_grad():
        x_t = _x(ref, batch["trg"])
        ls, lt = _logits(ref, _x(ref, batch["src"])), _logits(ref, x_t)
        tl = _logits(teacher.eval(), x_t)
    ce_t = _ce(lt, y_t)
    for wrong in (y_s, _gt(tiny_prepared["target"], trg_stems), _up(lt).argmax(1), y_t.masked_fill(y_t == IGNORE, 0)):
        assert _differs(ce_t, _ce(lt, wrong))
    pt = F.softmax(tl, 1)
    kl = (pt * (pt.log() - F.log_softmax(lt, 1))).sum() / pt.numel()
    expected = {"src.decode.loss_ce": 0.7 * _ce(ls, y_s), "trg.decode.loss_ce": ce_t,
                "strong.decode.loss_ce": 0.4 * ce_t, "trg.loss_distill": 0.6 * kl}
    _check(_step(model, optim, batch), expected)


# ------------------------------------------------------------------ SePiCo
def _downscale(labels: torch.Tensor, h: int, w: int, min_ratio: float = 0.75) -> torch.Tensor:
    """Majority label of each (H/h x W/w) block, ignore counted as a class; 255 below ``min_ratio``."""
    b, hh, ww = labels.shape
    bh, bw = hh // h, ww // w
    lab = labels.masked_fill(labels == IGNORE, C)
    blocks = lab.view(b, h, bh, w, bw).permute(0, 1, 3, 2, 4).reshape(b, h, w, bh * bw)
    ratio, out = F.one_hot(blocks, C + 1).float().mean(-2).max(-1)
    return out.masked_fill((out == C) | (ratio < min_ratio), IGNORE)


def _flatten(proj: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    y = _downscale(labels, *proj.shape[-2:]).reshape(-1)
    f = proj.permute(0, 2, 3, 1).reshape(-1, proj.shape[1])
    return f[y != IGNORE], y[y != IGNORE]


def test_sepico_step_losses(tiny_prepared):
    """t = 0 (teacher = student): pseudo-labels = argmax of the teacher's softmax, weight = per-image
    fraction of max-probability >= pseudo_threshold with the top 15/640 and bottom 120/640 rows at 0;
    ClassMix of source into target (label y_s and weight 1 on source pixels),
    L_mix = sum_p w_p CE_p / #pixels; DistCL + regulariser on source (GT) and target (pseudo-labels,
    weight-0 pixels ignored) against the class statistics of the teacher's source features."""
    tau, cw, rw = 1.0, 0.5, 0.3
    cfg = _cfg(sepico=dict(start_distribution_iter=0, proj_dim=16, contrast_mode="dist", tau=tau,
                           contrastive_weight=cw, reg_relative_weight=rw, color_jitter_p=1.0, blur=False,
                           rcs_temperature=None))
    model, optim, batch = _build("sepico", cfg, _inputs(tiny_prepared))
    y_s = _gt(tiny_prepared["source"], _stems(batch["src"]))
    ref = copy.deepcopy(model)
    with torch.no_grad():
        x_s, x_t = _x(ref, batch["src"]), _x(ref, batch["trg"])
        feats_s = ref.extract_feat(x_s)
        ls = ref.decode_head(feats_s)
        feats_t = ref.extract_feat(x_t)
        conf, pseudo = F.softmax(_up(ref.decode_head(feats_t)), 1).max(1)
        threshold = float(conf.median())  # about half of the pixels confident, a different fraction per image
        frac = (conf >= threshold).float().mean((1, 2))
        assert bool((frac > 0).all() and (frac < 1).all())
        weight = frac.view(-1, 1, 1).expand(-1, H, W).clone()
        weight[:, :round(15 * H / 640)] = 0
        weight[:, H - round(120 * H / 640):] = 0

        # which classes ClassMix pastes is drawn first from the step's generator, seeded (seed 0, t 0)
        # -> 0 * 1_000_003 + 0 (class_mix_masks has its own tests); the mixing itself is done here
        mask = class_mix_masks(y_s, "half", torch.Generator().manual_seed(0)).bool()[:, 0]
        assert bool(mask.any() and (~mask).any())
        x_mix = torch.where(mask[:, None], x_s, x_t)
        y_mix = torch.where(mask, y_s, pseudo)
        w_mix = torch.where(mask, torch.ones_like(weight), weight)
        ce_mix = F.cross_entropy(_up(_logits(ref, x_mix)), y_mix, ignore_index=IGNORE, reduction="none")
        l_mix = (ce_mix * w_mix).sum() / (y_mix != IGNORE).sum()
        swapped = (ce_mix * torch.where(mask, weight, 1.0)).sum() / ce_mix.numel()  # weights on the wrong side
        assert _differs(l_mix, ce_mix.mean()) and _differs(l_mix, swapped)

        f_s, lab_s = _flatten(ref.proj_head(feats_s[3]), y_s)
        classes = lab_s.unique()
        mu = torch.zeros(C, f_s.shape[1])
        var = torch.zeros(C, f_s.shape[1])
        for k in classes:
            mu[k] = f_s[lab_s == k].mean(0)
            var[k] = f_s[lab_s == k].var(0, unbiased=False)
        known = torch.zeros(C, dtype=torch.bool)
        known[classes] = True

        def dist_cl(f, y):
            keep = known[y]
            f, y = f[keep], y[keep]
            logits = (f @ mu.t() + 0.5 * (f * f) @ var.t() / tau) / tau
            logits = logits.masked_fill(~known[None], float("-inf"))
            return (F.cross_entropy(logits, y, reduction="none") + 0.5 * ((f * f) * var[y]).sum(1) / tau ** 2).mean()

        def reg(f):
            return F.log_softmax(f.mean(0, keepdim=True) @ mu[known].t() / tau, 1).sum() / (C * math.log(C))

        y_t = pseudo.masked_fill(weight == 0, IGNORE)
        f_t, lab_t = _flatten(ref.proj_head(feats_t[3]), y_t)
        f_t_all, lab_t_all = _flatten(ref.proj_head(feats_t[3]), pseudo)
        assert _differs(dist_cl(f_t, lab_t), dist_cl(f_t_all, lab_t_all))
    expected = {"src.decode.loss_ce": _ce(ls, y_s), "mix.loss_ce": l_mix,
                "src.loss_contrast": cw * dist_cl(f_s, lab_s), "src.loss_reg": cw * rw * reg(f_s),
                "trg.loss_contrast": cw * dist_cl(f_t, lab_t), "trg.loss_reg": cw * rw * reg(f_t)}
    model.cfg = dataclasses.replace(model.cfg, pseudo_threshold=threshold)  # the threshold chosen above
    logs = _step(model, optim, batch)
    _check(logs, expected)
    assert logs["trg.pseudo_weight"] == pytest.approx(float(weight.mean()), rel=REL)


# ------------------------------------------------------------------ LDR
def test_ldr_step_losses(tiny_prepared, tmp_path):
    """BDL's L_G (pseudo-label CE, lambda_adv BCE) plus, per domain, alpha LSGAN(D_k(Omega, M(Omega)), 1)
    and beta * feature matching (weight 4/(n_layers+1)/num_D per layer) with Omega = softmax(G(x)/tau)
    at the input size and X the input in [-1, 1]; D_k: mean over domains of 1/2 [LSGAN(real, 1) + LSGAN(fake, 0)]."""
    pseudo_dir = _write_pseudo(tiny_prepared["target"], tmp_path / "pseudo")
    tau, alpha, beta = 0.5, 0.3, 2.0
    cfg = _cfg("uda.lambda_adv=0.2", "uda.lambda_pseudo=0.5", ldr=dict(tau=tau, alpha=alpha, beta=beta))
    model, optim, batch = _build("ldr", cfg, _inputs(tiny_prepared, pseudo_dir))
    y_s = _gt(tiny_prepared["source"], _stems(batch["src"]))
    trg_stems = _stems(batch["trg"])
    y_t = _pseudo(pseudo_dir, trg_stems)
    ref = copy.deepcopy(model)
    pre = ref.data_preprocessor
    expected, d_k = {}, []
    with torch.no_grad():
        x_s, x_t = _x(ref, batch["src"]), _x(ref, batch["trg"])
        ls, lt = _logits(ref, x_s), _logits(ref, x_t)
        d_s = ref.discriminator(F.softmax(_up(ls), dim=1))
        d_t = ref.discriminator(F.softmax(_up(lt), dim=1))
        for prefix, x, logits in (("src", x_s, ls), ("trg", x_t, lt)):
            omega = F.softmax(_up(logits) / tau, dim=1)
            image = ((x * pre.std.view(1, 3, 1, 1) + pre.mean.view(1, 3, 1, 1)) / 127.5 - 1).clamp(-1, 1)
            fake = ref.reconstructor(omega)
            pred_fake = ref.recon_discriminator(torch.cat([omega, fake], 1))
            pred_real = ref.recon_discriminator(torch.cat([omega, image], 1))
            expected[f"{prefix}.loss_recon_adv"] = alpha * sum(((s[-1] - 1) ** 2).mean() for s in pred_fake)
            fm = 0.0
            for sr, sf in zip(pred_real, pred_fake):
                fm = fm + sum((4.0 / (len(sf) - 1)) / len(pred_fake) * (a - b).abs().mean()
                              for a, b in zip(sr[:-1], sf[:-1]))
            expected[f"{prefix}.loss_recon_fm"] = beta * fm
            d_k.append(0.5 * (sum(((s[-1] - 1) ** 2).mean() for s in pred_real)
                              + sum((s[-1] ** 2).mean() for s in pred_fake)))
    ce_t = _ce(lt, y_t)
    for wrong in (y_s, _gt(tiny_prepared["target"], trg_stems), _up(lt).argmax(1), y_t.masked_fill(y_t == IGNORE, 0)):
        assert _differs(ce_t, _ce(lt, wrong))
    expected.update({"src.decode.loss_ce": _ce(ls, y_s), "trg.decode.loss_ce": 0.5 * ce_t,
                     "trg.loss_adv": 0.2 * _bce(d_t, 0.0),
                     "disc.loss_d": 0.5 * (_bce(d_s, 0.0) + _bce(d_t, 1.0)),
                     "recon_disc.loss_d": sum(d_k) / 2})
    _check(_step(model, optim, batch), expected)
