"""TensorBoard events mirror the CSV logs; a resume rebuilds them without duplicates."""

import numpy as np
import pytest

from distdrq.progress import CsvLog
from distdrq.run.rundir import removed_if_unstarted, rollback_records
from distdrq.tblog import EVENTS_GLOB, EventLog, open_events, read_events, rebuild_events
from distdrq.video import write_gif


def _gif(path, frames=3):
    rng = np.random.default_rng(0)
    return write_gif(
        [rng.integers(0, 255, (3, 24, 32), dtype=np.uint8) for _ in range(frames)], path
    )


def test_rows_become_scalars_at_their_frame_and_videos_images(tmp_path):
    events = EventLog(tmp_path)
    train = CsvLog(tmp_path / "train.csv", events)
    evals = CsvLog(tmp_path / "eval.csv", events)
    gif = _gif(tmp_path / "videos" / "eval_000000000000.gif")
    train.write({"frame": 0, "train_return": 1.5, "critic_loss": float("nan"), "note": "x"})
    train.write({"frame": 1000, "train_return": 2.5, "critic_loss": 0.25, "note": ""})
    evals.write({"frame": 0, "eval_return": 7.0, "eval_return_std": None})
    evals.write({"frame": 2000, "eval_return": 9.0, "eval_return_std": 1.0})  # no video
    events.close()

    points = read_events(tmp_path)
    assert points["train/train_return"] == [(0, 1.5), (1000, 2.5)]
    # not a finite number: not in the events (the CSV keeps it)
    assert points["train/critic_loss"] == [(1000, 0.25)]
    assert "train/note" not in points and "train/frame" not in points
    assert points["eval/eval_return"] == [(0, 7.0), (2000, 9.0)]
    assert points["eval/eval_return_std"] == [(2000, 1.0)]
    assert points["eval/video"] == [(0, gif.read_bytes())]  # the GIF itself: TensorBoard plays it
    assert len(list(tmp_path.glob(EVENTS_GLOB))) == 1


def test_resume_rebuilds_the_events_from_the_rolled_back_records(tmp_path):
    """A killed session's events run past its checkpoint and miss what it had not flushed;
    after the rollback the events equal the records: each step once, nothing lost."""
    events = open_events(tmp_path, enabled=True, resume=False)
    train = CsvLog(tmp_path / "train.csv", events)
    evals = CsvLog(tmp_path / "eval.csv", events)
    for frame in range(0, 7001, 500):
        train.write({"frame": frame, "wall_time": frame / 100, "train_return": frame / 10})
    for frame in (0, 5000, 6000):
        _gif(tmp_path / "videos" / f"eval_{frame:012d}.gif")
        evals.write({"frame": frame, "wall_time": frame / 100, "eval_return": frame / 5})
    events.flush()  # the killed process never closed its writer
    before = read_events(tmp_path)
    assert [s for s, _ in before["eval/eval_return"]] == [0, 5000, 6000]

    rollback_records(tmp_path, frame=6500, last_eval_frame=5000)
    resumed = open_events(tmp_path, enabled=True, resume=True)
    train = CsvLog(tmp_path / "train.csv", resumed)
    evals = CsvLog(tmp_path / "eval.csv", resumed)
    train.write({"frame": 7000, "wall_time": 71.0, "train_return": 1.0})
    evals.write({"frame": 6000, "wall_time": 71.0, "eval_return": 2.0})
    resumed.close()

    points = read_events(tmp_path)
    assert points["train/train_return"] == [(f, f / 10) for f in range(0, 6501, 500)] + [
        (7000, 1.0)
    ]
    assert points["eval/eval_return"] == [(0, 0.0), (5000, 1000.0), (6000, 2.0)]
    # the superseded video of the dropped evaluation is gone from the events too
    assert [s for s, _ in points["eval/video"]] == [0, 5000]
    # the rebuilt file, then the resumed one: TensorBoard reads a run's files in name order
    rebuilt, new = sorted(tmp_path.glob(EVENTS_GLOB))
    (tmp_path / "first").mkdir()
    rebuilt.rename(tmp_path / "first" / rebuilt.name)
    assert read_events(tmp_path / "first")["train/train_return"][-1] == (6500, 650.0)


def test_rebuild_without_records_and_switched_off(tmp_path):
    assert rebuild_events(tmp_path) == 0
    assert read_events(tmp_path) == {}
    assert open_events(tmp_path / "off", enabled=False, resume=False) is None
    assert not (tmp_path / "off").exists()


def test_an_unstarted_run_with_only_an_event_file_is_removed(tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(RuntimeError), removed_if_unstarted(run_dir, fresh=True):
        run_dir.mkdir()
        (run_dir / "config.yaml").write_text("x: 1\n")
        EventLog(run_dir).close()
        raise RuntimeError("the first render failed")
    assert not run_dir.exists()
