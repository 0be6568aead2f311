"""HOFS: hard occluded face synthesis with deep Q-learning (SRN §3.2, eqs. 9-12; notes §6.5, §8 item 24).

Two-stage flow for the occlusion-robust tracker (Table 9):

1. Policy learning, ``python -m flmk.train experiment=srn/hofs`` (this module's :class:`HOFSModule`).
   An MDP over training clips: a noise square sits on landmark ``index``; at each frame the action moves
   it to ``index - 1``, ``index`` or ``index + 1`` (clamped to the layout, eq. after 9). The state of a
   candidate is the shape-indexed patches of the occluded frame at the ground-truth landmarks (eq. 9); a
   Q-net (SRN's conv stack, optionally initialised from the pre-trained SRN, + FC 512 -> 1) scores each
   candidate; the agent acts epsilon-greedily; the reward is the frozen pre-trained SRN's error on the
   chosen frame (eq. 10). Q-learning (eqs. 11-12) on transitions replayed from the last K clips, with a
   target network synced every ``target_sync`` updates. The run's checkpoint holds the policy.
2. Tracker fine-tuning, ``model=srn_tracker model.net.occlusion_policy=hofs model.net.hofs_ckpt=<stage-1
   ckpt> model.net.srn_ckpt=<image SRN ckpt>``: :class:`HOFSPolicy` (frozen, greedy) synthesises the
   occluded version of every training clip on the fly inside :class:`flmk.models.srn.SRNTracker`.
   Storing indices rather than pixels keeps the synthesis valid under the data module's augmentation.

Both stages start from the image SRN pre-trained on 300W (SRN §4.1); a stage whose earlier checkpoints are
missing stops before training (:func:`require_stages`) unless ``allow_scratch`` is set.
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Callable
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from flmk.data.occlusion import landmark_at, paste_noise, uniform_noise_like
from flmk.layouts import get_layout
from flmk.models.blocks.patches import extract_patches
from flmk.models.srn import SRN, PatchEncoder, load_srn_weights
from flmk.models.tracking import require_pretrained

ACTIONS = torch.tensor([-1, 0, 1])  # a^0: index - 1, a^1: stay, a^2: index + 1
SRN_COMMAND = "python -m flmk.train experiment=srn/300w"  # the image SRN, pre-trained on 300W (SRN §4.1)
HOFS_COMMAND = "python -m flmk.train experiment=srn/hofs model.module_kwargs.srn_ckpt=<the SRN checkpoint>"


def require_stages(model: str, srn_ckpt: str | None, hofs_ckpt: str | None, need_hofs: bool, allow_scratch: bool,
                   scratch_key: str = "model.net.allow_scratch") -> None:
    """Stop unless the earlier stages' checkpoints are given: the pre-trained SRN and, if ``need_hofs``,
    the stage-1 policy (keys next to ``scratch_key``); see flmk.models.tracking.require_pretrained."""
    prefix = scratch_key.rsplit(".", 1)[0]
    missing = {f"{prefix}.srn_ckpt": SRN_COMMAND} if not srn_ckpt else {}
    if need_hofs and not hofs_ckpt:
        missing[f"{prefix}.hofs_ckpt"] = HOFS_COMMAND
    require_pretrained(model, missing, allow_scratch, scratch_key)


def candidate_indices(index: torch.Tensor, num_points: int) -> torch.Tensor:
    """(B,) current landmark index -> (B, 3) the candidates index-1, index, index+1, clamped to [0, N-1]."""
    return (index[:, None] + ACTIONS.to(index.device)).clamp(0, num_points - 1)


def epsilon_greedy(q: torch.Tensor, epsilon: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, A) action values -> (B,) argmax, replaced by a uniform action with probability epsilon."""
    explore = torch.rand(q.shape[0], generator=generator, device=q.device) < epsilon
    random = torch.randint(q.shape[1], (q.shape[0],), generator=generator, device=q.device)
    return torch.where(explore, random, q.argmax(1))


def dqn_target(reward: torch.Tensor, next_q: torch.Tensor, done: torch.Tensor, gamma: float) -> torch.Tensor:
    """Bellman target y = r + gamma * max_a Q(S_{t+1}, a) (eq. 11); y = r at the end of a clip."""
    return reward + gamma * (~done).to(next_q.dtype) * next_q.max(1).values


def hofs_reward(pred: torch.Tensor, target: torch.Tensor, ocular: tuple[int, int], crop_size: int) -> torch.Tensor:
    """Eq. 10 per frame: sum_n ||L^n - Lbar^n||^2 / (N * eta), eta = inter-ocular distance.

    Measured in crop pixels (the paper's code works in pixels), so rewards are O(1) rather than O(1e-3).
    """
    pred, target = pred.float() * crop_size, target.float() * crop_size
    eta = (target[:, ocular[0]] - target[:, ocular[1]]).norm(dim=-1).clamp_min(1e-6)
    return (pred - target).pow(2).sum(-1).mean(-1) / eta


class QNet(nn.Module):
    """Q(S): the SRN conv stack on the state's patches, flatten, FC hidden + ReLU, FC 1 (notes §8 item 24)."""

    def __init__(self, encoder: PatchEncoder, num_points: int, hidden: int = 512) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Sequential(nn.Linear(num_points * encoder.out_dim, hidden), nn.ReLU(inplace=True),
                                  nn.Linear(hidden, 1))

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """(M, N, 3, P, P) -> (M,) action values."""
        return self.head(self.encoder(patches).flatten(1)).squeeze(1)


class HOFSPolicy(nn.Module):
    """The MDP's occlusion mechanics and a Q-net acting in it; ``forward`` = greedy synthesis of clips."""

    def __init__(self, encoder: PatchEncoder, num_points: int, patch_size: int = 36, noise_size: int = 48,
                 q_hidden: int = 512, keep_inside: bool = True) -> None:
        super().__init__()
        self.qnet = QNet(encoder, num_points, q_hidden)
        self.num_points, self.patch_size, self.noise_size, self.keep_inside = (
            num_points, patch_size, noise_size, keep_inside)

    def occlude(self, frame: torch.Tensor, noise: torch.Tensor, points: torch.Tensor,
                index: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) frames, their noise, (B, N, 2) GT, (B, A) indices -> (B, A, C, S, S) occluded candidates."""
        a = index.shape[1]
        rep = lambda x: x.unsqueeze(1).expand(-1, a, *x.shape[1:]).flatten(0, 1)  # noqa: E731
        centres = landmark_at(rep(points), index.flatten())
        occluded = paste_noise(rep(frame), centres, self.noise_size, rep(noise), self.keep_inside)
        return occluded.unflatten(0, (-1, a))

    def states(self, frame: torch.Tensor, noise: torch.Tensor, points: torch.Tensor,
               index: torch.Tensor) -> torch.Tensor:
        """S_t^p (eq. 9): patches of each candidate's occluded frame at the GT landmarks, (B, A, N, C, P, P)."""
        occluded = self.occlude(frame, noise, points, index)
        a = index.shape[1]
        gt = points.unsqueeze(1).expand(-1, a, -1, -1).flatten(0, 1)
        return extract_patches(occluded.flatten(0, 1), gt, self.patch_size).unflatten(0, (-1, a))

    def q_values(self, frame: torch.Tensor, noise: torch.Tensor, points: torch.Tensor, index: torch.Tensor,
                 qnet: nn.Module | None = None) -> torch.Tensor:
        """(B, A) Q of each candidate index (with ``qnet``, default the online one)."""
        s = self.states(frame, noise, points, index)
        return (qnet or self.qnet)(s.flatten(0, 1)).view(index.shape)

    @torch.no_grad()
    def rollout(self, image: torch.Tensor, points: torch.Tensor, epsilon: float,
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Play the MDP on clips (B, T, C, S, S) with GT (B, T, N, 2).

        Returns ``occluded`` (B, T, C, S, S), ``index`` and ``action`` (B, T), ``noise`` (B, T, C, S, S).
        The index before the first frame is uniform (the paper's random first index).
        """
        b, t = image.shape[:2]
        index = torch.randint(self.num_points, (b,), generator=generator, device=image.device)
        out: dict[str, list[torch.Tensor]] = {"occluded": [], "index": [], "action": [], "noise": []}
        for i in range(t):  # the MDP is sequential in time
            frame, gt = image[:, i], points[:, i]
            noise = uniform_noise_like(frame, generator)
            candidates = candidate_indices(index, self.num_points)
            action = epsilon_greedy(self.q_values(frame, noise, gt, candidates), epsilon, generator)
            index = candidates.gather(1, action[:, None]).squeeze(1)
            out["occluded"].append(self.occlude(frame, noise, gt, index[:, None])[:, 0])
            out["index"].append(index)
            out["action"].append(action)
            out["noise"].append(noise)
        return {k: torch.stack(v, 1) for k, v in out.items()}

    def forward(self, image: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """Greedy HOFS synthesis of clips: the hard occluded version of ``image``."""
        return self.rollout(image, points, epsilon=0.0)["occluded"]

    def load_qnet(self, path: str | Path) -> None:
        """Load the Q-net from a stage-1 :class:`HOFSModule` checkpoint."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"HOFS checkpoint not found: {path}")
        state = torch.load(path, map_location="cpu", weights_only=False)
        state = state.get("state_dict", state)
        prefix = "policy.qnet."
        qnet = {k.split(prefix, 1)[1]: v for k, v in state.items() if prefix in k}
        if not qnet:
            raise KeyError(f"{path} holds no '{prefix}*' weights: is it a checkpoint of experiment=srn/hofs?")
        self.qnet.load_state_dict(qnet)


class ClipReplay:
    """Experience replay as a multi-queue over clips: every transition of the last ``clips`` clips.

    A clip entry holds per-frame tensors (T, ...): ``frame``, ``noise``, ``points``, ``index`` (the chosen
    landmark) and ``reward``. Transition t is (S_t at index_t, r_t, S_{t+1} candidates around index_t);
    the last frame of a clip is terminal.
    """

    KEYS = ("frame", "noise", "points", "index", "reward")

    def __init__(self, clips: int = 3) -> None:
        self.queue: deque[dict[str, torch.Tensor]] = deque(maxlen=clips)

    def push(self, clip: dict[str, torch.Tensor]) -> None:
        missing = set(self.KEYS) - clip.keys()
        if missing:
            raise KeyError(f"ClipReplay.push: clip lacks {sorted(missing)}")
        self.queue.append({k: clip[k].detach() for k in self.KEYS})

    def __len__(self) -> int:
        return sum(c["reward"].shape[0] for c in self.queue)

    def sample(self, n: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """n transitions drawn uniformly (with replacement) from the stored ones."""
        if not self.queue:
            raise RuntimeError("ClipReplay.sample: the buffer is empty")
        data = {k: torch.cat([c[k] for c in self.queue]) for k in self.KEYS}
        device = data["reward"].device
        lengths = torch.tensor([c["reward"].shape[0] for c in self.queue])
        last = torch.zeros(int(lengths.sum()), dtype=torch.bool)
        last[lengths.cumsum(0) - 1] = True
        flat = torch.randint(len(last), (n,), generator=generator)
        done = last[flat]
        nxt = torch.where(done, flat, flat + 1)
        flat, nxt, done = flat.to(device), nxt.to(device), done.to(device)
        batch = {k: v[flat] for k, v in data.items()}
        batch.update({f"next_{k}": data[k][nxt] for k in ("frame", "noise", "points")}, done=done)
        return batch


class HOFSModule(pl.LightningModule):
    """Stage 1 of HOFS: learn the occlusion policy against a frozen pre-trained SRN.

    Built by ``flmk.train`` like any model (``model.module_target``): ``net`` is the SRN (loaded from
    ``srn_ckpt`` and frozen; null stops before training unless ``allow_scratch``), ``optimizer`` trains the Q-net; ``loss`` is unused (the TD loss is eq. 12).
    Each training step plays the MDP on a batch of clips, pushes the clips to the replay and makes
    ``updates_per_step`` Q-learning updates. Logs ``train/reward``, ``train/td_loss`` and
    ``train/action_{0,1,2}`` (share of index-1 / stay / index+1). The evaluation arguments of the common
    module constructor (``primary_nme``, ``test_names``, ``test_eval_layouts``) are accepted and unused:
    the stage has no landmark test.
    """

    def __init__(
        self,
        net: SRN,
        optimizer: Callable,
        layout: str = "68",
        crop_size: int = 224,
        loss: nn.Module | None = None,
        scheduler: Callable | None = None,
        scheduler_interval: str = "step",
        primary_nme: str = "nme_io",
        test_names: list[str] | None = None,
        test_eval_layouts: dict | None = None,
        srn_ckpt: str | None = None,
        gamma: float = 0.9,
        epsilon: float = 0.1,
        replay_clips: int = 3,
        replay_batch: int = 32,
        updates_per_step: int = 4,
        target_sync: int = 1000,
        q_hidden: int = 512,
        q_init_from_srn: bool = True,
        allow_scratch: bool = False,
    ) -> None:
        super().__init__()
        require_stages("HOFSModule", srn_ckpt, None, False, allow_scratch, "model.module_kwargs.allow_scratch")
        self.save_hyperparameters(ignore=["net", "loss", "optimizer", "scheduler"])
        self.automatic_optimization = False
        if srn_ckpt:
            load_srn_weights(net, srn_ckpt)
        self.net = net.requires_grad_(False).eval()
        encoder = copy.deepcopy(net.encoder)  # Q-net initialised from the pre-trained SRN's conv stack
        if not q_init_from_srn:
            encoder.reset_parameters()
        self.policy = HOFSPolicy(encoder.requires_grad_(True), net.num_points, net.patch_size, net.noise_size,
                                 q_hidden, net.noise_keep_inside)
        self.target_qnet = copy.deepcopy(self.policy.qnet).requires_grad_(False)
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.scheduler_interval = scheduler_interval
        self.ocular = get_layout(layout).ocular
        self.crop_size = crop_size
        self.gamma, self.epsilon = gamma, epsilon
        self.replay_batch, self.updates_per_step, self.target_sync = replay_batch, updates_per_step, target_sync
        self.replay = ClipReplay(replay_clips)

    def train(self, mode: bool = True) -> HOFSModule:
        super().train(mode)
        self.net.eval()           # the frozen SRN of the reward
        self.target_qnet.eval()
        return self

    @torch.no_grad()
    def reward(self, occluded: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """(M, C, S, S) chosen frames, (M, N, 2) GT -> (M,) eq. 10 with the frozen SRN."""
        return hofs_reward(self.net(occluded)["points"], points, self.ocular, self.crop_size)

    def td_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Eq. 12 on replayed transitions: (Q(S_t, a_t) - (r_t + gamma max_a Q_target(S_{t+1}, a)))^2."""
        q = self.policy.q_values(batch["frame"], batch["noise"], batch["points"], batch["index"][:, None])[:, 0]
        with torch.no_grad():
            candidates = candidate_indices(batch["index"], self.policy.num_points)
            next_q = self.policy.q_values(batch["next_frame"], batch["next_noise"], batch["next_points"],
                                          candidates, qnet=self.target_qnet)
            y = dqn_target(batch["reward"].float(), next_q.float(), batch["done"], self.gamma)
        return F.mse_loss(q.float(), y)

    def sync_target(self) -> None:
        self.target_qnet.load_state_dict(self.policy.qnet.state_dict())

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        image, points = batch["image"], batch["points"]
        if image.dim() != 5:
            raise ValueError(f"HOFSModule trains on clips (B, T, 3, S, S); got image {tuple(image.shape)}: "
                             "use a video data config (e.g. data=synthetic_video or data=300vw)")
        b, t = image.shape[:2]
        play = self.policy.rollout(image, points, self.epsilon)
        reward = self.reward(play["occluded"].flatten(0, 1), points.flatten(0, 1)).view(b, t)
        for i in range(b):
            self.replay.push({"frame": image[i], "noise": play["noise"][i], "points": points[i],
                              "index": play["index"][i], "reward": reward[i]})
        opt = self.optimizers()
        sched = self.lr_schedulers()
        for _ in range(self.updates_per_step):
            loss = self.td_loss(self.replay.sample(self.replay_batch))
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()
            if sched is not None:
                sched.step()
            self.updates += 1
            if int(self.updates) % self.target_sync == 0:
                self.sync_target()
        actions = torch.bincount(play["action"].flatten(), minlength=3).float() / play["action"].numel()
        self.log_dict({"train/reward": reward.mean(), "train/td_loss": loss.detach(),
                       **{f"train/action_{a}": actions[a] for a in range(3)}}, batch_size=b)
        self.log("train_loss", loss.detach(), prog_bar=True, batch_size=b, logger=False)
        return loss.detach()

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=self.policy.parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer=optimizer),
                                                         "interval": self.scheduler_interval}}
