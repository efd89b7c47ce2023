"""ProDA stages (segmenters/uda/proda.py) and the prototypes CLI (segmenters/prototypes.py):
tiny trains of warm-up -> prototypes -> stage 1 -> stage 2, loadable final.pth, h5 shapes, bad input."""
from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pytest
import torch

import segmenters  # noqa: F401
from segmenters.loader import load_segmenter
from segmenters.prototypes import main as prototypes_main
from segmenters.pseudolabel import main as pseudolabel_main
from segmenters.uda.base import TrainError
from segmenters.uda.proda import gan_loss
from segmenters.uda.proda_parts import PrototypeMemory, load_prototypes, rectification_weights

from test_segmenters_train import cli_args, run


@pytest.fixture(scope="module")
def chain(tiny_prepared, tmp_path_factory):
    """warm-up (r0) -> prototypes folder -> stage 1 (r1) -> hard 0.95 labels -> stage 2 (r2)."""
    root = tmp_path_factory.mktemp("proda")
    out = {"root": root}
    out["r0"] = run(cli_args(tiny_prepared, root / "r0", "proda_warmup", "deeplabv2", max_iters=2)).final
    out["p0"] = root / "pseudo_r0"
    assert prototypes_main(["--checkpoint", str(out["r0"]), "--target", str(tiny_prepared["target"]),
                            "--out", str(out["p0"])]) == 0
    out["r1"] = run(cli_args(tiny_prepared, root / "r1", "proda_stage1", "deeplabv2", "--pseudo", str(out["p0"]),
                             "--init", str(out["r0"]), max_iters=2)).final
    out["p1"] = root / "pseudo_r1"
    assert pseudolabel_main(["--checkpoint", str(out["r1"]), "--target", str(tiny_prepared["target"]),
                             "--out", str(out["p1"]), "--rule", "fixed", "--threshold", "0.95"]) == 0
    out["r2"] = run(cli_args(tiny_prepared, root / "r2", "proda_distill", "deeplabv2", "--pseudo", str(out["p1"]),
                             "--init", str(out["r1"]), max_iters=2,
                             options=(f"uda.proda.teacher={out['r1']}",))).final
    return out


def test_each_stage_writes_a_loadable_final_pth(chain):
    for key, uda in (("r0", "proda_warmup"), ("r1", "proda_stage1"), ("r2", "proda_distill")):
        seg = load_segmenter(chain[key])
        assert seg.meta["uda"] == uda and seg.meta["iter"] == 2
        assert seg.meta["model_cfg"]["decode_head"]["type"] == "DLV2Head"
        # no teacher / discriminator / prototype keys leak into the EncoderDecoder state dict
        keys = torch.load(chain[key], weights_only=True)["state_dict"].keys()
        assert not any(k.split(".")[0] in ("ema_teacher", "teacher", "proto_memory", "discriminator") for k in keys)
        probs = seg.predict_probs(torch.rand(1, 3, 32, 64) * 255)
        assert probs.shape == (1, 19, 32, 64) and torch.allclose(probs.sum(1), torch.ones(1, 32, 64), atol=1e-4)


def _softmax_at_test_scale(checkpoint, image) -> torch.Tensor:
    """(1, C, h, w) softmax of a final.pth's EncoderDecoder (rebuilt from its meta, not via the loader)
    on an RGB image resized bilinearly to the checkpoint's test_scale."""
    import cv2
    from PIL import Image

    from segmenters.checkpoint import build_segmentor

    final = torch.load(checkpoint, weights_only=True)
    model = build_segmentor(final["meta"]["model_cfg"]).eval()
    model.load_state_dict(final["state_dict"])
    img = cv2.resize(np.array(Image.open(image).convert("RGB")), tuple(final["meta"]["test_scale"]),
                     interpolation=cv2.INTER_LINEAR)
    pre = model.data_preprocessor
    x = (torch.from_numpy(img).permute(2, 0, 1)[None].float() - pre.mean.view(1, 3, 1, 1)) / pre.std.view(1, 3, 1, 1)
    with torch.no_grad():
        return model.encode_decode(x, [dict(img_shape=x.shape[-2:], ori_shape=x.shape[-2:])]).softmax(dim=1)


def test_prototypes_cli_writes_h5_with_the_right_shapes(chain, tiny_prepared):
    from domains.prepared import PreparedDataset

    folder = chain["p0"]
    meta = json.loads((folder / "meta.json").read_text())
    stems = [p.stem for p in sorted(folder.glob("*.png"))]
    assert len(stems) == meta["num_images"] == 8
    protos, counts = load_prototypes(folder / "prototypes.h5")
    # tiny DeepLab-V2: backbone layer4 has 128 channels (the DLV2Head input)
    assert protos.shape == (19, 128) == (meta["num_classes"], meta["feat_dim"])
    assert counts.shape == (19,) and counts.sum() > 0
    assert torch.all(protos[counts == 0] == 0)  # a class never predicted keeps a zero prototype
    images = {s.stem: s.image for s in PreparedDataset.load(tiny_prepared["target"]).samples("train")}
    with h5py.File(folder / "confidences.h5", "r") as h5:
        for stem in stems:
            soft = h5[f"soft/{stem}"][()]
            assert soft.dtype == np.float16 and soft.shape == (19, 8, 16)  # 0.25 x the native 32x64
            # = the warm-up model's own softmax, resized bilinearly to the soft size (float16 storage)
            probs = _softmax_at_test_scale(chain["r0"], images[stem])
            expected = torch.nn.functional.interpolate(probs, size=(8, 16), mode="bilinear", align_corners=False)[0]
            np.testing.assert_allclose(soft.astype(np.float32), expected.numpy(), rtol=0, atol=2.0 ** -12 + 1e-5)
            assert h5[f"maxprob/{stem}"].shape == (32, 64)
    assert not list(folder.parent.glob(f".{folder.name}.tmp-*"))  # atomic: no temporary folder left


def test_rectification_weights_match_a_hand_computation():
    f = torch.tensor([[0.0, 0.0], [3.0, 0.0]]).T.reshape(1, 2, 1, 2)  # two pixels: (0,0) and (3,0)
    eta = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    w = rectification_weights(f, eta, temperature=1.0)
    # pixel (0,0): distances 0, 1, 2 -> softmax(-(d - 0)) = e^0, e^-1, e^-2
    d = torch.tensor([0.0, 1.0, 2.0])
    np.testing.assert_allclose(w[0, :, 0, 0].numpy(), torch.softmax(-d, 0).numpy(), rtol=1e-5)
    # pixel (3,0): distances 3, 2, sqrt(13) -> minus the minimum 2
    d = torch.tensor([3.0, 2.0, math.sqrt(13.0)]) - 2.0
    np.testing.assert_allclose(w[0, :, 0, 1].numpy(), torch.softmax(-d, 0).numpy(), rtol=1e-5)


def test_prototype_class_absent_from_the_batch_keeps_its_prototype():
    mem = PrototypeMemory(3, 2, momentum=0.5, min_pixels=1)
    mem.set(torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]))
    feats = torch.tensor([[[[5.0, 5.0]], [[7.0, 7.0]]]])  # (1, 2, 1, 2): both pixels (5,7)? -> vector (5, 7)
    labels = torch.zeros(1, 1, 2, dtype=torch.long)  # only class 0 present
    updated = mem.update(feats, labels)
    assert updated.tolist() == [True, False, False]
    torch.testing.assert_close(mem.prototypes[0], torch.tensor([3.0, 4.0]))  # 0.5 * (1,1) + 0.5 * (5,7)
    torch.testing.assert_close(mem.prototypes[1:], torch.tensor([[2.0, 2.0], [3.0, 3.0]]))


def test_lsgan_warmup_losses():
    zeros = torch.zeros(1, 1, 2, 2)
    assert gan_loss(zeros, 1.0, "LS").item() == pytest.approx(1.0)
    assert gan_loss(torch.ones(1, 1, 2, 2), 1.0, "LS").item() == pytest.approx(0.0)
    assert gan_loss(zeros, 0.0, "Vanilla").item() == pytest.approx(math.log(2))
    with pytest.raises(ValueError, match="uda.proda.gan"):
        gan_loss(zeros, 0.0, "wgan")


def test_missing_soft_pseudo_labels_name_the_stems_and_folder(chain, tiny_prepared, tmp_path):
    broken = tmp_path / "pseudo"
    import shutil

    shutil.copytree(chain["p0"], broken)
    with h5py.File(broken / "confidences.h5", "a") as h5:
        stems = sorted(h5["soft"].keys())
        del h5[f"soft/{stems[0]}"]
    with pytest.raises(TrainError, match=rf"confidences.h5: 1 of 8 soft pseudo-labels missing: {stems[0]}"):
        run(cli_args(tiny_prepared, tmp_path / "w", "proda_stage1", "deeplabv2", "--pseudo", str(broken), max_iters=1))
    (broken / "prototypes.h5").unlink()
    with pytest.raises(TrainError, match=r"pseudo: ProDA stage-1 pseudo-label folder has no prototypes.h5"):
        run(cli_args(tiny_prepared, tmp_path / "w", "proda_stage1", "deeplabv2", "--pseudo", str(broken), max_iters=1))


def test_missing_png_pseudo_labels_name_the_stems(chain, tiny_prepared, tmp_path):
    import shutil

    from domains.prepared import PreparedDataError

    broken = tmp_path / "hard"
    shutil.copytree(chain["p1"], broken)
    victim = sorted(broken.glob("*.png"))[0]
    victim.unlink()
    with pytest.raises(PreparedDataError, match=rf"hard: 1 of 8 pseudo-labels missing: {victim.stem}"):
        run(cli_args(tiny_prepared, tmp_path / "w", "proda_distill", "deeplabv2", "--pseudo", str(broken),
                     max_iters=1, options=(f"uda.proda.teacher={chain['r1']}",)))


def test_teacher_from_a_mismatched_checkpoint_names_the_file(chain, tiny_prepared, tmp_path):
    wrong = run(cli_args(tiny_prepared, tmp_path / "fcn", "source_only", "fcn8s", max_iters=1)).final
    with pytest.raises(ValueError, match=rf"uda.proda.teacher: {wrong} does not match the student"):
        run(cli_args(tiny_prepared, tmp_path / "w", "proda_distill", "deeplabv2", "--pseudo", str(chain["p1"]),
                     max_iters=1, options=(f"uda.proda.teacher={wrong}",)))
    with pytest.raises(TrainError, match="uda.proda.teacher"):
        run(cli_args(tiny_prepared, tmp_path / "w2", "proda_distill", "deeplabv2", "--pseudo", str(chain["p1"]),
                     max_iters=1))


def test_unknown_proda_setting_is_named():
    from segmenters.uda.proda import _split_settings

    with pytest.raises(TrainError, match="uda.proda.bogus"):
        _split_settings({"bogus": 1})
    cfg, opts = _split_settings({"adv": 0.02, "teacher": "x.pth", "proto_consistW": 0.0})
    assert cfg.adv == 0.02 and cfg.proto_consistW == 0.0 and opts.teacher == "x.pth"


def test_classes_without_prototype_get_no_rectification_weight(chain, tiny_prepared):
    from mmengine.registry import DefaultScope
    from mmseg.registry import MODELS
    from segmenters.configs import load_config
    from segmenters.uda import ProDAStage1, TrainInputs

    from test_segmenters_train import SMALL

    cfg = load_config("deeplabv2", "tiny", SMALL)
    inputs = TrainInputs(source=tiny_prepared["source"], target=tiny_prepared["target"], pseudo=chain["p0"])
    with DefaultScope.overwrite_default_scope("mmseg"):
        model = MODELS.build(ProDAStage1().model(cfg, inputs))
    counts = model.proto_memory.counts
    assert (counts == 0).any() and (counts > 0).any()
    w = model.masked_rectification_weights(torch.randn(2, model.proto_memory.dim, 4, 8))
    assert torch.all(w[:, counts == 0] == 0)
    torch.testing.assert_close(w.sum(1), torch.ones(2, 4, 8))


def test_soft_pseudo_labels_stay_aligned_with_image_crops_and_flips(chain, tiny_prepared):
    """The packed soft label's argmax matches the hard argmax PNG (same model) through resize/crop/flip."""
    from mmengine.registry import DefaultScope
    from segmenters.configs import load_config
    from segmenters.datasets import PreparedSegDataset
    from segmenters.uda import ProDAStage1, TrainInputs

    cfg = load_config("deeplabv2", "tiny", ["crop_size=(16,32)", "target_scale=(64,32)"])
    inputs = TrainInputs(source=tiny_prepared["source"], target=tiny_prepared["target"], pseudo=chain["p0"])
    spec = ProDAStage1().train_dataset(cfg, inputs)["target"]
    spec["pipeline"][[t["type"] for t in spec["pipeline"]].index("RandomFlip")]["prob"] = 1.0
    spec.pop("type")
    with DefaultScope.overwrite_default_scope("mmseg"):
        ds = PreparedSegDataset(**spec)
    agree = []
    for i in range(len(ds)):
        sample = ds[i]["data_samples"]
        assert sample.flip
        soft, hard = sample.soft_label.data.float(), sample.gt_sem_seg.data[0].long()
        assert soft.shape == (19, 16, 32)
        agree.append((soft.argmax(0) == hard).float().mean().item())
    # measured: >= 0.94 per image when aligned; a missing/double flip gives 0.70-0.91 (mean ~0.80)
    assert min(agree) > 0.9 and sum(agree) / len(agree) > 0.93, agree


def test_teachers_survive_the_runners_weight_init(chain, tiny_prepared):
    """mmengine's Runner calls init_weights() before training: the teacher must still be the file's."""
    from mmengine.registry import DefaultScope
    from mmseg.registry import MODELS
    from segmenters.configs import load_config
    from segmenters.uda import ProDADistill, ProDAStage1, TrainInputs

    from test_segmenters_train import SMALL

    cfg = load_config("deeplabv2", "tiny", [*SMALL, f"uda.proda.teacher={chain['r1']}"])
    expected = torch.load(chain["r1"], weights_only=True)["state_dict"]
    for method, pseudo, attr in ((ProDADistill(), chain["p1"], "teacher"), (ProDAStage1(), chain["p0"], "ema_teacher")):
        inputs = TrainInputs(source=tiny_prepared["source"], target=tiny_prepared["target"], pseudo=pseudo)
        with DefaultScope.overwrite_default_scope("mmseg"):
            model = MODELS.build(method.model(cfg, inputs))
            model.init_weights()
        state = getattr(model, attr).state_dict()
        for key, value in expected.items():
            torch.testing.assert_close(state[key], value, msg=f"{attr}.{key}")
