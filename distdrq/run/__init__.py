"""The run core shared by ``distdrq train`` (one process) and ``distdrq launch`` (Ray).

- :mod:`distdrq.run.counters`: one :class:`Counters` type for a run's progress, checkpointed
  by both modes (the coordinator holds it in ``launch``);
- :mod:`distdrq.run.evaluation`: mean-action evaluation episodes with the video rule;
- :mod:`distdrq.run.rundir`: the run directory (resolved config, records rolled back on
  resume, the predecessor whose coded episodes a new snapshot reuses).

Nothing here imports Ray; ``distdrq/distributed`` builds on it, as ``distdrq/trainer.py`` does.
"""
