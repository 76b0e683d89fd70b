"""Scoring who a defence flagged as Byzantine against the ground truth."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence


def precision_recall(
    flagged: Iterable[int], byzantine: Iterable[int]
) -> tuple[float, float]:
    """Precision and recall of ``flagged`` ids against the true ``byzantine`` ids.

    An empty flag set has precision 1 (it made no false claim); an empty truth has
    recall 1 (there was nothing to find).
    """
    flagged, byzantine = set(flagged), set(byzantine)
    hits = len(flagged & byzantine)
    precision = hits / len(flagged) if flagged else 1.0
    recall = hits / len(byzantine) if byzantine else 1.0
    return precision, recall


def flagged_by_removals(
    removed_per_round: Sequence[Iterable[int]],
    seen_per_round: Sequence[Iterable[int]],
) -> list[int]:
    """Ids removed in more than half of the rounds in which they took part.

    For rules that remove rows (FABA, Krum, …), one round's removal is weak
    evidence; a node the rule keeps removing is what the rule "detected".
    """
    removed = Counter(i for ids in removed_per_round for i in set(ids))
    seen = Counter(i for ids in seen_per_round for i in set(ids))
    return sorted(i for i, count in removed.items() if count * 2 > seen[i])
