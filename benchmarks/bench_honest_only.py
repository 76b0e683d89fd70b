"""The honest-only oracle: the mean of the honest clients' updates alone.

Run::

    python -m benchmarks.bench_honest_only --dataset healthcare-style --supernodes 50 \\
        --fraction 0.7 --local-steps 5 --seeds 0,1,2

The best any defence that drops the attackers' updates can do: the app's
training replicated in-process (the same run config, partitions, initial model,
per-node batch streams and SGD steps as ``clients/client_app.py`` and
``server/server_app.py``), aggregated by the plain mean of the honest nodes'
updates, the roles being known. Prints the final test accuracy per seed and its
worst class (the lowest accuracy on any one class, as the app's
``final-worst-class-accuracy``); the gap between it and FedAvg without attack is
the data of the regions whose clients attack, which no defence can recover.
"""

from __future__ import annotations

import argparse

import torch

from flwr_byz.app.central_evaluation import evaluate_model
from flwr_byz.app.config import check_run_config
from flwr_byz.app.training import batch_generator, sgd_steps
from flwr_byz.attacks import byzantine_partitions
from flwr_byz.data import dataset_shape, load_partition, load_server_data
from flwr_byz.models import build_model


def honest_only_accuracy(run_config: dict, num_nodes: int) -> float:
    """Final test accuracy of FedAvg over the honest partitions of ``run_config``."""
    return honest_only_scores(run_config, num_nodes)[0]


def honest_only_scores(run_config: dict, num_nodes: int) -> tuple[float, float]:
    """Final test accuracy and worst-class accuracy of FedAvg over the honest
    partitions of ``run_config``."""
    cfg = check_run_config(run_config)
    seed = int(cfg["seed"])
    num_features, num_classes = dataset_shape(cfg)
    server = load_server_data(cfg, num_nodes)
    byzantine = set(byzantine_partitions(cfg, num_nodes))
    honest = [p for p in range(num_nodes) if p not in byzantine]
    train = {p: load_partition(cfg, p, num_nodes).train for p in honest}

    def model() -> torch.nn.Module:
        torch.manual_seed(seed)  # the server app's initial model
        return build_model(str(cfg["model"]), num_features, num_classes)

    theta = torch.nn.utils.parameters_to_vector(model().parameters()).detach()
    steps, lr = int(cfg["local-steps"]), float(cfg["learning-rate"])
    batch = int(cfg["batch-size"])
    for rnd in range(1, int(cfg["num-server-rounds"]) + 1):
        updates = []
        for p in honest:
            net = model()
            torch.nn.utils.vector_to_parameters(theta.clone(), net.parameters())
            generator = batch_generator(seed, p, rnd)  # the client's batches
            data = train[p]
            sgd_steps(net, data.features, data.labels, steps, lr, batch, generator)
            after = torch.nn.utils.parameters_to_vector(net.parameters()).detach()
            updates.append(after - theta)
        theta = theta + torch.stack(updates).mean(0)
    net = model()
    torch.nn.utils.vector_to_parameters(theta, net.parameters())
    accuracy, _, per_class = evaluate_model(
        net, server.test.features, server.test.labels
    )
    return accuracy, min(a for a in per_class if a == a)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="yelp-style")
    parser.add_argument("--supernodes", type=int, default=10)
    parser.add_argument("--fraction", type=float, default=0.7)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--local-steps", type=int, default=1)
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args(argv)
    for seed in (int(s) for s in args.seeds.split(",")):
        acc, worst = honest_only_scores(
            {
                "dataset": args.dataset,
                "byzantine-fraction": args.fraction,
                "attack": "random-fault",  # only the roles matter
                "num-server-rounds": args.rounds,
                "local-steps": args.local_steps,
                "seed": seed,
            },
            args.supernodes,
        )
        print(
            f"seed {seed}: honest only {100 * acc:.1f} % "
            f"(worst class {100 * worst:.1f} %)"
        )


if __name__ == "__main__":
    main()
