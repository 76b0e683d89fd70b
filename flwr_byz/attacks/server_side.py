"""``ServerSideAttack``: colluding, omniscient attackers in front of a strategy."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from logging import INFO
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from flwr_byz.aggregation.bounds import byzantine_budget
from flwr_byz.records import ModelLayout
from flwr_byz.strategy.layer_state import (
    NodeIdMap,
    load_tagged_state,
    map_node_id,
    tagged_state,
)

from . import tailored
from ._flat import ArrayMismatchError, as_numpy, check_same_layout, flat_update
from ._flat import apply_update as _apply_update
from ._flat import float_keys as _float_keys
from .behaviour import attack_generator, tamper_update
from .colluders import Colluders, defence_aggregate, flat_gradient, load_colluders
from .config import (
    COLLUDER_DATA_ATTACKS,
    COLLUDING_ATTACKS,
    DATA_ATTACKS,
    DEFAULT_LEARNING_RATE,
    UPDATE_ATTACKS,
    byzantine_partitions,
    check_attack_config,
    merged,
    resolve_side,
    role_for,
)
from .omniscient import alie, alie_z, ipm, min_max, min_sum

SERVER_SIDE_ATTACKS: tuple[str, ...] = UPDATE_ATTACKS + COLLUDING_ATTACKS


def uses_colluder_data(attack: str, cfg: Mapping[str, Any]) -> bool:
    """Whether ``attack`` (with ``cfg``'s inner attack, sybil base and strategy)
    needs the colluders' data and the model (:class:`Colluders`)."""
    c = {**merged(cfg), **dict(cfg)}
    if attack in COLLUDER_DATA_ATTACKS:
        return True
    if attack == "pretense-drift":
        return uses_colluder_data(str(c["drift-attack"]), cfg)
    if attack in ("sybil", "sybil-noise"):
        return uses_colluder_data(str(c["sybil-base"]), cfg)
    if attack == "agr-tailored":
        return c.get("strategy") in ("fltrust", "zeno")
    return False


class ServerSideAttack(Strategy):
    """Wrap any Strategy; replace chosen nodes' train replies before it aggregates.

    Simulates colluding attackers that see every honest update of the round (ALIE,
    IPM, min-max, min-sum, and the defence-aware suite of
    :data:`~flwr_byz.attacks.ADAPTIVE_ATTACKS`) and, for comparison, the update-only
    attacks
    (random-fault, uniform-noise, sign-flip, scaling) applied to a node's own reply.
    The wrapped strategy never learns who was tampered: it receives ordinary
    replies whose arrays changed.

    Parameters
    ----------
    strategy : Strategy
        The defence (or FedAvg) to attack; configure_*, aggregate_evaluate and
        summary are delegated, and so is any other attribute (e.g. ``history``).
    attack : str
        One of :data:`SERVER_SIDE_ATTACKS`.
    byzantine_node_ids : Iterable[int]
        Flower node ids of the compromised nodes.
    seed : int (default: 0)
        Seeds the role schedules and the noise.
    config : Mapping, optional
        Further run-config keys (``ATTACK_DEFAULTS``): ``attack-pattern``,
        ``pretense-rounds``, ``flip-period``, ``flip-probability``, ``noise-*``,
        ``scale-factor``, ``ipm-epsilon``, ``alie-z``, ``perturbation``.
    node_keys : Mapping[int, int], optional
        node id -> key seeding that node's role and noise (pass partition ids to
        replay exactly what :func:`byzantine_mod` would do); default the node id.
    learning_rate : float
        The clients' learning rate (noise attacks send ``−λ·g_noise``).
    colluders : Colluders, optional
        The colluders' data, QV-distribution samples and model: required by the
        attacks that run the model (qv-orthogonal, class-targeted, and those built
        on them; see :func:`uses_colluder_data`).

    Notes
    -----
    The adaptive attacks read the defence from ``config`` as its run-config keys
    (``strategy``, ``assumed-byzantine-fraction``, ``geomed-method``, ``zeno-*``,
    ``learning-rate``): they know the rule and its thresholds.

    Honest updates are ``Δ_i = reply_i − sent_i`` over the float arrays, taken from
    the replies of nodes that are not Byzantine this round and parse cleanly
    (one ArrayRecord with the sent keys/shapes/dtypes, finite values). Replies that
    do not parse are passed through untouched, for the defence to reject. If no
    honest reply is available the attackers fall back to their own true updates.
    ALIE's z defaults to Baruch et al.'s value for n parsed replies and f Byzantine
    ones (``alie-z = "auto"``).
    """

    def __init__(
        self,
        strategy: Strategy,
        attack: str,
        byzantine_node_ids: Iterable[int],
        seed: int = 0,
        *,
        config: Mapping[str, Any] | None = None,
        node_keys: Mapping[int, int] | None = None,
        learning_rate: float = DEFAULT_LEARNING_RATE,
        colluders: Colluders | None = None,
    ) -> None:
        if attack in DATA_ATTACKS or attack not in SERVER_SIDE_ATTACKS:
            raise ValueError(
                f"attack={attack!r} cannot run server-side; valid values: "
                f"{', '.join(SERVER_SIDE_ATTACKS)}"
            )
        cfg = {**dict(config or {}), "attack": attack, "seed": seed}
        cfg.setdefault("attack-side", "server")
        check_attack_config(cfg)
        if colluders is None and uses_colluder_data(attack, cfg):
            raise ValueError(
                f"attack={attack!r} runs the model on the colluders' data: pass "
                "colluders= (flwr_byz.attacks.load_colluders)"
            )
        self.strategy = strategy
        self.run_config = dict(cfg)
        self.colluders = colluders
        self.attack = attack
        self.byzantine_node_ids = sorted({int(i) for i in byzantine_node_ids})
        self.seed = int(seed)
        self.config = merged(cfg)
        self.node_keys = dict(node_keys or {})
        self.learning_rate = float(learning_rate)
        self.tampered: dict[int, list[int]] = {}
        self._sent: dict[int, dict[str, np.ndarray]] = {}

    @classmethod
    def from_run_config(
        cls,
        strategy: Strategy,
        run_config: Mapping[str, Any],
        node_partitions: Mapping[int, int],
    ) -> Strategy:
        """Wrap ``strategy`` when the run config asks for a server-side attack.

        Returns ``strategy`` itself when ``resolve_side(run_config)`` is not
        ``"server"`` (no attack, or an attack the malicious clients run — wrapping
        then would tamper those replies twice).

        Parameters
        ----------
        strategy : Strategy
            The defence.
        run_config : Mapping
            Flower run config (``attack``, ``attack-side``, pattern keys, ``seed``,
            ``learning-rate``, ``byzantine-fraction`` / ``byzantine-partitions``).
        node_partitions : Mapping[int, int]
            node id -> partition id of every node in the federation (the answers
            to the ClientApp's ``query``); partitions key the roles and noise exactly
            as :func:`byzantine_mod` would.
        """
        if resolve_side(run_config) != "server":
            return strategy
        chosen = set(byzantine_partitions(run_config, len(node_partitions)))
        nodes = [nid for nid, pid in node_partitions.items() if pid in chosen]
        colluders = None
        attack = str(run_config["attack"])
        if uses_colluder_data(attack, run_config):
            colluders = load_colluders(run_config, sorted(chosen), len(node_partitions))
        return cls(
            strategy,
            str(run_config["attack"]),
            nodes,
            int(run_config.get("seed", 0)),
            config=run_config,
            node_keys=dict(node_partitions),
            learning_rate=float(run_config.get("learning-rate", DEFAULT_LEARNING_RATE)),
            colluders=colluders,
        )

    def add_node(self, node_id: int, key: int, byzantine: bool) -> None:
        """A node that joined during the run (e.g. a restarted SuperNode)."""
        self.node_keys[int(node_id)] = int(key)
        if byzantine:
            self.byzantine_node_ids = sorted({*self.byzantine_node_ids, int(node_id)})

    def state_dict(self) -> dict[str, Any]:
        """``{"tampered": {round: [node ids]}, "strategy": <the defence's tagged
        state>}``: which nodes it tampered in each round (a record; roles and
        noise are pure functions of seed, node and round)."""
        return {
            "tampered": {int(r): list(n) for r, n in self.tampered.items()},
            "strategy": tagged_state(self.strategy),
        }

    def load_state_dict(
        self, state: Mapping[str, Any], node_ids: NodeIdMap = None
    ) -> None:
        """Restore :meth:`state_dict` output, node ids mapped by ``node_ids``."""
        load_tagged_state(self.strategy, state["strategy"], node_ids)
        self.tampered = {
            int(r): [map_node_id(n, node_ids) for n in ids]
            for r, ids in state["tampered"].items()
        }

    def __getattr__(self, name: str) -> Any:
        # Only called for attributes this wrapper lacks: expose the defence's.
        if name == "strategy":
            raise AttributeError(name)
        return getattr(self.strategy, name)

    def _key(self, node_id: int) -> int:
        return int(self.node_keys.get(node_id, node_id))

    def byzantine_in_round(self, server_round: int) -> list[int]:
        """Compromised node ids that play Byzantine in ``server_round``."""
        return [
            nid
            for nid in self.byzantine_node_ids
            if role_for(self.config, self._key(nid)).is_byzantine(server_round)
        ]

    def summary(self) -> None:
        """Log the attack, then the wrapped strategy's summary."""
        log(
            INFO,
            "\t├──> ServerSideAttack: %s on nodes %s (pattern %s)",
            self.attack,
            self.byzantine_node_ids,
            self.config["attack-pattern"],
        )
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Delegate, remembering the arrays each node was sent."""
        messages = list(
            self.strategy.configure_train(server_round, arrays, config, grid)
        )
        self._sent = {}
        converted: dict[int, dict[str, np.ndarray]] = {}
        for msg in messages:
            records = msg.content.array_records
            if len(records) != 1:
                continue
            record = next(iter(records.values()))
            if id(record) not in converted:
                converted[id(record)] = as_numpy(record)
            self._sent[msg.metadata.dst_node_id] = converted[id(record)]
        return messages

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Delegate."""
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Delegate."""
        return self.strategy.aggregate_evaluate(server_round, replies)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Tamper the Byzantine nodes' replies, then let the strategy aggregate."""
        replies = list(replies)
        byzantine = set(self.byzantine_in_round(server_round))
        parsed: dict[int, tuple[Message, str, dict[str, np.ndarray], torch.Tensor]] = {}
        for msg in replies:
            item = self._parse(msg)
            if item is not None:
                parsed[msg.metadata.src_node_id] = (msg, *item)
        targets = [nid for nid in parsed if nid in byzantine]
        if self.attack == "pretense-drift" and not self._drift(server_round):
            targets = []  # the pretense: every colluder sends its true update
        if targets:
            crafted = self._craft(server_round, parsed, targets)
            for nid in targets:
                msg, out_key, local, _ = parsed[nid]
                sent = self._sent[nid]
                msg.content.array_records[out_key] = _apply_update(
                    sent, local, _float_keys(sent), crafted[nid]
                )
        self.tampered[server_round] = sorted(targets)
        return self.strategy.aggregate_train(server_round, replies)

    def _parse(
        self, msg: Message
    ) -> tuple[str, dict[str, np.ndarray], torch.Tensor] | None:
        sent = self._sent.get(msg.metadata.src_node_id)
        if sent is None or msg.has_error():
            return None
        try:
            records = msg.content.array_records
            if len(records) != 1:
                return None
            out_key, record = next(iter(records.items()))
            local = as_numpy(record)
            check_same_layout(sent, local)
        except (ArrayMismatchError, TypeError, ValueError):
            return None
        delta = flat_update(sent, local, _float_keys(sent))
        if not bool(torch.isfinite(delta).all()):
            return None
        return out_key, local, delta

    def _drift(self, server_round: int) -> float:
        return tailored.drift_weight(
            server_round,
            int(self.config["drift-honest-rounds"]),
            int(self.config["drift-blend-rounds"]),
        )

    def _craft(
        self,
        server_round: int,
        parsed: Mapping[int, tuple[Message, str, dict[str, np.ndarray], torch.Tensor]],
        targets: list[int],
    ) -> dict[int, torch.Tensor]:
        return self._craft_attack(self.attack, server_round, parsed, targets)

    def _craft_attack(
        self,
        attack: str,
        server_round: int,
        parsed: Mapping[int, tuple[Message, str, dict[str, np.ndarray], torch.Tensor]],
        targets: list[int],
    ) -> dict[int, torch.Tensor]:
        if attack in UPDATE_ATTACKS:
            return {
                nid: tamper_update(
                    attack,
                    parsed[nid][3],
                    self.config,
                    attack_generator(self.seed, self._key(nid), server_round),
                    self.learning_rate,
                )
                for nid in targets
            }
        own = torch.stack([parsed[nid][3] for nid in targets])
        honest = [item[3] for nid, item in parsed.items() if nid not in targets]
        x = torch.stack(honest) if honest else own
        if attack == "pretense-drift":
            t = self._drift(server_round)
            inner = self._craft_attack(
                str(self.config["drift-attack"]), server_round, parsed, targets
            )
            return {
                nid: (1.0 - t) * parsed[nid][3] + t * inner[nid].to(torch.float64)
                for nid in targets
            }
        generator = attack_generator(
            self.seed, min(self._key(nid) for nid in targets), server_round
        )
        if attack in ("sybil", "sybil-noise"):
            base = str(self.config["sybil-base"])
            if base == "sign-flip":
                vector = tailored.scaled_to(-own.mean(dim=0), tailored.honest_norm(x))
            else:
                vector = self._craft_attack(base, server_round, parsed, targets)[
                    targets[0]
                ]
            noise = float(self.config["sybil-noise"]) if attack == "sybil-noise" else 0
            rows = tailored.sybil_rows(vector, len(targets), noise, generator)
            return {nid: rows[i] for i, nid in enumerate(targets)}
        if attack == "fang-trim":
            rows = tailored.fang_trim(
                torch.cat([x, own]) if honest else own,
                len(targets),
                generator,
                float(self.config["fang-trim-b"]),
            )
            return {nid: rows[i] for i, nid in enumerate(targets)}
        if attack == "alie":
            z = self.config["alie-z"]
            z = alie_z(len(parsed), len(targets)) if z == "auto" else float(z)
            update = alie(x, z)
        elif attack == "ipm":
            update = ipm(x, float(self.config["ipm-epsilon"]))
        elif attack == "min-max":
            update = min_max(x, str(self.config["perturbation"]))
        elif attack == "min-sum":
            update = min_sum(x, str(self.config["perturbation"]))
        elif attack == "fang-krum":
            f = byzantine_budget(
                float(self.run_config.get("assumed-byzantine-fraction", 0.0)),
                len(parsed),
            )
            update = tailored.fang_krum(
                torch.cat([x, own]) if honest else own, x, len(targets), f
            )
        elif attack == "agr-tailored":
            model = layout = None
            if self.colluders is not None:
                model, layout = self._model(targets[0])
            aggregate = defence_aggregate(
                self.run_config, len(parsed), self.colluders, model, layout
            )
            perturbation = str(self.config["perturbation"])
            update = (
                min_max(x, perturbation)
                if aggregate is None
                else tailored.agr_tailored(x, len(targets), aggregate, perturbation)
            )
        else:  # qv-orthogonal, class-targeted: the model on the colluders' data
            update = self._data_attack(attack, targets[0], tailored.honest_norm(x))
        return dict.fromkeys(targets, update)

    def _model(self, nid: int) -> tuple[torch.nn.Module, ModelLayout]:
        """The model at the weights sent this round, and the flat layout."""
        if self.colluders is None:  # checked at construction
            raise ValueError(f"attack={self.attack!r} needs colluders=")
        sent = self._sent[nid]
        layout = ModelLayout.from_arrays({k: sent[k] for k in _float_keys(sent)})
        return self.colluders.model_at(sent), layout

    def _data_attack(self, attack: str, nid: int, norm: float) -> torch.Tensor:
        model, layout = self._model(nid)
        colluders = self.colluders
        assert colluders is not None
        x_own, y_own = colluders.own
        if attack == "class-targeted":
            target = int(self.config["target-class"])
            if target >= colluders.num_classes:
                raise ValueError(
                    f"target-class={target} is not valid; valid values: 0.."
                    f"{colluders.num_classes - 1} (the task's classes)"
                )
            labels = torch.full_like(y_own, target)
            return tailored.scaled_to(
                -flat_gradient(model, layout, x_own, labels), norm
            )
        ascent = flat_gradient(model, layout, x_own, y_own)
        qv_descent = -flat_gradient(model, layout, *colluders.qv)
        return tailored.qv_orthogonal(
            ascent, qv_descent, float(self.config["qv-epsilon"]), norm
        )
