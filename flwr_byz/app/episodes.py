"""The rounds of a run: GAA's episodes, and what ends every round.

GAA's outer loop (Algorithm 1): every episode restarts from the same θ₀ and is one
Flower ``Strategy.start``; the strategy keeps its policy and credits across them
(any other strategy plays one episode). A resumed run starts after the
checkpoint's round, in its episode (the next one when that episode was complete),
with the round numbers an uninterrupted run would have used.

Flower's ``Strategy.start`` runs all rounds of an episode in one call; the one
call it makes at the end of every round, after the federated evaluation, is
``evaluate_fn``. :class:`RoundEnd` is that call: the central evaluation, then the
round's checkpoint, then the fault injection of ``fault-stop-after-round``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.serverapp import Grid

from flwr_byz.app.checkpoint import Resume, RunCheckpoint
from flwr_byz.app.observed_strategy import ObservedStrategy
from flwr_byz.app.results import ResultsFile, RunInterruptedError
from flwr_byz.app.round_log import RoundLog


def start_position(resume: Resume | None, rounds: int) -> tuple[int, int]:
    """``(episode, rounds of it already played)`` where the run starts."""
    first_episode, done = (1, 0) if resume is None else (resume.episode, resume.round)
    if done >= rounds:
        first_episode, done = first_episode + 1, 0
    return first_episode, done


class RoundEnd:
    """The ``evaluate_fn`` of every episode: what happens at the end of a round.

    It evaluates the global model on the server's test set, records it, writes
    the round's checkpoint, and stops the run (:class:`RunInterruptedError`) after
    round ``fault_after`` of the run (every episode's rounds counted; 0: never).
    """

    def __init__(
        self,
        *,
        observed: ObservedStrategy,
        evaluate: Callable[[int, ArrayRecord], MetricRecord],
        round_log: RoundLog,
        results: ResultsFile,
        checkpoint: RunCheckpoint,
        rounds: int,
        fault_after: int,
        run_dir: Path,
    ) -> None:
        self.observed = observed
        self.evaluate = evaluate
        self.round_log = round_log
        self.results = results
        self.checkpoint = checkpoint
        self.rounds = rounds
        self.fault_after = fault_after
        self.run_dir = run_dir

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Flower's ``evaluate_fn(server_round, arrays)`` (round 0: the start)."""
        self.round_log.see_model(arrays)  # did the round move the model?
        if server_round == 0 and self.observed.round_offset:
            return None  # a resumed episode's model: its round is on record already
        server_round += self.observed.round_offset
        metrics = self.evaluate(server_round, arrays)
        self.round_log.on_evaluate(server_round, metrics)
        if server_round > 0:
            # The round is complete (results.json flushed): checkpoint it.
            episode = self.round_log.episode
            self.checkpoint.save(
                episode, server_round, arrays, self.results.data, self.round_log.state()
            )
            played = (episode - 1) * self.rounds + server_round
            if played == self.fault_after:
                raise RunInterruptedError(
                    f"fault injection: stopped after round {server_round} of episode "
                    f"{episode} (run-config key 'fault-stop-after-round' = "
                    f"{self.fault_after}); continue with resume = '{self.run_dir}'"
                )
        return metrics


def play_episodes(
    observed: ObservedStrategy,
    grid: Grid,
    *,
    episodes: int,
    rounds: int,
    start: tuple[int, int],
    initial_arrays: ArrayRecord,
    resumed_arrays: ArrayRecord | None,
    round_timeout: float,
    train_config: ConfigRecord,
    evaluate_config: ConfigRecord,
    round_end: RoundEnd,
) -> None:
    """Play episodes ``start[0]`` to ``episodes`` of ``rounds`` rounds each.

    The first skips the ``start[1]`` rounds it already played and goes on from
    ``resumed_arrays``; every other episode starts from ``initial_arrays``.
    """
    first_episode, done = start
    try:
        for episode in range(first_episode, episodes + 1):
            round_end.round_log.episode = episode
            offset = done if episode == first_episode else 0
            observed.round_offset = offset
            observed.start(
                grid=grid,
                initial_arrays=(
                    resumed_arrays
                    if offset and resumed_arrays is not None
                    else initial_arrays
                ),
                num_rounds=rounds - offset,
                # Each round aggregates what arrived within this many seconds.
                timeout=round_timeout,
                train_config=train_config,
                evaluate_config=evaluate_config,
                evaluate_fn=round_end,
            )
    finally:
        observed.round_offset = 0
