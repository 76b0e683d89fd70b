"""The small real run that the tests starting ``flwr-byz`` on a local SuperLink share:
FABA (assumed Byzantine fraction 0.25) against a random-fault half of the nodes,
seed 7. Each test module sets its own number of rounds."""

from __future__ import annotations

SMALL_RUN = {
    "strategy": "faba",
    "byzantine-fraction": 0.5,
    "assumed-byzantine-fraction": 0.25,
    "attack": "random-fault",
    "seed": 7,
}

#: A GAA run whose checkpoints hold a window: ψ learns at round 3 of 5.
GAA_WINDOW_RUN = {
    "strategy": "gaa",
    "num-server-rounds": 5,
    "gaa-window": 3,  # ψ learns at round 3: the checkpoint holds a window
    "attack": "sign-flip",
    "byzantine-fraction": 0.5,
}
