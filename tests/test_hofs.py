"""HOFS: MDP mechanics, DQN target, clip replay, TD loss, a Lightning smoke run and the stages' checkpoints."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from flmk.models.hofs import (ClipReplay, HOFSModule, candidate_indices, dqn_target, epsilon_greedy, hofs_reward)
from flmk.models.srn import SRN, SRNTracker
from flmk.models.tracking import MissingCheckpointError

TINY = dict(crop_size=32, patch_size=12, conv_channels=(4, 8, 8), conv_kernels=(3, 1, 1), conv_init_std=None,
            nl_inter_channels=4, rnn_hidden=16, g_dim=16, f_dim=8, noise_size=6)


def test_candidates_move_by_one_and_clamp_at_the_ends():
    cand = candidate_indices(torch.tensor([0, 5, 67]), 68)
    assert cand.tolist() == [[0, 0, 1], [4, 5, 6], [66, 67, 67]]


def test_epsilon_greedy():
    q = torch.tensor([[0.0, 2.0, 1.0]]).expand(4000, -1)
    assert (epsilon_greedy(q, 0.0) == 1).all()
    counts = torch.bincount(epsilon_greedy(q, 1.0, torch.Generator().manual_seed(0)), minlength=3).float() / 4000
    assert (counts - 1 / 3).abs().max() < 0.03
    greedy_share = (epsilon_greedy(q, 0.1, torch.Generator().manual_seed(1)) == 1).float().mean()
    assert abs(greedy_share - (0.9 + 0.1 / 3)) < 0.02


def test_dqn_target_by_hand():
    y = dqn_target(torch.tensor([1.0, 2.0]), torch.tensor([[0.5, 3.0, 1.0], [4.0, 0.0, 0.0]]),
                   torch.tensor([False, True]), gamma=0.9)
    torch.testing.assert_close(y, torch.tensor([1.0 + 0.9 * 3.0, 2.0]))


def test_reward_is_eq10_in_crop_pixels():
    target = torch.zeros(1, 68, 2)
    target[0, 45, 0] = 0.5                                  # eta = 0.5 * 32 = 16 px
    pred = target.clone()
    pred[0, :2, 0] += 0.25                                  # two points off by 8 px
    torch.testing.assert_close(hofs_reward(pred, target, (36, 45), 32), torch.tensor([2 * 64 / (68 * 16)]))


def _clip(cid: int, t: int) -> dict:
    return {"frame": torch.full((t, 1, 2, 2), float(cid)), "noise": torch.zeros(t, 1, 2, 2),
            "points": torch.zeros(t, 3, 2), "index": torch.arange(t), "reward": cid * 100 + torch.arange(t).float()}


def test_replay_keeps_the_last_k_clips_and_pairs_consecutive_frames():
    replay = ClipReplay(clips=3)
    for cid, t in enumerate([4, 5, 2, 3]):
        replay.push(_clip(cid, t))
    assert len(replay) == 5 + 2 + 3                         # clip 0 was dropped
    batch = replay.sample(3000, torch.Generator().manual_seed(0))
    cid, t = batch["reward"].div(100).floor().long(), batch["reward"].remainder(100).long()
    assert set(cid.tolist()) == {1, 2, 3}
    seen = {(c, s) for c, s in zip(cid.tolist(), t.tolist())}
    assert len(seen) == 10                                  # every stored transition is drawn
    length = torch.tensor([0, 5, 2, 3])[cid]
    assert torch.equal(batch["done"], t == length - 1)
    assert torch.equal(batch["next_frame"][:, 0, 0, 0], cid.float())    # next state from the same clip
    assert torch.equal(batch["index"], t)


def _module(**kw) -> HOFSModule:
    torch.manual_seed(0)
    kw = {"allow_scratch": True, **kw}  # a random SRN stands in for the pre-trained one
    return HOFSModule(SRN(**TINY), optimizer=lambda params: torch.optim.Adam(params, lr=1e-3), crop_size=32, **kw)


def test_rollout_moves_the_occlusion_as_the_actions_say():
    module = _module()
    policy = module.policy
    policy.q_values = lambda frame, noise, points, index, qnet=None: torch.tensor([[0.0, 0.0, 1.0]]).expand(
        index.shape[0], -1)                                 # always "index + 1"
    points = torch.rand(1, 5, 68, 2) * 0.6 + 0.2
    image = torch.zeros(1, 5, 3, 32, 32)
    torch.manual_seed(3)
    play = policy.rollout(image, points, epsilon=0.0)
    start = play["index"][0, 0].item() - 1
    expected = [min(start + 1 + t, 67) for t in range(5)]
    assert play["index"][0].tolist() == expected and (play["action"] == 2).all()
    for t in range(5):                                      # the square sits on the chosen GT landmark
        mask = (play["occluded"][0, t] != 0).any(0)
        u = (points[0, t, expected[t]] * 32 - 0.5).round().long().clamp(3, 28)
        assert mask.sum() == 36 and mask[u[1], u[0]]
    policy.q_values = lambda frame, noise, points, index, qnet=None: torch.tensor([[1.0, 0.0, 0.0]]).expand(
        index.shape[0], -1)                                 # always "index - 1": stops at 0
    play = policy.rollout(torch.zeros(1, 70, 3, 32, 32), torch.rand(1, 70, 68, 2), epsilon=0.0)
    assert play["index"][0, -1] == 0 and (play["index"][0, 1:] <= play["index"][0, :-1]).all()


def test_td_loss_equals_hand_computed_target():
    module = _module(gamma=0.9)
    with torch.no_grad():
        module.target_qnet.head[2].bias.add_(1.0)          # target differs from the online net
    replay = ClipReplay(3)
    replay.push({"frame": torch.randn(2, 3, 32, 32), "noise": torch.randn(2, 3, 32, 32),
                 "points": torch.rand(2, 68, 2), "index": torch.tensor([10, 11]), "reward": torch.tensor([0.5, 2.0])})
    batch = replay.sample(4, torch.Generator().manual_seed(0))
    policy = module.policy
    q = policy.q_values(batch["frame"], batch["noise"], batch["points"], batch["index"][:, None])[:, 0]
    cand = torch.stack([batch["index"] - 1, batch["index"], batch["index"] + 1], 1)
    next_q = policy.q_values(batch["next_frame"], batch["next_noise"], batch["next_points"], cand,
                             qnet=module.target_qnet)
    y = batch["reward"] + 0.9 * next_q.max(1).values * (~batch["done"])
    torch.testing.assert_close(module.td_loss(batch), ((q - y) ** 2).mean().detach())
    module.sync_target()
    for a, b in zip(module.target_qnet.parameters(), module.policy.qnet.parameters()):
        torch.testing.assert_close(a, b)


def test_q_net_starts_from_the_srn_conv_stack():
    module = _module()
    for a, b in zip(module.policy.qnet.encoder.parameters(), module.net.encoder.parameters()):
        torch.testing.assert_close(a, b)
    assert not any(p.requires_grad for p in module.net.parameters())
    fresh = _module(q_init_from_srn=False)
    assert not torch.equal(fresh.policy.qnet.encoder.body[0].weight, fresh.net.encoder.body[0].weight)


def test_lightning_run_then_tracker_fine_tune_uses_the_policy(tmp_path):
    g = torch.Generator().manual_seed(0)
    clips = [{"image": torch.randn(3, 3, 32, 32, generator=g), "points": torch.rand(3, 68, 2, generator=g) * 0.6 + 0.2}
             for _ in range(4)]
    module = _module(replay_batch=4, updates_per_step=2, target_sync=3)
    trainer = pl.Trainer(max_steps=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    before = [p.clone() for p in module.policy.qnet.parameters()]
    trainer.fit(module, DataLoader(clips, batch_size=2))
    assert int(module.updates) == 4 and len(module.replay) == 3 * 3  # max_steps counts Q updates: 2 steps x 2
    assert any(not torch.equal(a, b) for a, b in zip(before, module.policy.qnet.parameters()))
    for key in ("train/reward", "train/td_loss", "train/action_0", "train/action_1", "train/action_2"):
        assert key in trainer.callback_metrics
    trainer.save_checkpoint(tmp_path / "hofs.ckpt")
    tracker = SRNTracker(occlusion_policy="hofs", hofs_ckpt=str(tmp_path / "hofs.ckpt"), allow_scratch=True,
                         **TINY).train()
    for a, b in zip(tracker.hofs_policy.qnet.parameters(), module.policy.qnet.parameters()):
        torch.testing.assert_close(a, b)
    assert not tracker.hofs_policy.training
    out = tracker(torch.zeros(1, 3, 3, 32, 32), points=torch.full((1, 3, 68, 2), 0.5))
    assert out["points"].shape == (1, 3, 68, 2)


@pytest.mark.parametrize(("policy", "given", "missing"), [
    ("none", (), ("srn_ckpt",)),
    ("rsf", (), ("srn_ckpt",)),
    ("hofs", (), ("srn_ckpt", "hofs_ckpt")),
    ("hofs", ("srn_ckpt",), ("hofs_ckpt",)),
    ("none", ("srn_ckpt",), ()),
])
def test_srn_tracker_needs_the_earlier_stages_unless_scratch_is_allowed(policy, given, missing, tmp_path):
    torch.save(SRN(**TINY).state_dict(), tmp_path / "srn.pt")
    ckpts = {"srn_ckpt": str(tmp_path / "srn.pt")} if "srn_ckpt" in given else {}
    if not missing:
        SRNTracker(occlusion_policy=policy, **ckpts, **TINY)  # everything it fine-tunes is given
        return
    with pytest.raises(MissingCheckpointError) as refused:
        SRNTracker(occlusion_policy=policy, **ckpts, **TINY)
    message = str(refused.value)
    for key in ("srn_ckpt", "hofs_ckpt"):
        assert (f"model.net.{key} is null" in message) == (key in missing)
    assert ("`python -m flmk.train experiment=srn/300w`" in message) == ("srn_ckpt" in missing)
    assert ("`python -m flmk.train experiment=srn/hofs model.module_kwargs.srn_ckpt=" in message) == (
        "hofs_ckpt" in missing)
    assert SRNTracker(occlusion_policy=policy, allow_scratch=True, **ckpts, **TINY).occlusion_policy == policy


def test_hofs_stage_needs_the_pretrained_srn_unless_scratch_is_allowed():
    with pytest.raises(MissingCheckpointError, match=r"model\.module_kwargs\.srn_ckpt is null.*"
                       r"experiment=srn/300w.*model\.module_kwargs\.allow_scratch=true"):
        HOFSModule(SRN(**TINY), optimizer=lambda params: torch.optim.Adam(params, lr=1e-3), crop_size=32)
