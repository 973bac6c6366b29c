"""`distdrq plot`: a reference is drawn up to the runs' frames unless asked for whole."""

from distdrq.plot import reference_until


def test_reference_stops_just_past_the_runs_last_frame():
    points = [(float(f), 1.0, 0.0) for f in range(0, 1_000_001, 20_000)]
    kept = reference_until(points, 40_000)
    assert [p[0] for p in kept] == [0.0, 20_000.0, 40_000.0, 60_000.0]
    assert reference_until(points, 10_000_000) == points  # beyond the end: all of it
    assert [p[0] for p in reference_until(points, 5)] == [0.0, 20_000.0]
