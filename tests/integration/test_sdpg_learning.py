"""SDPG learns on CPU: issue 11's learning test, stopped as soon as it passes.

State-actor cheetah_run, 8 nominals x 15 clones, a 32-step window, action repeat 2, seed 1:
the mean return of the last 8 nominal episodes must reach 60 within 400 iterations, from a
first batch below it. shared/reference/SDPG.md's prototype went from about 12 to a mean of
about 83 in 405 iterations. Here (benchmarks/RESULTS.md, sdpg_learning) seed 1 first reached
60 at iteration 171 (about 0.5-3 s an iteration on this 2-core machine, depending on its
load); the full 400-iteration run is benchmarks/sdpg_learning.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distdrq.config import load_config
from distdrq.sdpg_trainer import SDPGTrainer


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_state_actor_cheetah_run_reaches_60_within_400_iterations(tmp_path):
    torch.set_num_threads(1)
    overrides = [
        "agent.algo=sdpg",
        "agent.device=cpu",
        "sdpg.obs=state",
        "sdpg.nominals=8",
        "sdpg.clones=15",
        "sdpg.horizon=32",
        "env.action_repeat=2",
        "train.seed=1",
    ]
    trainer = SDPGTrainer(load_config("cheetah_run", overrides=overrides), tmp_path)
    batches = []  # mean of the last 8 nominal episodes, each time a batch of 8 ends
    try:
        for _ in range(400):
            episodes = trainer.counters.episodes
            trainer.iteration()
            if trainer.counters.episodes > episodes:
                batches.append(float(np.mean(trainer.recent_returns)))
                if batches[-1] >= 60.0:
                    break
    finally:
        trainer.close()
    assert len(batches) >= 2 and batches[0] < 60.0, batches  # it learned: it did not start there
    assert batches[-1] >= 60.0, f"after {trainer.counters.updates} iterations: {batches}"
