"""Latent-model training throughput: states per second at the twin's two sizes.

    python benchmarks/bench_training_throughput.py [--device cpu|cuda] [--threads K]
                                                   [--states S] [--epochs E]
                                                   [--precision float32 bfloat16]

Trains the demo's architecture (:data:`xensf.experiments.demo_swe.TRAINING`: 3 channels, a
4 x 10 x 10 latent, width 64, 2 residual blocks per scale, batch 64, the full
Latent-EnSF loss with both decoders) on random states of 40 x 40 and 150 x 150 and
prints the training states per second of the optimisation epochs (validation passes
excluded; the first epoch is a warm-up and not counted), for each training precision
asked for (the demo model trains in bfloat16). The states are random: the speed does
not depend on what they hold.
"""

from __future__ import annotations

import argparse
import itertools
import time
import warnings

import torch

from xensf.errors import PrecisionWarning, TrainingDataWarning
from xensf.experiments.demo_swe import TRAINING
from xensf.latent import gridded_stride_obs, train_latent_model


def throughput(n: int, kind: str, states: int, epochs: int, device: str, precision: str):
    spec = TRAINING[kind]
    data = torch.randn(states, 3, n, n)
    with warnings.catch_warnings():
        # random states, few of them: the speed does not depend on what they hold; the
        # precision used is printed
        warnings.simplefilter("ignore", TrainingDataWarning)
        warnings.simplefilter("ignore", PrecisionWarning)
        model = train_latent_model(
            data,
            gridded_stride_obs(4 if n == 40 else 15),
            latent_dim=spec["latent_dim"],
            width=spec["width"],
            blocks=spec["blocks"],
            lam=spec["lam"],
            epochs=epochs + 1,
            batch_size=64,
            val_fraction=0.05,
            device=device,
            precision=precision,
            progress=False,
        )
    history = model.config["training"]["history"]
    n_train = model.config["training"]["n_train"]
    # per-epoch seconds include a validation pass; time it apart to leave it out
    seconds = [b["seconds"] - a["seconds"] for a, b in itertools.pairwise(history)]
    val = model.config["training"]["n_val"]
    x = data[:val].to(device)
    start = time.perf_counter()
    with torch.no_grad():
        for batch in x.split(64):
            model.vae.decode(model.vae.encode(batch)[0])
            model.vae.decode(model.vae.encode(batch)[0])
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    val_seconds = time.perf_counter() - start
    used = model.config["training"]["precision"]  # float32 where bfloat16 is emulated
    return n_train / (sum(seconds) / len(seconds) - val_seconds), str(model.latent_shape), used


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--states", type=int, default=640)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument(
        "--precision", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"]
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"# training throughput on {name}, {torch.get_num_threads()} torch threads")
    print(f"{'grid':>9} {'latent':>12} {'precision':>10} {'states/s':>10}")
    for n, kind in ((40, "demo"), (150, "full")):
        for precision in args.precision:
            rate, latent, used = throughput(
                n, kind, args.states, args.epochs, args.device, precision
            )
            shown = precision if used == precision else f"{used} (asked {precision})"
            print(f"{n:>4} x {n:<3} {latent:>12} {shown:>10} {rate:>10.1f}", flush=True)


if __name__ == "__main__":
    main()
