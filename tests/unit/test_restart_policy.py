"""The launch's restart policy (distributed/supervisor.py RestartPolicy): back-off doubling,
progress resetting the count, the limit."""

import pytest
import ray.exceptions

from distdrq.distributed.supervisor import HEALTHY_S, RestartLimitError, RestartPolicy, first_line


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_back_off_doubles_up_to_its_cap_for_failures_without_progress():
    clock = Clock()
    policy = RestartPolicy(1.0, 5.0, max_failures=0, clock=clock)
    waits = []
    for _ in range(6):
        policy.started("learner", progress=10)
        clock.t += 100.0  # long-lived, but the learner counts updates only
        waits.append(policy.failed("learner", progress=10, reason="boom"))
    assert waits == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


def test_progress_resets_the_count():
    clock = Clock()
    policy = RestartPolicy(1.0, 30.0, max_failures=3, clock=clock)
    for _ in range(10):  # killed now and then, each incarnation made updates: never the limit
        policy.started("learner", progress=5)
        assert policy.failed("learner", progress=6, reason="killed") == 1.0
    policy.started("env-0", progress=0)
    clock.t += 1.0
    assert policy.failed("env-0", progress=0, reason="x") == 1.0
    policy.started("env-0", progress=0)
    clock.t += HEALTHY_S  # an env actor held by the rate limiter: lived long enough
    assert policy.failed("env-0", progress=0, reason="x") == 1.0


def test_the_limit_names_the_role_the_reason_and_the_fix():
    policy = RestartPolicy(0.5, 30.0, max_failures=3, clock=Clock())
    for expected in (0.5, 1.0):
        policy.started("env-1", progress=0)
        assert policy.failed("env-1", progress=0, reason="ValueError: bad") == expected
    policy.started("env-1", progress=0)
    with pytest.raises(RestartLimitError) as err:
        policy.failed("env-1", progress=0, reason="ValueError: bad")
    text = str(err.value)
    assert "env-1 failed 3 times in a row" in text
    assert "ValueError: bad" in text and "distributed.max_failures" in text
    assert "\n" not in text


def test_roles_are_counted_apart():
    policy = RestartPolicy(1.0, 30.0, max_failures=2, clock=Clock())
    policy.started("env-0", 0)
    policy.failed("env-0", 0, "x")
    policy.started("env-1", 0)
    assert policy.failed("env-1", 0, "x") == 1.0  # env-0's failure is not env-1's


def test_an_unreachable_actor_is_one_short_reason():
    """Ray's text for a SIGKILLed actor it lost its connection to is one long line that the
    restart line used to quote cut mid-word; the reason keeps only Ray's cause."""
    exc = ray.exceptions.ActorUnavailableError(
        "The actor 9b5b3778e473417b66562c4d01000000 is unavailable: The actor is temporarily "
        "unavailable: RpcError: RPC error: Socket closed rpc_code: 14. The task may or may not "
        "have been executed on the actor.",
        b"\0" * 16,
    )
    assert first_line(exc) == (
        "its process stopped answering (Ray: RpcError: RPC error: Socket closed rpc_code: 14)"
    )
