"""ReplayShard and EpisodeWriter against a brute-force reference built from the formulas in types.py."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distdrq.replay import EpisodeWriter, ReplayShard, drqv2_bytes_per_transition
from distdrq.types import Batch, Chunk

GAMMA = 0.9
ACTION_DIM = 2

# ---------------------------------------------------------------------------------------------
# reference: whole episodes in lists, transitions computed by literal loops


def make_frame(episode: int, index: int, shape: tuple[int, ...], rng: np.random.Generator):
    """A frame whose first three pixels spell (episode, index) and whose others are random."""
    frame = rng.integers(0, 256, shape, dtype=np.uint8)
    flat = frame.reshape(-1)
    flat[:3] = (episode, index % 256, index // 256)
    return frame


def decode(frame: np.ndarray) -> tuple[int, int]:
    flat = frame.reshape(-1)
    return int(flat[0]), int(flat[1]) + 256 * int(flat[2])


class Reference:
    """Full episodes as written, and transitions straight from the formulas in types.py."""

    def __init__(self, shape: tuple[int, ...], seed: int = 0) -> None:
        self.shape = shape
        self.rng = np.random.default_rng(seed)
        self.frames: dict[int, list[np.ndarray]] = {}
        self.actions: dict[int, list[np.ndarray]] = {}
        self.rewards: dict[int, list[float]] = {}
        self.discounts: dict[int, list[float]] = {}
        self.versions: dict[int, list[int]] = {}
        self.ended: dict[int, bool] = {}

    def chunk(
        self, key: int, size: int, last: bool = False, terminal_at: int | None = None
    ) -> Chunk:
        """Write ``size`` more transitions of episode ``key`` (new if unseen) and return the chunk;
        the env discount is 0 at step ``terminal_at``, else 1 or 0.5."""
        first = key not in self.frames
        if first:
            for store in (self.frames, self.actions, self.rewards, self.discounts, self.versions):
                store[key] = []
            self.frames[key].append(make_frame(key, 0, self.shape, self.rng))
        start = len(self.actions[key])
        new_frames = [make_frame(key, start + i + 1, self.shape, self.rng) for i in range(size)]
        actions = self.rng.standard_normal((size, ACTION_DIM)).astype(np.float32)
        rewards = self.rng.uniform(-1, 1, size).astype(np.float32)
        discounts = self.rng.choice(np.array([1.0, 1.0, 0.5], np.float32), size)
        if terminal_at is not None and start <= terminal_at < start + size:
            discounts[terminal_at - start] = 0.0
        versions = self.rng.integers(0, 1000, size)
        self.frames[key] += new_frames
        self.actions[key] += list(actions)
        self.rewards[key] += rewards.tolist()
        self.discounts[key] += discounts.tolist()
        self.versions[key] += versions.tolist()
        self.ended[key] = last
        frames = ([self.frames[key][0]] if first else []) + new_frames
        return Chunk(
            episode_key=key,
            first_step=start,
            frames=np.stack(frames) if frames else np.zeros((0, *self.shape), np.uint8),
            actions=actions,
            rewards=rewards,
            discounts=discounts,
            versions=versions.astype(np.int64),
            last=last,
        )

    def stack(self, key: int, t: int, k: int) -> np.ndarray:
        frames = [self.frames[key][max(i, 0)] for i in range(t - k + 1, t + 1)]
        return np.concatenate(frames, axis=0)

    def transition(self, key: int, t: int, n: int, k: int) -> dict[str, object]:
        rewards, discounts = self.rewards[key], self.discounts[key]
        reward = 0.0
        for j in range(n):
            prod = 1.0
            for i in range(j):
                prod *= discounts[t + i]
            reward += GAMMA**j * prod * rewards[t + j]
        discount = 1.0
        for j in range(n):
            discount *= GAMMA * discounts[t + j]
        return {
            "obs": self.stack(key, t, k),
            "next_obs": self.stack(key, t + n, k),
            "action": self.actions[key][t],
            "reward": reward,
            "discount": discount,
            "version": self.versions[key][t],
        }


def check_batch_types(batch: Batch, size: int, obs_shape: tuple[int, ...]) -> None:
    assert len(batch) == size
    for name, dtype, shape in (
        ("obs", np.uint8, (size, *obs_shape)),
        ("next_obs", np.uint8, (size, *obs_shape)),
        ("action", np.float32, (size, ACTION_DIM)),
        ("reward", np.float32, (size,)),
        ("discount", np.float32, (size,)),
        ("version", np.int64, (size,)),
    ):
        array = getattr(batch, name)
        assert array.dtype == dtype and array.shape == shape, name
        assert array.flags.c_contiguous, name


def check_row(batch: Batch, row: int, expected: dict[str, object]) -> None:
    np.testing.assert_array_equal(batch.obs[row], expected["obs"])
    np.testing.assert_array_equal(batch.next_obs[row], expected["next_obs"])
    np.testing.assert_array_equal(batch.action[row], expected["action"])
    assert batch.version[row] == expected["version"]
    np.testing.assert_allclose(batch.reward[row], expected["reward"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(batch.discount[row], expected["discount"], rtol=1e-6, atol=1e-7)


def check_all(shard: ReplayShard, ref: Reference) -> None:
    """Every valid (episode, t) of the shard, and a random batch, equal the reference."""
    n, k = shard.nstep, shard.frame_stack
    obs_shape = (k * ref.shape[0], *ref.shape[1:])
    expected_valid = 0
    for key in shard._episodes:
        stored = len(ref.actions[key])
        steps = np.arange(max(0, stored - n + 1))
        expected_valid += len(steps)
        if len(steps):
            batch = shard._batch_at(key, steps)
            check_batch_types(batch, len(steps), obs_shape)
            for row, t in enumerate(steps.tolist()):
                check_row(batch, row, ref.transition(key, t, n, k))
    assert shard.num_sampleable == expected_valid
    if expected_valid:
        batch = shard.sample(64)
        check_batch_types(batch, 64, obs_shape)
        newest = (k - 1) * ref.shape[0]
        for row in range(64):
            key, t = decode(batch.obs[row, newest : newest + ref.shape[0]])
            assert key in shard._episodes
            assert 0 <= t <= len(ref.actions[key]) - n
            check_row(batch, row, ref.transition(key, t, n, k))


# ---------------------------------------------------------------------------------------------
# sampling equals the reference


@pytest.mark.parametrize("shape", [(3, 8, 8), (1, 5, 5)])
@pytest.mark.parametrize("nstep", [1, 3])
@pytest.mark.parametrize("frame_stack", [1, 3])
def test_matches_reference(shape, nstep, frame_stack):
    ref = Reference(shape)
    shard = ReplayShard(10_000, nstep, GAMMA, frame_stack, seed=1)
    shard.insert(ref.chunk(1, 12, last=True, terminal_at=5))  # env discount 0 mid-window
    shard.insert(ref.chunk(2, 2, last=True))  # shorter than nstep 3
    shard.insert(ref.chunk(3, 4))  # ongoing, in pieces
    shard.insert(ref.chunk(3, 3))
    shard.insert(ref.chunk(4, 1, last=True, terminal_at=0))
    check_all(shard, ref)
    shard.insert(ref.chunk(3, 5, last=True, terminal_at=11))
    check_all(shard, ref)
    assert len(shard) == 12 + 2 + 12 + 1
    assert shard.num_episodes == 4


def test_stack_at_episode_start_repeats_reset_frame():
    ref = Reference((1, 5, 5))
    shard = ReplayShard(100, 1, GAMMA, 3)
    shard.insert(ref.chunk(7, 4, last=True))
    batch = shard._batch_at(7, np.arange(4))
    frame = [ref.frames[7][i] for i in range(5)]
    np.testing.assert_array_equal(batch.obs[0], np.concatenate([frame[0]] * 3))
    np.testing.assert_array_equal(batch.obs[1], np.concatenate([frame[0], frame[0], frame[1]]))
    np.testing.assert_array_equal(batch.next_obs[0], np.concatenate([frame[0], frame[0], frame[1]]))
    np.testing.assert_array_equal(batch.next_obs[3], np.concatenate(frame[2:5]))


def test_terminal_discount_cuts_nstep():
    ref = Reference((1, 5, 5))
    shard = ReplayShard(100, 3, GAMMA, 1)
    chunk = ref.chunk(1, 5, last=True)
    chunk.rewards[:] = 1.0
    chunk.discounts[:] = [1.0, 0.0, 1.0, 1.0, 1.0]
    shard.insert(chunk)
    batch = shard._batch_at(1, np.arange(3))
    np.testing.assert_allclose(batch.reward, [1 + GAMMA, 1, 1 + GAMMA + GAMMA**2], rtol=1e-6)
    np.testing.assert_allclose(batch.discount, [0, 0, GAMMA**3], rtol=1e-6)


def test_nothing_sampleable():
    ref = Reference((1, 5, 5))
    shard = ReplayShard(100, 3, GAMMA, 3)
    with pytest.raises(ValueError, match="nothing to sample"):
        shard.sample(4)
    shard.insert(ref.chunk(1, 2, last=True))
    shard.insert(ref.chunk(2, 1))
    assert (len(shard), shard.num_sampleable) == (3, 0)
    with pytest.raises(ValueError, match="nothing to sample"):
        shard.sample(4)


def test_partial_episode_becomes_sampleable():
    ref = Reference((1, 5, 5))
    shard = ReplayShard(100, 3, GAMMA, 2)
    shard.insert(ref.chunk(1, 0))  # just the reset frame
    assert shard.num_sampleable == 0
    stored = 0
    for size in (2, 1, 4, 3):
        shard.insert(ref.chunk(1, size))
        stored += size
        assert shard.num_sampleable == max(0, stored - 2)
        if shard.num_sampleable:
            batch = shard.sample(200)
            t = np.array([decode(obs[1:2])[1] for obs in batch.obs])
            assert t.max() <= stored - 3  # windows stay within stored transitions
            assert set(t.tolist()) == set(range(stored - 2))
            last_frame = np.array([decode(obs[1:2])[1] for obs in batch.next_obs])
            np.testing.assert_array_equal(last_frame, t + 3)
    check_all(shard, ref)


# ---------------------------------------------------------------------------------------------
# uniformity


def test_sampling_is_uniform_over_valid_starts():
    ref = Reference((1, 5, 5))
    shard = ReplayShard(100, 3, GAMMA, 1, seed=3)
    shard.insert(ref.chunk(1, 10, last=True))  # 8 valid starts
    shard.insert(ref.chunk(2, 30))  # 28 valid starts
    per_index = 500
    cells = 36
    counts: dict[tuple[int, int], int] = {}
    for _ in range(per_index * cells // 1000):
        batch = shard.sample(1000)
        for obs in batch.obs:
            cell = decode(obs)
            counts[cell] = counts.get(cell, 0) + 1
    assert len(counts) == cells
    observed = np.array(list(counts.values()))
    expected = observed.sum() / cells
    chi2 = ((observed - expected) ** 2 / expected).sum()
    assert chi2 < 90  # 35 degrees of freedom: mean 35, p(chi2 > 90) ~ 1e-6
    share_1 = sum(v for (key, _), v in counts.items() if key == 1) / observed.sum()
    assert abs(share_1 - 8 / 36) < 0.02


def test_own_rng_is_seeded_and_passed_rng_used():
    def build(seed):
        ref = Reference((1, 5, 5))
        shard = ReplayShard(100, 1, GAMMA, 1, seed=seed)
        shard.insert(ref.chunk(1, 30, last=True))
        return shard

    a, b, c = build(0), build(0), build(1)
    np.testing.assert_array_equal(a.sample(16).obs, b.sample(16).obs)
    assert not np.array_equal(a.sample(16).obs, c.sample(16).obs)
    x = a.sample(16, rng=np.random.default_rng(5))
    y = c.sample(16, rng=np.random.default_rng(5))
    np.testing.assert_array_equal(x.obs, y.obs)


def test_sample_into_out():
    ref = Reference((3, 8, 8))
    shard = ReplayShard(100, 3, GAMMA, 3)
    shard.insert(ref.chunk(1, 20, last=True))
    out = shard.empty_batch(32)
    batch = shard.sample(32, rng=np.random.default_rng(1), out=out)
    assert batch is out
    fresh = shard.sample(32, rng=np.random.default_rng(1))
    for name in ("obs", "next_obs", "action", "reward", "discount", "version"):
        np.testing.assert_array_equal(getattr(out, name), getattr(fresh, name))
    with pytest.raises(ValueError, match="out.obs"):
        shard.sample(16, out=out)


# ---------------------------------------------------------------------------------------------
# eviction


def test_fifo_eviction_respects_capacity():
    ref = Reference((1, 5, 5))
    shard = ReplayShard(25, 1, GAMMA, 1)
    for key in range(1, 6):
        shard.insert(ref.chunk(key, 10, last=True))
        assert len(shard) <= 25
    assert list(shard._episodes) == [4, 5]
    assert (len(shard), shard.num_episodes) == (20, 2)
    check_all(shard, ref)
    with pytest.raises(ValueError, match="episode 1 was evicted"):
        shard.insert(ref.chunk(1, 1))
    stats = shard.stats()
    assert stats["transitions"] == 20 and stats["frames"] == 22


def test_eviction_while_another_episode_is_written():
    ref = Reference((1, 5, 5))
    shard = ReplayShard(20, 2, GAMMA, 2)
    shard.insert(ref.chunk(1, 10, last=True))
    shard.insert(ref.chunk(2, 5))
    shard.insert(ref.chunk(2, 5))
    assert list(shard._episodes) == [1, 2]
    shard.insert(ref.chunk(2, 5))  # 25 > 20: the oldest goes, the one being written stays
    assert list(shard._episodes) == [2] and len(shard) == 15
    check_all(shard, ref)
    shard.insert(ref.chunk(3, 4, last=True))  # 19
    shard.insert(ref.chunk(2, 3))  # 22: episode 2 is oldest but being written; 3 goes
    assert list(shard._episodes) == [2] and len(shard) == 18
    shard.insert(ref.chunk(4, 3, last=True))  # 21: now episode 2 is evicted, unfinished
    assert list(shard._episodes) == [4]
    with pytest.raises(ValueError, match="episode 2 was evicted"):
        shard.insert(ref.chunk(2, 1))
    check_all(shard, ref)


def test_single_episode_may_exceed_capacity():
    ref = Reference((1, 5, 5))
    shard = ReplayShard(5, 1, GAMMA, 1)
    shard.insert(ref.chunk(1, 8))
    shard.insert(ref.chunk(1, 4, last=True))
    assert len(shard) == 12 and shard.num_episodes == 1
    check_all(shard, ref)
    shard.insert(ref.chunk(2, 3, last=True))
    assert list(shard._episodes) == [2] and len(shard) == 3


def test_many_evictions_compact_the_slot_index():
    shard = ReplayShard(6, 1, GAMMA, 1)
    for key in range(1, 2600):
        shard.insert(_tiny_chunk(key))
    assert list(shard._episodes) == [2597, 2598, 2599]
    assert len(shard._index.slots) < 2000
    batch = shard.sample(300)
    keys = {int(x) for x in batch.version}
    assert keys == {2597, 2598, 2599}


def _tiny_chunk(key: int) -> Chunk:
    frames = np.full((3, 1, 2, 2), key % 256, np.uint8)
    return Chunk(
        key,
        0,
        frames,
        np.zeros((2, ACTION_DIM), np.float32),
        np.ones(2, np.float32),
        np.ones(2, np.float32),
        np.full(2, key, np.int64),
        True,
    )


# ---------------------------------------------------------------------------------------------
# validation


def test_validation_errors():
    ref = Reference((3, 8, 8))
    shard = ReplayShard(100, 1, GAMMA, 1)
    shard.insert(ref.chunk(1, 4))
    gap = ref.chunk(1, 2)
    gap.first_step = 6
    with pytest.raises(ValueError, match=r"episode 1: chunk starts at step 6, expected step 4"):
        shard.insert(gap)
    gap.first_step = 4
    shard.insert(gap)
    shard.insert(ref.chunk(1, 1, last=True))
    with pytest.raises(ValueError, match=r"episode 1 ended at step 7"):
        shard.insert(ref.chunk(1, 1))
    with pytest.raises(ValueError, match=r"episode 9: chunk starts at step 3, expected step 0"):
        shard.insert(Chunk(9, 3, *_arrays(2, 2, (3, 8, 8)), False))
    with pytest.raises(ValueError, match="this replay stores"):
        shard.insert(Chunk(9, 0, *_arrays(3, 2, (3, 8, 7)), False))
    with pytest.raises(ValueError, match="expected 3"):  # first chunk lacks the reset frame
        shard.insert(Chunk(9, 0, *_arrays(2, 2, (3, 8, 8)), False))
    frames, actions, rewards, discounts, versions = _arrays(3, 2, (3, 8, 8))
    with pytest.raises(ValueError, match="frames must be uint8"):
        shard.insert(
            Chunk(9, 0, frames.astype(np.float32), actions, rewards, discounts, versions, False)
        )
    with pytest.raises(ValueError, match="rewards must be float32"):
        shard.insert(
            Chunk(9, 0, frames, actions, rewards.astype(np.float64), discounts, versions, False)
        )
    with pytest.raises(ValueError, match="actions have shape"):
        shard.insert(
            Chunk(9, 0, frames, np.zeros((2, 3), np.float32), rewards, discounts, versions, False)
        )
    with pytest.raises(ValueError, match="versions has shape"):
        shard.insert(Chunk(9, 0, frames, actions, rewards, discounts, versions[:1], False))
    assert 9 not in shard._episodes and len(shard) == 7  # failed inserts store nothing
    with pytest.raises(ValueError):
        ReplayShard(0, 1, GAMMA, 1)
    with pytest.raises(ValueError):
        ReplayShard(10, 1, 1.5, 1)


def _arrays(num_frames: int, size: int, shape: tuple[int, ...]):
    return (
        np.zeros((num_frames, *shape), np.uint8),
        np.zeros((size, ACTION_DIM), np.float32),
        np.zeros(size, np.float32),
        np.ones(size, np.float32),
        np.zeros(size, np.int64),
    )


# ---------------------------------------------------------------------------------------------
# property test


@st.composite
def write_plans(draw):
    """Episodes split into chunks, chunks of different episodes interleaved (in order per episode)."""
    num_episodes = draw(st.integers(1, 4))
    queues = []
    for key in range(1, num_episodes + 1):
        sizes = draw(st.lists(st.integers(0, 6), min_size=1, max_size=4))
        ends = draw(st.booleans())
        queues.append([(key, size, ends and i == len(sizes) - 1) for i, size in enumerate(sizes)])
    order = []
    while any(queues):
        live = [q for q in queues if q]
        order.append(live[draw(st.integers(0, len(live) - 1))].pop(0))
    return order


@settings(max_examples=150, deadline=None)
@given(
    plan=write_plans(),
    nstep=st.integers(1, 3),
    frame_stack=st.integers(1, 3),
    capacity=st.integers(1, 40),
    seed=st.integers(0, 2**16),
)
def test_property_random_chunking(plan, nstep, frame_stack, capacity, seed):
    ref = Reference((1, 5, 5), seed)
    shard = ReplayShard(capacity, nstep, GAMMA, frame_stack, seed=seed)
    for key, size, last in plan:
        chunk = ref.chunk(key, size, last=last)
        if key in shard._evicted:
            with pytest.raises(ValueError, match="evicted"):
                shard.insert(chunk)
            continue
        shard.insert(chunk)
        assert len(shard) <= capacity or shard.num_episodes == 1
        assert len(shard) == sum(len(ref.actions[k]) for k in shard._episodes)
    check_all(shard, ref)


# ---------------------------------------------------------------------------------------------
# checkpoints


def test_state_dict_round_trip_through_torch_weights_only():
    torch = pytest.importorskip("torch")
    ref = Reference((3, 8, 8))
    shard = ReplayShard(30, 3, GAMMA, 3, seed=4)
    shard.insert(ref.chunk(1, 12, last=True))
    shard.insert(ref.chunk(2, 12, last=True))
    shard.insert(ref.chunk(3, 9))  # evicts episode 1; episode 3 continues after the restore
    shard.sample(8)  # advance the shard's own generator
    state = shard.state_dict()
    for value in state.values():
        assert isinstance(value, np.ndarray | int | float | str | list)

    as_tensors = {
        k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in state.items()
    }
    buffer = io.BytesIO()
    torch.save(as_tensors, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    restored = ReplayShard(30, 3, GAMMA, 3, seed=99)
    restored.load_state_dict({k: v.numpy() if torch.is_tensor(v) else v for k, v in loaded.items()})

    assert list(restored._episodes) == [2, 3]
    for rng in (None, np.random.default_rng(7)):
        a = shard.sample(64, rng=rng)
        b = restored.sample(64, rng=np.random.default_rng(7) if rng is not None else None)
        for name in ("obs", "next_obs", "action", "reward", "discount", "version"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert restored.stats() == shard.stats()
    chunk = ref.chunk(3, 4, last=True)
    shard.insert(chunk)
    restored.insert(chunk)
    with pytest.raises(ValueError, match="evicted"):
        restored.insert(ref.chunk(1, 1))
    check_all(restored, ref)
    check_all(shard, ref)


def test_state_dict_of_empty_shard():
    shard = ReplayShard(10, 1, GAMMA, 1)
    restored = ReplayShard(10, 1, GAMMA, 1)
    restored.load_state_dict(shard.state_dict())
    assert len(restored) == 0 and restored.num_episodes == 0


# ---------------------------------------------------------------------------------------------
# writer


def _write_episode(writer: EpisodeWriter, ref: Reference, length: int) -> list[Chunk]:
    """Write one episode through the writer, reusing one frame buffer as an env might."""
    buffer = np.empty(ref.shape, np.uint8)
    key = 1000 + len(ref.frames)
    frames = [make_frame(key % 256, i, ref.shape, ref.rng) for i in range(length + 1)]
    buffer[...] = frames[0]
    writer.begin(buffer)
    chunks = []
    for t in range(length):
        buffer[...] = frames[t + 1]
        chunk = writer.append(
            np.full(ACTION_DIM, t, np.float32), t, 1.0, buffer, t == length - 1, t
        )
        if chunk is not None:
            chunks.append(chunk)
    ref.frames[key] = frames
    return chunks


def test_writer_chunk_boundaries_and_copies():
    ref = Reference((1, 5, 5))
    writer = EpisodeWriter(3, chunk_length=4)
    chunks = _write_episode(writer, ref, 10)
    assert [c.first_step for c in chunks] == [0, 4, 8]
    assert [c.num_transitions for c in chunks] == [4, 4, 2]
    assert [len(c.frames) for c in chunks] == [5, 4, 2]
    assert [c.last for c in chunks] == [False, False, True]
    assert len({c.episode_key for c in chunks}) == 1
    frames = np.concatenate([c.frames for c in chunks])
    np.testing.assert_array_equal(frames, np.stack(ref.frames[1000]))  # buffer reuse was copied
    chunk = chunks[0]
    assert chunk.actions.dtype == np.float32 and chunk.actions.shape == (4, ACTION_DIM)
    assert chunk.versions.dtype == np.int64 and chunk.versions.tolist() == [0, 1, 2, 3]
    assert chunk.rewards.dtype == np.float32 and chunk.discounts.dtype == np.float32

    shard = ReplayShard(100, 3, GAMMA, 3)
    for c in chunks:
        shard.insert(c)
    assert len(shard) == 10 and shard.num_sampleable == 8


def test_writer_one_chunk_per_episode_and_unique_keys():
    ref = Reference((1, 5, 5))
    a, b = EpisodeWriter(0), EpisodeWriter(1)
    keys = []
    for writer in (a, b, a, b):
        chunks = _write_episode(writer, ref, 7)
        assert len(chunks) == 1 and chunks[0].last and len(chunks[0].frames) == 8
        keys.append(chunks[0].episode_key)
    assert len(set(keys)) == 4
    assert keys[0] == 0 and keys[1] == 1 << 32 and keys[2] == 1
    resumed = EpisodeWriter(0)
    resumed.episodes_started = a.episodes_started  # as the trainer restores it from a checkpoint
    assert _write_episode(resumed, ref, 3)[0].episode_key == 2


def test_writer_flush():
    ref = Reference((1, 5, 5))
    writer = EpisodeWriter(0, chunk_length=5)
    assert writer.flush() is None
    frame = make_frame(0, 0, ref.shape, ref.rng)
    writer.begin(frame)
    assert writer.flush() is None  # nothing but the reset frame yet
    action = np.zeros(ACTION_DIM, np.float32)
    for _ in range(3):
        assert writer.append(action, 1.0, 1.0, frame, last=False) is None
    partial = writer.flush()
    assert partial is not None and not partial.last
    assert (partial.first_step, partial.num_transitions, len(partial.frames)) == (0, 3, 4)
    assert writer.flush() is None
    chunks = [writer.append(action, 1.0, 1.0, frame, last=False) for _ in range(5)]
    assert chunks[:4] == [None] * 4 and chunks[4].first_step == 3
    assert chunks[4].num_transitions == 5 and len(chunks[4].frames) == 5
    writer.append(action, 1.0, 1.0, frame, last=False)
    with pytest.raises(ValueError, match="unflushed"):
        writer.begin(frame)
    final = writer.append(action, 1.0, 1.0, frame, last=True)
    assert final.last and final.first_step == 8 and final.num_transitions == 2
    with pytest.raises(ValueError, match="begin"):
        writer.append(action, 1.0, 1.0, frame, last=False)
    with pytest.raises(ValueError, match="differs"):
        writer.begin(frame)
        writer.append(action, 1.0, 1.0, frame[:, :4], last=False)


# ---------------------------------------------------------------------------------------------
# stats


def test_drqv2_bytes_per_transition():
    assert drqv2_bytes_per_transition((3, 84, 84), 3) == 63_504


def test_stats_count_payload_and_index():
    ref = Reference((3, 84, 84))
    shard = ReplayShard(1000, 3, GAMMA, 3)
    shard.insert(ref.chunk(1, 100, last=True))
    shard.insert(ref.chunk(2, 50))
    shard.sample(4)
    stats = shard.stats()
    assert stats["transitions"] == 150 and stats["episodes"] == 2 and stats["frames"] == 152
    frame_bytes = 3 * 84 * 84
    payload = 101 * frame_bytes + 100 * (4 * ACTION_DIM + 4 + 4 + 8)  # finished: trimmed
    payload += 51 * frame_bytes + 50 * (4 * ACTION_DIM + 4 + 4 + 8)  # one chunk: exact size
    index = stats["stored_bytes"] - payload
    assert 0 < index == shard._index.valid.nbytes + shard._index.cumulative.nbytes
    assert stats["bytes_per_transition"] == stats["stored_bytes"] / 150
    assert stats["ratio_vs_drqv2"] == pytest.approx(63_504 / stats["bytes_per_transition"])
    assert 2.9 < stats["ratio_vs_drqv2"] < 3.0
