"""Resume rolls a run's records back to its checkpoint (no duplicates, no frames going back)."""

import csv

from distdrq.progress import CsvLog
from distdrq.run.rundir import rollback_records


def _frames(path):
    with open(path, newline="") as fh:
        return [int(row["frame"]) for row in csv.DictReader(fh)]


def test_rollback_drops_rows_and_moves_videos_after_the_checkpoint(tmp_path):
    train, evals = CsvLog(tmp_path / "train.csv"), CsvLog(tmp_path / "eval.csv")
    for frame in range(0, 7001, 500):
        train.write({"frame": frame, "wall_time": frame / 100, "train_return": 1.0})
    for frame in (0, 5000, 6000):  # the checkpoint (frame 6500) saw the evaluation at 5000
        evals.write({"frame": frame, "eval_return": frame / 10, "eval_return_std": 1.0})
    videos = tmp_path / "videos"
    videos.mkdir()
    for frame in (0, 5000, 6000):
        (videos / f"eval_{frame:012d}.gif").write_bytes(b"GIF89a")

    notes = rollback_records(tmp_path, frame=6500, last_eval_frame=5000)

    assert _frames(tmp_path / "train.csv") == list(range(0, 6501, 500))
    assert _frames(tmp_path / "eval.csv") == [0, 5000]
    assert sorted(p.name for p in videos.glob("*.gif")) == [
        "eval_000000000000.gif",
        "eval_000000005000.gif",
    ]
    assert (videos / "superseded" / "eval_000000006000.gif").is_file()
    assert len(notes) == 3 and "dropped 1 rows after frame 6,500" in notes[0]
    # the header and the other columns survive; appending goes on after the kept rows
    CsvLog(tmp_path / "eval.csv").write({"frame": 6000, "eval_return": 1.0})
    assert _frames(tmp_path / "eval.csv") == [0, 5000, 6000]
    with open(tmp_path / "eval.csv", newline="") as fh:
        assert next(csv.reader(fh)) == ["frame", "eval_return", "eval_return_std"]
    # nothing to undo: nothing said, nothing changed
    assert rollback_records(tmp_path, frame=10_000, last_eval_frame=6000) == []


def test_rollback_without_records_is_a_no_op(tmp_path):
    assert rollback_records(tmp_path, frame=0, last_eval_frame=-1) == []
