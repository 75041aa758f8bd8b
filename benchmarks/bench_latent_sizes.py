"""How latent size and the KL weight λ shape Latent-EnSF, on the blob twin experiment.

A Gaussian blob on a 24 × 24 grid; training states at random positions; 10 held-out
truths; 20-member priors around a wrong position; every 4th point observed with 10 %
noise. For each (latent_dim, λ): held-out reconstruction error, and the relative error
of the Latent-EnSF analysis mean (prior mean error for reference). Prints a table.

The latent is a grid (``latent_channels × h × w``, at least 2 × 2 cells): on 24 × 24 the
smallest is 4 (1 × 2 × 2), so the sizes start at 4; each row gives the latent's shape.
The λ values bracket the default (1e-3), from 0 (a deterministic autoencoder).

    python benchmarks/bench_latent_sizes.py [--quick] [--states 2000] [--width 32]
        [--epochs 40] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch

from xensf.latent import gridded_stride_obs, train_latent_model

GRID = 24


def blobs(cx, cy, width=3.0):
    ax = torch.arange(GRID, dtype=torch.float32)
    d2 = (ax[None, :, None] - cy[:, None, None]) ** 2 + (
        ax[None, None, :] - cx[:, None, None]
    ) ** 2
    return torch.exp(-d2 / (2 * width**2))[:, None]


def positions(n, gen):
    return torch.rand(n, 2, generator=gen) * (GRID - 8) + 4


def rel(estimate, truth):
    return float(((estimate - truth).flatten(1).norm(dim=1) / truth.flatten(1).norm(dim=1)).mean())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--states", type=int, default=2000, help="training states")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    n_states = 400 if args.quick else args.states
    train_pos = positions(n_states, torch.Generator().manual_seed(0))
    states = blobs(train_pos[:, 0], train_pos[:, 1])
    gen = torch.Generator().manual_seed(321)
    n_times, n_members = 10, 20
    truth = blobs(*positions(n_times, gen).T)
    wrong = positions(n_times, gen)
    jitter = 0.5 * torch.randn(2, n_times, n_members, generator=gen)
    prior = blobs(
        (wrong[:, None, 0] + jitter[0]).flatten(), (wrong[:, None, 1] + jitter[1]).flatten()
    ).reshape(n_times, n_members, 1, GRID, GRID)
    obs, _ = gridded_stride_obs(4, 0.1)(truth, torch.Generator().manual_seed(5))
    sizes = [4, 8, 16] if args.quick else [4, 16, 36, 64, 144]
    lams = [1e-3, 0.1, 1.0] if args.quick else [0.0, 1e-3, 1e-2, 0.1, 1.0]
    width, epochs = (8, 15) if args.quick else (args.width, args.epochs)
    print(
        f"blob twin 24x24, 1/16 observed, 10 % noise; {n_states} training states, width "
        f"{width}, {epochs} epochs; prior mean error {rel(prior.mean(1), truth):.3f}"
    )
    header = (
        f"{'latent_dim':>10} {'latent':>10} {'lambda':>7} {'recon':>7} {'latent-ensf':>12} "
        f"{'train [s]':>10}"
    )
    print(header)
    print("-" * len(header))
    for latent_dim in sizes:
        for lam in lams:
            t0 = time.perf_counter()
            model = train_latent_model(
                states, gridded_stride_obs(4, 0.1), latent_dim=latent_dim, width=width,
                blocks=1, lam=lam, epochs=epochs, batch_size=32, lr=3e-3, seed=0, device="cpu",
                progress=False,
            )  # fmt: skip
            seconds = time.perf_counter() - t0
            recon = rel(model.decode(model.encode(truth)[0]), truth)
            post = model.analyse(prior, obs, method="latent-ensf", generator=list(range(n_times)))
            shape = "x".join(map(str, model.latent_shape))
            print(
                f"{model.latent_dim:>10} {shape:>10} {lam:>7g} {recon:>7.3f} "
                f"{rel(post.mean(1), truth):>12.3f} {seconds:>10.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
