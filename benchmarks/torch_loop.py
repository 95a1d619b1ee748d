"""The baseline of `benchmarks/first_minute.py`: one run at a time in a PyTorch per-step loop, the
reference script's structure (`toy.py`: a two-layer ReLU network, full batch, AdamW, logistic
loss, metrics every `log_every` steps), on the small grid's sizes.

    python benchmarks/torch_loop.py [--runs K] [--steps T]

Prints the seconds per run-step as JSON. PyTorch is not a dependency of this project: install it in a
venv beside the project's (`python3.11 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch
numpy`) and pass that interpreter to `first_minute.py --torch-python`; without it, `first_minute.py`
falls back to a JAX per-step loop and says so.
"""

from __future__ import annotations

import argparse
import json
import time

N, D, M, D0 = 256, 64, 64, 16  # the small grid: n_train, input_dim, width, core_dim + bg_dim


def one_run(torch, seed: int, steps: int, log_every: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(N, D, generator=g)
    y = torch.where(torch.rand(N, generator=g) < 0.5, -1.0, 1.0)
    w = torch.nn.Linear(D, M)
    v = torch.nn.Linear(M, 1)
    params = list(w.parameters()) + list(v.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-3)
    for t in range(steps + 1):
        if t % log_every == 0:
            with torch.no_grad():  # the logged metrics: losses and the first layer's norms
                f = v(torch.relu(w(x))).squeeze(1)
                _ = (torch.nn.functional.softplus(-y * f).mean().item(), w.weight.norm(dim=1).mean().item())
        if t == steps:
            break
        opt.zero_grad()
        f = v(torch.relu(w(x))).squeeze(1)
        loss = torch.nn.functional.softplus(-y * f).mean()
        loss.backward()
        opt.step()


def main() -> int:
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--steps", type=int, default=1000)
    args = ap.parse_args()
    one_run(torch, 0, 10, 10)  # warm-up
    t0 = time.perf_counter()
    for seed in range(args.runs):
        one_run(torch, seed, args.steps, max(args.steps // 10, 1))
    s = time.perf_counter() - t0
    print(json.dumps({"torch": torch.__version__, "runs": args.runs, "steps": args.steps,
                      "s_per_run_step": s / (args.runs * args.steps)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
