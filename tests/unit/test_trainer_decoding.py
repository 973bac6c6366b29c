"""The single-process trainer decodes replay on either side (``replay.decode_on``) with the same
result: identical batches, hence identical parameters after the same updates."""

import torch

from distdrq.config import load_config
from distdrq.progress import ProgressDisplay
from distdrq.trainer import Trainer

TINY = [
    "env.image_size=32",
    "agent.device=cpu",
    "agent.hidden_dim=32",
    "agent.feature_dim=8",
    "agent.batch_size=24",
    "agent.update_every_steps=1",
    "agent.num_expl_steps=20",
    "train.frames=300",
    "train.seed_frames=60",
    "train.eval_every_frames=100000",
    "train.eval_episodes=1",
    "train.video_every_evals=0",
    "train.checkpoint_every_frames=100000",
    "replay.codec=lz4d-star32",
]


def _trained(tmp_path, decode_on: str) -> tuple[Trainer, dict]:
    cfg = load_config("point_reach", overrides=[*TINY, f"replay.decode_on={decode_on}"])
    trainer = Trainer(cfg, tmp_path / decode_on)
    trainer.train(ProgressDisplay("point_reach", cfg.train.frames, live=False))
    trainer.close()
    return trainer, trainer.agent.state_dict()


def test_learner_side_decoding_trains_exactly_as_shard_side(tmp_path):
    shard, shard_state = _trained(tmp_path, "shard")
    learner, learner_state = _trained(tmp_path, "learner")
    assert shard.decoder is None and learner.decoder is not None
    assert learner.decoder.threads == 2 and learner.counters.updates > 100
    assert learner.counters.updates == shard.counters.updates
    for name in ("encoder", "actor", "critic"):
        for key, value in shard_state[name].items():
            assert torch.equal(value, learner_state[name][key]), (name, key)
