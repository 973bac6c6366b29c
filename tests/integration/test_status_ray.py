"""On a live local cluster: `distdrq status` (alive env actors from Ray's state API, or from
pings) and README's commands for Ray's own tools under token authentication."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import ray

from distdrq import status

pytestmark = pytest.mark.ray  # starts Ray: one such test at a time (tests/conftest.py)

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture(scope="module")
def cluster():
    ctx = ray.init(
        num_cpus=1, include_dashboard=True, log_to_driver=False, namespace=status.NAMESPACE
    )
    try:
        yield ray.get_runtime_context().gcs_address, ctx.dashboard_url
    finally:
        ray.shutdown()


def test_status_counts_alive_env_actors_by_state_and_by_ping(cluster):
    @ray.remote(num_cpus=0)
    class FakeCoordinator:  # what print_status reads of a coordinator's snapshot
        def snapshot(self):
            from distdrq.distributed.messages import RoleState, RunSnapshot
            from distdrq.run.counters import Counters

            counters = Counters(
                frames=1200, updates=34, episodes=2, last_train_return=5.0,
                last_eval_return=float("nan"), weight_version=7,
            )  # fmt: skip
            return RunSnapshot(counters, {"env-0": RoleState(starts=2)}, stop=False)

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
    out = subprocess.run(
        [sys.executable, "-m", "distdrq.cli", "status", "--address", cluster[0]],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    row = next(x for x in out.stdout.splitlines() if x.startswith("fake "))
    assert "2/2" in row and "1,200" in row and "running" in row
    assert "env-0: restarted 1 time(s)" in out.stdout


def _readme_command(word: str) -> str:
    block = re.search(r"```bash\n(RAY_AUTH_MODE=token ray status.*?)```", README.read_text(), re.S)
    assert block, "README shows no commands for Ray's own tools"
    return next(line for line in block.group(1).splitlines() if word in line)


def test_readme_commands_for_ray_tools_work_and_are_needed(cluster):
    if not (Path.home() / ".ray" / "auth_token").is_file():
        pytest.skip("this Ray runs without token authentication")
    gcs, dashboard = cluster
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}

    def sh(command: str) -> subprocess.CompletedProcess:
        command = command.replace("127.0.0.1:6379", gcs).replace("127.0.0.1:8265", dashboard)
        return subprocess.run(
            ["bash", "-c", command], capture_output=True, text=True, env=env, timeout=120
        )

    ray_status = _readme_command("ray status")
    assert sh(ray_status).returncode == 0
    refused = sh(ray_status.replace("RAY_AUTH_MODE=token ", ""))
    assert refused.returncode != 0 and "Authentication token is missing" in refused.stderr
    curl = _readme_command("curl") + " -s -o /dev/null -w '%{http_code}'"
    assert sh(curl).stdout == "200"
    assert sh(re.sub(r'-H "[^"]*" ', "", curl)).stdout == "401"
