"""ProDA components (segmenters/uda/proda_parts.py): prototype rectification, prototype memory and its
h5 file, symmetric CE, prototype consistency, MRKLD, stage-2/3 helpers, config."""
from __future__ import annotations

import math

import h5py
import pytest
import torch
import torch.nn.functional as F

from segmenters.uda.proda_parts import (ProDAConfig, PrototypeMemory, class_mean_vectors, distillation_kl,
                                        feature_prototype_distances, hard_pseudo_labels, kl_uniform_regulariser,
                                        load_prototypes, prototype_consistency_loss, rectification_weights,
                                        rectify_pseudo_labels, reverse_cross_entropy, save_prototypes,
                                        symmetric_cross_entropy)

PROTOS = torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])
# two pixels: A = (0, 0), B = (3, 0); features (B=1, D=2, h=1, w=2)
FEATS = torch.tensor([[[[0.0, 3.0]], [[0.0, 0.0]]]])


def _softmax(xs):
    e = [math.exp(x) for x in xs]
    return [v / sum(e) for v in e]


def test_rectification_weights_hand_computed():
    d = feature_prototype_distances(FEATS, PROTOS)
    torch.testing.assert_close(d[0, :, 0, 0], torch.tensor([0.0, 5.0, 10.0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(d[0, :, 0, 1], torch.tensor([3.0, 4.0, math.sqrt(73)]), atol=1e-5, rtol=0)
    T = 0.5
    w = rectification_weights(FEATS, PROTOS, temperature=T)
    # w_k = softmax_k(-(d_k - min_j d_j) * T)
    hand_a = _softmax([-(0 - 0) * T, -(5 - 0) * T, -(10 - 0) * T])
    hand_b = _softmax([-(3 - 3) * T, -(4 - 3) * T, -(math.sqrt(73) - 3) * T])
    torch.testing.assert_close(w[0, :, 0, 0], torch.tensor(hand_a), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(w[0, :, 0, 1], torch.tensor(hand_b), atol=1e-6, rtol=1e-5)
    assert not w.requires_grad


def test_rectify_pseudo_labels_reweights_and_ignores():
    w = rectification_weights(FEATS, PROTOS, temperature=0.5)
    soft = torch.tensor([[0.2, 0.7, 0.1], [0.1, 0.2, 0.7]]).t().reshape(1, 3, 1, 2)
    assert soft.argmax(1).tolist() == [[[1, 2]]]
    # the prototypes overturn both soft labels: A -> nearest class 0, B -> class 1
    assert rectify_pseudo_labels(soft, w).tolist() == [[[0, 1]]]
    # normalised rectified confidence: A ~0.77, B ~0.46
    assert rectify_pseudo_labels(soft, w, min_confidence=0.5).tolist() == [[[0, 255]]]
    with pytest.raises(ValueError, match="resize"):
        rectify_pseudo_labels(soft[..., :1], w)


def _feats_labels():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 2, 4, 4, generator=g)
    labels = torch.zeros(2, 4, 4, dtype=torch.long)
    labels[0, 3] = 1  # class 1: 4 pixels in image 0 (< min_pixels 10)
    labels[1, 0, :2] = 255
    return feats, labels


def test_prototype_memory_moving_average_absent_classes_and_mean_mode():
    feats, labels = _feats_labels()
    v0 = feats[0][:, labels[0] == 0].mean(1)
    v1 = feats[1][:, labels[1] == 0].mean(1)
    vectors, present = class_mean_vectors(feats, labels, 3, min_pixels=10)
    torch.testing.assert_close(vectors[0, 0], v0)
    assert present.tolist() == [[True, False, False], [True, False, False]]

    mem = PrototypeMemory(3, 2, momentum=0.1)
    start = torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    mem.set(start)
    updated = mem.update(feats, labels)
    assert updated.tolist() == [True, False, False]
    expected0 = 0.9 * (0.9 * start[0] + 0.1 * v0) + 0.1 * v1  # images in batch order
    torch.testing.assert_close(mem.prototypes[0], expected0)
    assert torch.equal(mem.prototypes[1:], start[1:])  # absent / too small classes keep their prototype

    fresh = PrototypeMemory(3, 2, momentum=0.1)  # never initialised: first vector becomes the prototype
    fresh.update(feats, labels)
    torch.testing.assert_close(fresh.prototypes[0], 0.9 * v0 + 0.1 * v1)
    assert fresh.initialized.tolist() == [True, False, False]

    offline = PrototypeMemory(3, 2)
    offline.update(feats, labels, mode="mean")
    torch.testing.assert_close(offline.prototypes[0], (v0 + v1) / 2)
    assert offline.counts.tolist() == [2.0, 0.0, 0.0]


def test_prototype_h5_round_trip_and_errors(tmp_path):
    protos, counts = torch.randn(19, 8), torch.arange(19, dtype=torch.float64)
    path = save_prototypes(tmp_path / "proto" / "prototypes.h5", protos, counts)
    assert path.is_file() and not list(path.parent.glob("*.tmp"))
    p2, c2 = load_prototypes(path, expect_shape=(19, 8))
    assert torch.equal(p2, protos) and torch.equal(c2, counts)
    mem = PrototypeMemory(19, 8)
    mem.set(p2, c2)
    assert torch.equal(mem.prototypes, protos)
    with pytest.raises(ValueError, match=r"prototypes.h5.*\(19, 8\).*\(16, 8\).*recompute"):
        load_prototypes(path, expect_shape=(16, 8))
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        load_prototypes(tmp_path / "missing.h5")
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("features", data=[1, 2])
    with pytest.raises(ValueError, match="other.h5: not a prototype file"):
        load_prototypes(other)
    text = tmp_path / "text.h5"
    text.write_text("not hdf5")
    with pytest.raises(ValueError, match="text.h5"):
        load_prototypes(text)


def test_symmetric_cross_entropy_parts():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 3, 5, generator=g, requires_grad=True)
    labels = torch.randint(0, 4, (2, 3, 5), generator=g)
    labels[0, 0] = 255
    valid = labels != 255
    ce = F.cross_entropy(logits, labels, ignore_index=255)
    p = F.softmax(logits, 1).clamp(min=1e-7)
    p_y = p.gather(1, labels.clamp(max=3)[:, None])[:, 0]
    # RCE with log(0) := log(1e-4): -log(1e-4) * sum_{k != y} p_k  (= 9.21 (1 - p_y))
    rce_hand = (-math.log(1e-4) * (p.sum(1) - p_y))[valid].mean()
    torch.testing.assert_close(reverse_cross_entropy(logits, labels), rce_hand)
    torch.testing.assert_close(symmetric_cross_entropy(logits, labels, 1.0, 0.0), ce)
    torch.testing.assert_close(symmetric_cross_entropy(logits, labels, 0.0, 1.0), rce_hand)
    sce = symmetric_cross_entropy(logits, labels)  # alpha 0.1, beta 1.0
    torch.testing.assert_close(sce, 0.1 * ce + 1.0 * rce_hand)
    assert 0 <= rce_hand.item() <= -math.log(1e-4)  # RCE is bounded: robust to wrong labels
    sce.backward()
    assert torch.isfinite(logits.grad).all()
    all_ignored = symmetric_cross_entropy(logits, torch.full_like(labels, 255))
    assert all_ignored.item() == 0.0


def test_prototype_consistency_loss():
    g = torch.Generator().manual_seed(1)
    protos = torch.randn(3, 4, generator=g)
    teacher = torch.randn(1, 4, 2, 2, generator=g, requires_grad=True)
    student = (teacher.detach() + 0.5 * torch.randn(1, 4, 2, 2, generator=g)).requires_grad_()
    assert prototype_consistency_loss(teacher.detach(), teacher, protos).item() == pytest.approx(0.0, abs=1e-6)
    T = 2.0
    loss = prototype_consistency_loss(student, teacher, protos, temperature=T)
    t = F.softmax(-feature_prototype_distances(teacher, protos) * T, 1)
    s = F.softmax(-feature_prototype_distances(student, protos) * T, 1)
    hand = (t * (t.log() - s.log())).sum(1).mean() / 3  # KL per pixel, / C as the public code
    torch.testing.assert_close(loss, hand)
    loss.backward()
    assert student.grad.abs().sum() > 0 and teacher.grad is None
    mask = torch.zeros(1, 2, 2, dtype=torch.bool)
    mask[0, 0, 0] = True
    masked = prototype_consistency_loss(student, teacher, protos, T, valid_mask=mask)
    torch.testing.assert_close(masked, (t * (t.log() - s.log())).sum(1)[0, 0, 0] / 3)


def test_mrkld_hard_labels_and_distillation():
    assert kl_uniform_regulariser(torch.zeros(2, 19, 3, 3)).item() == pytest.approx(math.log(19))
    peaked = torch.zeros(1, 19, 1, 1)
    peaked[0, 0] = 10
    assert kl_uniform_regulariser(peaked).item() > math.log(19)

    probs = torch.tensor([[0.95, 0.05], [0.04, 0.96], [0.5, 0.5]]).t().reshape(1, 2, 1, 3)
    assert hard_pseudo_labels(probs, 0.95).tolist() == [[[255, 1, 255]]]  # conf <= threshold -> ignore

    g = torch.Generator().manual_seed(2)
    teacher = torch.randn(2, 5, 3, 3, generator=g)
    student = torch.randn(2, 5, 3, 3, generator=g, requires_grad=True)
    assert distillation_kl(teacher.clone(), teacher).item() == pytest.approx(0.0, abs=1e-6)
    t, ls = F.softmax(teacher, 1), F.log_softmax(student, 1)
    torch.testing.assert_close(distillation_kl(student, teacher), (t * (t.log() - ls)).sum() / t.numel())
    distillation_kl(student, teacher).backward()
    assert student.grad.abs().sum() > 0


def test_proda_config():
    cfg = ProDAConfig()
    assert (cfg.proto_momentum, cfg.rce_alpha, cfg.rce_beta, cfg.proto_consistW, cfg.regular_w,
            cfg.threshold) == (1e-4, 0.1, 1.0, 10.0, 0.1, 0.95)
    assert cfg.lr == 1e-4 and ProDAConfig(stage="stage2").lr == 6e-4
    assert ProDAConfig.from_dict({"type": "ProDA", "proto_temperature": 2.0}).proto_temperature == 2.0
    with pytest.raises(ValueError, match="uda.proto_temp"):
        ProDAConfig.from_dict({"proto_temp": 1.0})
