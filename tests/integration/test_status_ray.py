"""`distdrq status` on a live cluster: alive env actors from Ray's state API, or from pings."""

import subprocess
import sys

import ray

from distdrq import status


def test_status_counts_alive_env_actors_by_state_and_by_ping():
    ray.init(num_cpus=1, include_dashboard=True, log_to_driver=False, namespace=status.NAMESPACE)
    try:

        @ray.remote(num_cpus=0)
        class FakeCoordinator:  # what print_status reads of a coordinator's snapshot
            def snapshot(self):
                counters = dict(
                    frames=1200, updates=34, episodes=2, last_train_return=5.0,
                    last_eval_return=float("nan"), weight_version=7,
                )  # fmt: skip
                return {"counters": counters, "roles": {"env-0": {"restarts": 1}}, "stop": False}

        @ray.remote(num_cpus=0)
        class FakeEnv:
            def ping(self):
                return True

        keep = [FakeCoordinator.options(name="fake-coordinator").remote()]
        keep += [FakeEnv.options(name=f"fake-env-{i}").remote() for i in range(2)]
        ray.get([h.ping.remote() for h in keep[1:]])
        names = ["fake-env-0", "fake-env-1"]
        states = status._actor_states()
        assert states is not None and [states[n] for n in names] == ["ALIVE", "ALIVE"]
        assert status._count_alive(names, states) == 2
        assert status._count_alive(names, None) == 2  # by ping, where there is no dashboard
        address = ray.get_runtime_context().gcs_address
        out = subprocess.run(
            [sys.executable, "-m", "distdrq.cli", "status", "--address", address],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr[-2000:]
        row = next(x for x in out.stdout.splitlines() if x.startswith("fake "))
        assert "2/2" in row and "1,200" in row and "running" in row
        assert "env-0: restarted 1 time(s)" in out.stdout
    finally:
        ray.shutdown()
