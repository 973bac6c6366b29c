"""The Ray layer: launch, coordinator, env actors, learner, replay actors.

Ray is imported only below this package. Importing it first runs
:func:`enable_token_auth_if_available`, which must happen before Ray itself is imported.
"""

from __future__ import annotations

import os
from pathlib import Path


def enable_token_auth_if_available() -> None:
    """Let this process authenticate to the Ray clusters it joins.

    Ray 2.60 clusters use token authentication by default, but a client joining one with
    ``ray.init(address=...)`` sends its token (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or
    ``~/.ray/auth_token``) only if ``RAY_AUTH_MODE=token`` was set *before Ray was imported*
    (Ray reads it into its configuration once); otherwise the cluster answers "Authentication
    token is missing or incorrect". An explicit RAY_AUTH_MODE always wins.
    """
    if "RAY_AUTH_MODE" in os.environ:
        return
    default = Path.home() / ".ray" / "auth_token"
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", str(default)))
    if os.environ.get("RAY_AUTH_TOKEN") or token_file.is_file():
        os.environ["RAY_AUTH_MODE"] = "token"


enable_token_auth_if_available()
