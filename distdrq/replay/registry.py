"""The frame codecs of replay, by name: what ``replay.codec`` may be.

A codec is a *reference structure* (which earlier frame each frame is coded against), a group
size and a way to code a frame against its reference (:class:`CodecSpec`); how they work is
told in :mod:`distdrq.replay.codec`. Replay ships four (:data:`CODECS`), measured in
benchmarks/RESULTS.md (full-size shard, one core):

- ``lz4d-star32``, the default: the smallest (walker_walk 11.9x smaller than DrQ-v2's replay,
  cheetah_run 19.8x, quadruped_walk 7.8x) at 52-95 batches of 256 per second;
- ``lz4-key16``: the fastest lossless codec to sample (walker 90, cheetah 111, quadruped 77
  batches/s), 20-40% larger than the default;
- ``raw``: frames as they are (stored once: 3x smaller than DrQ-v2), the fastest sampling
  (about 240 batches/s);
- ``lz4-tree``: the default before ``lz4d-star32``, kept so that the snapshots and checkpoints
  it wrote with ``replay.disk_codec=stored`` (which hold its bytes) still restore; for new runs
  pick one of the others.

Other structures and group sizes, compared in benchmarks/replay_codec.py, are registered by
benchmarks/codec_experiments.py with :func:`register_codec`: every part of replay then accepts
them by name, but ``replay.codec`` offers only :data:`CODECS`.

Standard library only: :mod:`distdrq.config` reads the names without loading numpy or numba.
"""

from __future__ import annotations

from dataclasses import dataclass

STRUCTURES = ("raw", "key", "chain", "tree", "star")
"""reference structures (:mod:`distdrq.replay.codec` says which frame each refers to)"""
PREDICTIONS = ("residual", "dict")
"""how a frame is coded against its reference (:mod:`distdrq.replay.codec`)"""
LZ4_MAX_OFFSET = 65_535
"""the farthest back an LZ4 match reaches, in bytes"""


@dataclass(frozen=True)
class CodecSpec:
    """How a codec predicts and compresses frames."""

    name: str
    structure: str
    """raw | key | chain | tree | star"""
    group: int = 16
    """K: an intra frame every K frames"""
    anchor: int = 4
    """M (tree and star): an anchor every M frames"""
    hc_level: int = 9
    """LZ4-HC level (0: plain LZ4 fast mode)"""
    predict: str = "residual"
    """residual | dict: how a frame is coded against its reference"""

    def __post_init__(self) -> None:
        if self.structure not in STRUCTURES or self.predict not in PREDICTIONS:
            raise ValueError(
                f"codec {self.name!r}: structure must be one of {', '.join(STRUCTURES)} and "
                f"predict one of {', '.join(PREDICTIONS)}"
            )
        if self.group < 1 or self.anchor < 1:
            raise ValueError(f"codec {self.name!r}: group and anchor must be >= 1")

    def by_dict(self, frame_bytes: int) -> bool:
        """Whether frames of ``frame_bytes`` are dictionary-coded: LZ4 reaches back at most
        65,535 bytes, so larger frames (above 3x147x147) could not use their reference and are
        residual-coded instead (84x84 RGB is 21,168 bytes)."""
        return self.predict == "dict" and frame_bytes <= LZ4_MAX_OFFSET


_REGISTRY: dict[str, CodecSpec] = {}


def register_codec(spec: CodecSpec) -> CodecSpec:
    """Make ``spec`` known by its name to every part of replay (encoder, shard, writer).

    Registering the same spec again does nothing; another spec under a name already taken is a
    :class:`ValueError` (stored bytes would decode differently)."""
    known = _REGISTRY.setdefault(spec.name, spec)
    if known != spec:
        raise ValueError(f"codec {spec.name!r} is already registered as {known}")
    return spec


def codec_spec(name: str) -> CodecSpec:
    """The :class:`CodecSpec` of ``name``; ValueError names the choices."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown frame codec {name!r}; choose one of {', '.join(_REGISTRY)}"
        ) from None


def is_registered(name: object) -> bool:
    """Whether ``name`` names a registered codec."""
    return isinstance(name, str) and name in _REGISTRY


_SHIPPED = (
    CodecSpec("raw", "raw", group=1),
    CodecSpec("lz4d-star32", "star", group=32, anchor=4, predict="dict"),
    CodecSpec("lz4-key16", "key", group=16),
    CodecSpec("lz4-tree", "tree", group=16, anchor=4),
)
for _spec in _SHIPPED:
    register_codec(_spec)

CODECS: tuple[str, ...] = tuple(spec.name for spec in _SHIPPED)
"""the codecs replay ships (the module docstring says which to pick): ``replay.codec``'s
choices"""
DEFAULT_CODEC = "lz4d-star32"
