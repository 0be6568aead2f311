"""Hand-computed checks of flmk.metrics: normalisers, NME, CED / AUC / FR, LandmarkMetrics (incl. DDP)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flmk.layouts import get_layout
from flmk.metrics import LandmarkMetrics, auc, ced, failure_rate, nme, normaliser, threshold_key

F64 = torch.float64


def face68() -> torch.Tensor:
    """(1, 68, 2): p36 = (0, 0), p45 = (10, 10) -> io = sqrt(200); eye centroids (2, 1), (8, 9) -> ip = 10."""
    gt = torch.zeros(1, 68, 2, dtype=F64)
    eye = torch.tensor([[0, 0], [2, 0], [4, 0], [4, 2], [2, 2], [0, 2]], dtype=F64)
    gt[0, 36:42] = eye
    gt[0, 42:48] = eye + torch.tensor([6.0, 8.0], dtype=F64)
    gt[0, 30] = torch.tensor([5.0, 20.0])  # somewhere else, to show the other points do not matter
    return gt


def test_normalisers_68():
    gt = face68()
    assert normaliser(gt, "68", "io").item() == pytest.approx(math.sqrt(200))
    assert normaliser(gt, "68", "ip").item() == pytest.approx(10.0)
    box = torch.tensor([[0.0, 0.0, 40.0, 90.0]], dtype=F64)
    assert normaliser(gt, "68", "box", box).item() == pytest.approx(60.0)


@pytest.mark.parametrize(
    "layout, io_pts, ip_pts, io, ip",
    [
        ("98", {60: (1, 1), 72: (4, 5)}, {96: (0, 0), 97: (0, 7)}, 5.0, 7.0),
        ("29", {8: (2, 2), 9: (2, 10)}, {16: (0, 0), 17: (3, 4)}, 8.0, 5.0),
        ("19", {6: (0, 0), 11: (12, 5)}, {7: (1, 1), 10: (7, 9)}, 13.0, 10.0),
    ],
)
def test_normalisers_single_point_layouts(layout, io_pts, ip_pts, io, ip):
    n = get_layout(layout).num_points
    gt = torch.full((2, n, 2), 50.0, dtype=F64)
    for i, p in {**io_pts, **ip_pts}.items():
        gt[:, i] = torch.tensor(p, dtype=F64)
    gt[1] *= 2  # a second face twice as large
    torch.testing.assert_close(normaliser(gt, layout, "io"), torch.tensor([io, 2 * io], dtype=F64))
    torch.testing.assert_close(normaliser(gt, layout, "ip"), torch.tensor([ip, 2 * ip], dtype=F64))


def test_box_normaliser_19_and_missing_box():
    gt = torch.zeros(2, 19, 2)
    box = torch.tensor([[10.0, 20.0, 50.0, 110.0], [0.0, 0.0, 9.0, 4.0]])
    torch.testing.assert_close(normaliser(gt, "19", "box", box), torch.tensor([60.0, 6.0]))
    with pytest.raises(ValueError, match="needs the face box"):
        normaliser(gt, "19", "box")
    with pytest.raises(ValueError, match="unknown normaliser kind 'eye'"):
        normaliser(gt, "19", "eye")


def test_nme_two_images_hand_computed():
    gt = torch.zeros(2, 3, 2, dtype=F64)
    pred = gt.clone()
    pred[0] = torch.tensor([[3.0, 4.0], [0.0, 0.0], [6.0, 8.0]])  # errors 5, 0, 10 -> mean 5
    pred[1] = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])  # errors 1, 2, 3 -> mean 2
    norm = torch.tensor([10.0, 2.0], dtype=F64)
    torch.testing.assert_close(nme(pred, gt, norm), torch.tensor([0.5, 1.0], dtype=F64))

    visible = torch.tensor([[1, 0, 1], [1, 1, 1]])
    torch.testing.assert_close(nme(pred, gt, norm, visible), torch.tensor([0.75, 1.0], dtype=F64))
    occluded = nme(pred, gt, norm, 1 - visible)
    assert occluded[0].item() == 0.0 and torch.isnan(occluded[1])  # image 2 has no occluded point


def test_nme_non_finite_prediction_is_infinite_error():
    gt = torch.zeros(1, 3, 2)
    pred = torch.tensor([[[0.0, 0.0], [float("nan"), 0.0], [0.0, 0.0]]])
    assert torch.isinf(nme(pred, gt, torch.ones(1))).all()
    assert nme(pred, gt, torch.ones(1), torch.tensor([[1, 0, 1]])).item() == 0.0


ERRORS = [0.01, 0.02, 0.05, 0.09, 0.2]


def test_fr_auc_known_list():
    # CED is a step function: 0 on [0, .01), .2 on [.01, .02), .4 on [.02, .05), .6 on [.05, .09), .8 on [.09, t]
    assert failure_rate(ERRORS, 0.10) == pytest.approx(0.2)  # only 0.2 > 0.10
    assert failure_rate(ERRORS, 0.08) == pytest.approx(0.4)  # 0.09 and 0.2 > 0.08
    # integral to 0.10: .2*.01 + .4*.03 + .6*.04 + .8*.01 = 0.046 -> / 0.10 = 0.46
    assert auc(ERRORS, 0.10) == pytest.approx(0.46, abs=1e-3)
    # integral to 0.08: .2*.01 + .4*.03 + .6*.03 = 0.032 -> / 0.08 = 0.40
    assert auc(ERRORS, 0.08) == pytest.approx(0.40, abs=1e-3)
    assert auc([0.0] * 3, 0.1) == pytest.approx(1.0)
    assert auc([0.5] * 3, 0.1) == 0.0
    # NaN (no selected point) is ignored, not counted as a failure
    assert failure_rate(ERRORS + [float("nan")], 0.10) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="no per-image errors"):
        auc([float("nan")], 0.1)


def test_ced_grid_and_monotone():
    errors = np.random.default_rng(0).gamma(2.0, 0.02, size=200)
    x, y = ced(torch.from_numpy(errors), 0.10)
    assert len(x) == 1001 and x[0] == 0.0 and x[-1] == pytest.approx(0.10)
    assert np.allclose(np.diff(x), 1e-4)
    assert (np.diff(y) >= 0).all()
    assert y[-1] == pytest.approx(1 - failure_rate(errors, 0.10))
    assert y[0] == 0.0


def test_threshold_key():
    assert [threshold_key(t) for t in (0.08, 0.1, 0.10, 0.075)] == ["0.08", "0.10", "0.10", "0.075"]


def two_faces() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """gt (2, 68, 2) with io = sqrt(200), ip = 10; pred shifted by (3, 4) (image 0) and (0.6, 0.8) (image 1)."""
    gt = face68().repeat(2, 1, 1)
    pred = gt.clone()
    pred[0] += torch.tensor([3.0, 4.0], dtype=F64)
    pred[1] += torch.tensor([0.6, 0.8], dtype=F64)
    box = torch.tensor([[0.0, 0.0, 40.0, 90.0]] * 2, dtype=F64)  # sqrt(wh) = 60
    return pred, gt, box


def test_metric_hand_computed_all_keys():
    pred, gt, box = two_faces()
    visible = torch.ones(2, 68)
    visible[0, 40:] = 0
    m = LandmarkMetrics("68")
    m.update(pred.float(), gt.float(), box=box, visible=visible, has_visibility=torch.tensor([True, False]))
    out = m.compute()
    io = math.sqrt(200)
    per_io = [5 / io, 1 / io]  # 0.354, 0.0707
    assert out["nme_io"].item() == pytest.approx(np.mean(per_io))
    assert out["nme_ip"].item() == pytest.approx(np.mean([5 / 10, 1 / 10]))
    assert out["nme_box"].item() == pytest.approx(np.mean([5 / 60, 1 / 60]))
    assert out["fr@0.08"].item() == 0.5 and out["fr@0.10"].item() == 0.5
    # one image at 0.0707: CED = 0.5 from 0.0707 on
    assert out["auc@0.10"].item() == pytest.approx(0.5 * (0.10 - 1 / io) / 0.10, abs=1e-3)
    assert out["auc@0.08"].item() == pytest.approx(0.5 * (0.08 - 1 / io) / 0.08, abs=1e-3)
    # visibility is known for image 0 only; every point there is off by 5 px
    assert out["nme_io_visible"].item() == pytest.approx(5 / io)
    assert out["nme_io_occluded"].item() == pytest.approx(5 / io)
    assert out["count"].item() == 2
    assert all(v.dtype == F64 for k, v in out.items() if k != "count")
    per = m.per_image()
    assert torch.isnan(per["nme_io_visible"][1])
    torch.testing.assert_close(per["nme_io"], torch.tensor(per_io, dtype=F64))


def test_metric_optional_keys_and_primary():
    pred, gt, box = two_faces()
    m = LandmarkMetrics("68", thresholds=(0.05,))
    m.update(pred, gt)
    out = m.compute()
    assert set(out) == {"nme_io", "nme_ip", "fr@0.05", "auc@0.05", "count"}

    m = LandmarkMetrics("68", primary="ip", thresholds=(0.2,))
    m.update(pred, gt, box=box)
    m.update(pred, gt)  # no box here: nme_box is not reported
    out = m.compute()
    assert "nme_box" not in out and out["fr@0.20"].item() == 0.5  # ip errors 0.5 and 0.1

    m = LandmarkMetrics("19", primary="box")
    with pytest.raises(ValueError, match="needs box"):
        m.update(torch.zeros(1, 19, 2), torch.zeros(1, 19, 2))
    with pytest.raises(ValueError, match=r"pred has shape \(1, 68, 2\), expected \(1, 19, 2\)"):
        m.update(torch.zeros(1, 68, 2), torch.zeros(1, 68, 2))
    with pytest.raises(RuntimeError, match="before any update"):
        m.compute()


def test_visible_mask_bf16_inputs():
    pred, gt, _ = two_faces()
    pred[0, :10] += 100.0  # large error on the first ten points only
    visible = torch.ones(2, 68)
    visible[0, :10] = 0
    m = LandmarkMetrics("68")
    m.update(pred.bfloat16(), gt.bfloat16(), visible=visible)
    per = m.per_image()
    io = math.sqrt(200)
    assert per["nme_io_visible"].dtype == F64
    assert per["nme_io_visible"][0].item() == pytest.approx(5 / io, rel=1e-2)  # bf16 input precision
    assert per["nme_io_occluded"][0].item() > 10 * per["nme_io_visible"][0].item()
    assert torch.isnan(per["nme_io_occluded"][1])  # image 1 has no occluded point


def test_zero_normaliser_names_the_sample():
    _, gt, box = two_faces()
    gt[1, 45] = gt[1, 36]
    m = LandmarkMetrics("68")
    msg = r"sample 12 \(b/img.jpg\): inter-ocular normaliser is 0 — points 36 and 45 coincide"
    with pytest.raises(ValueError, match=msg):
        m.update(gt, gt, ids=torch.tensor([11, 12]), names=["a/img.jpg", "b/img.jpg"])

    _, gt, box = two_faces()
    gt[0, 42:48] = gt[0, 36:42]
    msg = r"sample at batch position 0: inter-pupil normaliser is 0 — the centroids of points 36–41 and 42–47 coincide"
    with pytest.raises(ValueError, match=msg):
        normaliser(gt, "68", "ip")
    box[1, 2] = 0.0
    with pytest.raises(ValueError, match=r"sample 8: face-box normaliser is 0 — face box \[0.0, 0.0, 0.0, 90.0\]"):
        normaliser(gt, "68", "box", box, ids=[7, 8])
    gt = face68()
    gt[0, 36, 0] = float("nan")
    with pytest.raises(ValueError, match="normaliser is nan — ground truth of points 36 and 45 is not finite"):
        normaliser(gt, "68", "io")


def random_batch(B: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    gt = face68().repeat(B, 1, 1) + torch.rand(B, 68, 2, generator=g, dtype=F64)
    pred = gt + 2 * torch.randn(B, 68, 2, generator=g, dtype=F64)
    visible = (torch.rand(B, 68, generator=g) > 0.3).float()
    box = torch.tensor([[0.0, 0.0, 40.0, 90.0]], dtype=F64).repeat(B, 1)
    return pred, gt, box, visible


def test_split_updates_equal_one_update():
    pred, gt, box, visible = random_batch(6, 0)
    one, two = LandmarkMetrics("68"), LandmarkMetrics("68")
    one.update(pred, gt, box, visible, ids=torch.arange(6))
    two.update(pred[4:], gt[4:], box[4:], visible[4:], ids=torch.arange(4, 6))  # order does not matter
    two.update(pred[:4], gt[:4], box[:4], visible[:4], ids=torch.arange(4))
    a, b = one.compute(), two.compute()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)
    torch.testing.assert_close(one.per_image()["nme_io"], two.per_image()["nme_io"])


def test_duplicate_ids_counted_once_first_kept():
    pred, gt, box, visible = random_batch(4, 1)
    ref = LandmarkMetrics("68")
    ref.update(pred, gt, ids=torch.arange(4))
    m = LandmarkMetrics("68")
    m.update(pred[:3], gt[:3], ids=torch.tensor([0, 1, 2]))
    wrong = pred[:1] + 50.0  # a padded duplicate of id 0 with a different value: must be dropped
    m.update(torch.cat([pred[3:], wrong]), torch.cat([gt[3:], gt[:1]]), ids=torch.tensor([3, 0]))
    out = m.compute()
    assert out["count"].item() == 4
    for k, v in ref.compute().items():
        torch.testing.assert_close(out[k], v, msg=k)
    assert m.per_image()["ids"].tolist() == [0, 1, 2, 3]


def test_missing_ids_are_all_kept():
    pred, gt, _, _ = random_batch(3, 2)
    m = LandmarkMetrics("68")
    m.update(pred, gt)
    m.update(pred[:1], gt[:1])
    assert m.compute()["count"].item() == 4
    assert m.per_image()["ids"].tolist() == [-1] * 4


def _ddp_worker(rank: int, world: int, init: str, results):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    pred, gt, box, visible = random_batch(5, 3)
    # DistributedSampler(shuffle=False) on 5 items, 2 ranks: pads with item 0 -> rank0 [0, 2, 4], rank1 [1, 3, 0]
    idx = torch.tensor([[0, 2, 4], [1, 3, 0]][rank])
    m = LandmarkMetrics("68")
    m.update(pred[idx], gt[idx], box[idx], visible[idx], ids=idx)
    out = m.compute()
    results[rank] = {k: v.item() for k, v in out.items()}
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_processes_match_single(tmp_path):
    mp = torch.multiprocessing.get_context("spawn")
    with mp.Manager() as manager:
        results = manager.dict()
        torch.multiprocessing.start_processes(
            _ddp_worker, args=(2, f"file://{tmp_path}/init", results), nprocs=2, start_method="spawn"
        )
        results = dict(results)
    pred, gt, box, visible = random_batch(5, 3)
    ref = LandmarkMetrics("68")
    ref.update(pred, gt, box, visible, ids=torch.arange(5))
    expected = {k: v.item() for k, v in ref.compute().items()}
    assert results[0]["count"] == 5
    for rank in (0, 1):
        assert results[rank] == pytest.approx(expected)


def test_update_rejects_bad_shapes_and_non_finite_ground_truth():
    pred, gt, box = two_faces()
    m = LandmarkMetrics("68")
    with pytest.raises(ValueError, match=r"visible has shape \(2, 67\), expected \(2, 68\)"):
        m.update(pred, gt, visible=torch.ones(2, 67))
    with pytest.raises(ValueError, match=r"box has shape \(2, 2\), expected \(2, 4\)"):
        m.update(pred, gt, box=box[:, :2])
    gt[1, 3, 1] = float("inf")
    with pytest.raises(ValueError, match=r"sample 5 \(y.png\): ground truth of points \[3\] is not finite"):
        m.update(pred, gt, ids=torch.tensor([4, 5]), names=["x.png", "y.png"])
