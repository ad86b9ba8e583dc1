"""What Ray and Tune print: the study's own progress lines say what happened to each trial, so
Ray's start-up notice about token authentication and Tune's experiment banner are noise in a
study's output."""

from __future__ import annotations

import logging
import os

# Logs, at every local start, "Token authentication is enabled for this Ray cluster. Set
# RAY_AUTH_MODE=disabled to opt out": a notice, not a problem (the token protects the cluster).
RAY_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


def quiet_ray() -> None:
    """Before ``ray.init``: Tune's classic reporter, silent at ``verbose=0`` (its newer output
    prints a "Number of trials 9223372036854775807" banner for an open-ended search, whatever the
    verbosity), and Ray's token-authentication notice not shown. Authentication itself is left as
    the user or cluster has it; a user's own ``RAY_AIR_NEW_OUTPUT`` wins."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    logging.getLogger(RAY_AUTH_LOGGER).setLevel(logging.ERROR)
