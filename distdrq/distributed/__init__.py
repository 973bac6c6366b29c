"""The Ray layer: launch, coordinator, env actors, learner, replay actors."""

from __future__ import annotations

import faulthandler
import os
import sys
from pathlib import Path


def crash_tracebacks() -> None:
    """Make a native crash of this actor process (SIGSEGV, SIGABRT from a corrupted heap...)
    print every Python thread's stack to its stderr (Ray's ``worker-*.err`` log) before Ray's
    own handler reports the signal: without it the log names only a program counter. Called
    in each actor's constructor, after Ray installed its handlers (faulthandler chains to
    them)."""
    if not faulthandler.is_enabled():
        faulthandler.enable(all_threads=True)


def enable_token_auth_if_available() -> None:
    """Let this process authenticate to a Ray cluster it joins by explicit address.

    Ray 2.60 clusters use token authentication by default, but ``ray.init(address=...)`` with
    an explicit address sends the token (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or
    ``~/.ray/auth_token``) only when ``RAY_AUTH_MODE=token``; otherwise the cluster answers
    "Authentication token is missing or incorrect". Call this right before joining. It does
    what Ray's own ``_enable_token_auth`` does: set the variable (child processes inherit it)
    and refresh Ray's configuration, which Ray caches when it is imported. An explicit
    RAY_AUTH_MODE always wins; without a token nothing changes.
    """
    if "RAY_AUTH_MODE" in os.environ:
        return
    default = Path.home() / ".ray" / "auth_token"
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", str(default)))
    if not (os.environ.get("RAY_AUTH_TOKEN") or token_file.is_file()):
        return
    os.environ["RAY_AUTH_MODE"] = "token"
    if "ray" in sys.modules:
        from ray._raylet import Config

        Config.initialize("")
