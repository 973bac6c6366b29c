"""SDPG (Stochastic Decoupled Policy Gradient; You et al., arXiv 2605.26478; HaoxiangYou/SDPG
``agents/sdpg.py``) on the DeepMind Control Suite: the learner step.

One iteration (shared/reference/SDPG.md section 2.11, steps 3-6), given the windows the group
runners returned (:class:`~distdrq.run.groups.WindowResult`):

- values: the *target* critic on the post-step, pre-reset states, 0 where the step terminated;
- returns: TD(lambda) per env and step (:func:`~distdrq.agent.sdpg_math.lambda_returns`), cut
  at dones and at the window's end, where they bootstrap;
- differences: each clone's return minus its nominal's, normalised per (nominal, step) slot;
- ascent directions for the mean and the log std; targets mu* = clamp(mu + d_mu) and
  log_sigma* = clamp(log_sigma + d_log_sigma);
- one full-batch Adam step of the actor on the N * H nominal inputs (MSE to both targets minus
  alpha * mean log sigma, gradient-norm clip), then one step of log alpha on
  alpha * (mean sigma - target_std);
- the critic: ``critic_passes`` passes of minibatches over every (state, return) pair of
  nominals and clones; then target <- alpha_t * target + (1 - alpha_t) * critic;
- the actor's learning-rate schedule and the running observation statistics (every state of
  the window, clones included; the window itself was normalised with the previous ones).

Deviations from the published code (each a DMC or systems adaptation; none changes the maths):

- physics: CPU MuJoCo through dm_control suite tasks instead of MJX/Genesis ports with
  SHAC-style rewards; rewards, observations and the 1000-step limit are DMC's, stepped with
  action repeat (``env.action_repeat``), and H may be given in seconds
  (``sdpg.horizon_seconds``);
- clones copy MuJoCo's full integration state plus task state kept in the model, then run
  ``mj_forward`` (:mod:`distdrq.envs.clones`); the published MJX backend copies qpos/qvel only;
- a floor on the return-difference normaliser (``sdpg.delta_j_floor``): slots where the
  differences are round-off give no direction (0 restores the published rule);
- a physics error or non-finite state is a termination with reward 0 for that env's step;
- the critic's privileged input is the task's observation vector (cheetah 17, walker 24);
- the target critic evaluates V(s') on the learner after the window, not during it (the
  same weights: the critic changes only after the actor step);
- observation statistics are kept in float64 (published: float32);
- the nominals' frame stacks travel as single frames and are rebuilt on the learner;
- no return normalisation, top-k perturbations, soft critic or state-dependent std (all off
  in the published configs); no wandb/TensorBoard (the run's CSVs instead).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from distdrq.agent.base import AgentBase, resolve_device
from distdrq.agent.drq import Temperature
from distdrq.agent.sdpg_math import (
    RunningMeanStd,
    actor_lr_factor,
    ascent_directions,
    normalized_differences,
    td_lambda_targets,
)
from distdrq.agent.sdpg_networks import SDPGActor, SDPGCritic, bounded
from distdrq.config import AgentConfig, SDPGConfig, validate_agent


@dataclass
class WindowBatch:
    """The windows of one iteration as tensors on the learner's device (groups concatenated in
    group order; G groups, M = P + 1, H steps)."""

    states: torch.Tensor
    """float32 [G, M, H, d], normalised with the statistics the window ran with"""
    next_states: torch.Tensor
    """float32 [G, M, H, d], normalised: post-step, pre-reset"""
    rewards: torch.Tensor
    """float32 [G, M, H], scaled"""
    terminated: torch.Tensor
    """bool [G, M, H]"""
    dones: torch.Tensor
    """bool [G, M, H]: reset or re-synced after the step"""
    means: torch.Tensor
    """float32 [G, H, A]: the nominals' bounded means"""
    log_std: torch.Tensor
    """float32 [A]"""
    noise: torch.Tensor
    """float32 [G, M, H, A] (zeros for the nominals)"""
    actor_inputs: torch.Tensor
    """[G * H, ...]: frame stacks (uint8) or normalised nominal states"""


class SDPGAgent(AgentBase):
    """SDPG's actor (pixels or state), state critic and target, temperature, optimizers,
    observation statistics and learning-rate schedule. ``num_updates`` counts iterations.

    Built with the ``agent`` section (device) and the ``sdpg`` section; ``obs_shape`` is the
    actor's input (a frame stack, or ``(state_dim,)``), ``state_dim`` the critic's.
    """

    experience = "iterations"

    def __init__(
        self,
        obs_shape: tuple[int, ...],
        action_dim: int,
        cfg: AgentConfig,
        device: str | torch.device | None = None,
        *,
        sdpg: SDPGConfig,
        state_dim: int,
    ) -> None:
        self.cfg = validate_agent(cfg)
        self.sdpg = sdpg
        self.device = resolve_device(cfg.device if device is None else device)
        self.pixels = sdpg.obs == "pixels"
        self.action_dim = action_dim
        self.bounds = (sdpg.mean_bound, (sdpg.log_std_min, sdpg.log_std_max))
        self.actor = SDPGActor(obs_shape, action_dim, self.pixels, sdpg.log_std_init)
        self.actor.to(self.device)
        self.critic = SDPGCritic(state_dim).to(self.device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.temperature = Temperature(sdpg.init_temperature).to(self.device)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=sdpg.actor_lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=sdpg.critic_lr)
        self.temperature_opt = torch.optim.Adam(
            self.temperature.parameters(), lr=sdpg.temperature_lr
        )
        self.obs_rms = RunningMeanStd(state_dim)
        self.num_updates = 0
        self._set_actor_lr()

    # ---- acting and weights

    def actor_lr(self) -> float:
        """The actor's learning rate at the current iteration."""
        s = self.sdpg
        factor = actor_lr_factor(
            self.num_updates,
            s.warmup_iterations,
            s.lr_decay_iterations,
            s.actor_lr_min / s.actor_lr,
        )
        return s.actor_lr * factor

    def _set_actor_lr(self) -> None:
        for group in self.actor_opt.param_groups:
            group["lr"] = self.actor_lr()

    @torch.no_grad()
    def act(self, obs: np.ndarray, step: int, eval_mode: bool) -> np.ndarray:
        """tanh of the bounded mean (SDPG's nominals act deterministically) for one frame stack
        or raw state vector; float32 [A] in [-1, 1]."""
        x = torch.as_tensor(np.asarray(obs)).to(self.device).unsqueeze(0)
        if not self.pixels:
            x = self.obs_rms.normalize(x)
        means, _ = bounded(*self.actor(x), self.bounds[0], self.bounds[1])
        return means.tanh().float().cpu().numpy()[0]

    def policy_state_dict(self) -> dict[str, torch.Tensor]:
        """Actor weights (``actor.*``) and the observation statistics it normalises states
        with (``obs_mean``, ``obs_scale``), as CPU copies."""
        state = {f"actor.{k}": v.detach().cpu().clone() for k, v in self.actor.state_dict().items()}
        mean, scale = self.obs_rms.tensors("cpu")
        return state | {"obs_mean": mean, "obs_scale": scale}

    def load_policy_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load the actor's weights from :meth:`policy_state_dict` (statistics stay the
        learner's)."""
        prefix = "actor."
        self.actor.load_state_dict(
            {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        )

    # ---- one iteration

    def learn(self, results: Sequence) -> dict[str, float]:
        """One SDPG iteration on the windows of all groups (:class:`WindowResult` s, any
        order); returns its metrics."""
        results = sorted(results, key=lambda r: int(r.group_ids[0]))
        batch = self.batch(results)
        with torch.no_grad():
            values = self.critic_target(batch.next_states)
            returns = td_lambda_targets(
                batch.rewards,
                values,
                batch.terminated,
                batch.dones,
                self.sdpg.gamma,
                self.sdpg.lam,
            )
        metrics = self.update_actor(batch, returns)
        metrics |= self.update_critic(batch.states, returns)
        with torch.no_grad():  # target <- alpha * target + (1 - alpha) * critic
            for target, online in zip(
                self.critic_target.parameters(), self.critic.parameters(), strict=True
            ):
                target.lerp_(online, 1.0 - self.sdpg.target_critic_alpha)
        self._update_statistics(results)  # the next window normalises with these
        metrics["actor_lr"] = self.actor_lr()
        self.num_updates += 1
        self._set_actor_lr()
        metrics["value"] = float(values.mean())
        metrics["return"] = float(returns.mean())
        return metrics

    def batch(self, results: Sequence) -> WindowBatch:
        """The windows as one :class:`WindowBatch` (normalised with the current statistics)."""

        def cat(name: str) -> np.ndarray:
            return np.concatenate([getattr(r, name) for r in results])

        dev = self.device
        states = cat("states")
        nxt = np.concatenate([r.next_states() for r in results])
        noise = torch.as_tensor(cat("noise"), device=dev)
        noise = torch.cat([torch.zeros_like(noise[:, :1]), noise], dim=1)
        norm_states = self.obs_rms.normalize(torch.as_tensor(states[:, :, :-1], device=dev))
        if self.pixels:
            stacks = np.concatenate([r.actor_observations() for r in results])
            actor_inputs = torch.as_tensor(stacks, device=dev).flatten(0, 1)
        else:
            actor_inputs = norm_states[:, 0].flatten(0, 1)
        return WindowBatch(
            states=norm_states,
            next_states=self.obs_rms.normalize(torch.as_tensor(nxt, device=dev)),
            rewards=torch.as_tensor(cat("rewards"), device=dev) * self.sdpg.reward_scale,
            terminated=torch.as_tensor(cat("terminated"), device=dev),
            dones=torch.as_tensor(cat("dones"), device=dev),
            means=torch.as_tensor(cat("means"), device=dev),
            log_std=torch.tensor(results[0].log_std, device=dev),  # a copy: may be read-only
            noise=noise,
            actor_inputs=actor_inputs,
        )

    def update_actor(self, batch: WindowBatch, returns: torch.Tensor) -> dict[str, float]:
        """Targets from the return differences, one full-batch actor step, one temperature
        step."""
        s = self.sdpg
        mean_bound, log_std_bounds = self.bounds
        # ascent directions and targets
        scaled, spread, dead = normalized_differences(returns, s.delta_j_floor)
        d_mean, d_log_std = ascent_directions(scaled, batch.noise, batch.log_std)
        target_mean = (batch.means + d_mean).clamp(-mean_bound, mean_bound).flatten(0, 1)
        target_log_std = (batch.log_std + d_log_std).clamp(*log_std_bounds).flatten(0, 1)
        # regress
        means, log_std = bounded(*self.actor(batch.actor_inputs), mean_bound, log_std_bounds)
        log_std = log_std.expand_as(means)
        alpha = self.temperature().detach()
        loss = (
            F.mse_loss(means, target_mean)
            + F.mse_loss(log_std, target_log_std)
            - alpha * log_std.mean()
        )
        grad_norm = self._step(loss, self.actor_opt, self.actor)
        # temperature
        temperature_loss = self.temperature() * (log_std.detach().exp() - s.target_std).mean()
        self.temperature_opt.zero_grad(set_to_none=True)
        temperature_loss.backward()
        self.temperature_opt.step()
        return {
            "actor_loss": loss.item(),
            "actor_grad_norm": grad_norm,
            "sigma": float(log_std.detach().exp().mean()),
            "temperature": self.temperature().item(),
            "return_diff_std": float(spread.mean()),
            "dead_slots": float(dead.float().mean()),
            "mean_step": float(d_mean.abs().mean()),
        }

    def update_critic(self, states: torch.Tensor, returns: torch.Tensor) -> dict[str, float]:
        """``critic_passes`` passes of minibatch steps on (state, return) pairs: nominals and
        clones (``critic_on_clones``) or nominals only."""
        s = self.sdpg
        if not s.critic_on_clones:
            states, returns = states[:, :1], returns[:, :1]
        x, y = states.flatten(0, 2), returns.flatten()
        losses, norms = [], []
        for _ in range(s.critic_passes):
            order = torch.randperm(x.shape[0], device=self.device)
            for start in range(0, x.shape[0], s.critic_minibatch):
                idx = order[start : start + s.critic_minibatch]
                loss = F.mse_loss(self.critic(x[idx]), y[idx])
                norms.append(self._step(loss, self.critic_opt, self.critic))
                losses.append(loss.item())
        return {"critic_loss": float(np.mean(losses)), "critic_grad_norm": float(np.mean(norms))}

    def _step(self, loss: torch.Tensor, opt: torch.optim.Optimizer, module: nn.Module) -> float:
        """Zero, backward, clip the gradient norm, step; the norm before clipping."""
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(module.parameters(), self.sdpg.grad_clip)
        opt.step()
        return float(norm)

    def _update_statistics(self, results: Sequence) -> None:
        """Fold in every state of the windows, one batch per step (as the published rollout)."""
        states = np.concatenate([r.states for r in results])
        for t in range(states.shape[2]):
            self.obs_rms.update(states[:, :, t].reshape(-1, states.shape[-1]))

    # ---- checkpoints

    def _named_modules(self) -> Iterator[tuple[str, nn.Module]]:
        yield from (
            ("actor", self.actor),
            ("critic", self.critic),
            ("critic_target", self.critic_target),
            ("temperature", self.temperature),
        )

    def _named_optimizers(self) -> Iterator[tuple[str, torch.optim.Optimizer]]:
        yield from (
            ("actor_opt", self.actor_opt),
            ("critic_opt", self.critic_opt),
            ("temperature_opt", self.temperature_opt),
        )

    def state_dict(self) -> dict:
        """:meth:`AgentBase.state_dict` plus the observation statistics."""
        return super().state_dict() | {"obs_rms": self.obs_rms.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` gave; the learning rate follows the iteration."""
        super().load_state_dict(state)
        self.obs_rms.load_state_dict(state["obs_rms"])
        self._set_actor_lr()
