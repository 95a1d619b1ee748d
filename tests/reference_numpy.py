"""An independent float64 NumPy re-implementation of the reference script's training step
(manual backprop, PyTorch optimizer semantics), used to check the JAX simulator."""

import numpy as np


def act(pre, name):
    if name == "relu":
        return np.maximum(pre, 0), (pre > 0).astype(float)
    if name == "sigmoid":
        s = 1 / (1 + np.exp(-pre))
        return s, s * (1 - s)
    if name == "tanh":
        t = np.tanh(pre)
        return t, 1 - t ** 2
    if name == "linear":
        return pre, np.ones_like(pre)
    if name == "gelu":
        return pre * _normal_cdf(pre), act_derivative(pre, "gelu")
    raise ValueError(name)


def _normal_cdf(v):
    from math import erf, sqrt

    return 0.5 * (1 + np.vectorize(erf)(v / sqrt(2)))


def loss_and_grad(f, y, name):
    if name == "logistic":
        return np.mean(np.logaddexp(0, -y * f)), -y / (1 + np.exp(y * f)) / len(y)
    if name == "hinge":
        return np.mean(np.maximum(0, 1 - y * f)), -y * (1 - y * f > 0) / len(y)
    if name == "mse":
        return np.mean((f - y) ** 2), 2 * (f - y) / len(y)
    raise ValueError(name)


def train(params, trainable, x, y, *, activation, loss, optimizer, lr, wd, momentum, steps, warmup=0):
    """Full-batch training; returns the training loss before each step and after the last. With
    `warmup` > 0, step t (from 1) trains at lr * min(1, t / warmup)."""
    base_lr = lr
    p = {k: np.asarray(v, dtype=np.float64).copy() for k, v in params.items()}
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    state = {k: {"buf": None, "m": np.zeros_like(v), "v": np.zeros_like(v)} for k, v in p.items()}
    losses = []
    for t in range(1, steps + 2):
        pre = x @ p["w"].T + p["b"]
        h, dact = act(pre, activation)
        f = h @ p["a"] + p["c"]
        L, g = loss_and_grad(f, y, loss)
        losses.append(L)
        if t == steps + 1:
            break
        lr = base_lr * min(1.0, t / warmup) if warmup else base_lr
        dpre = g[:, None] * p["a"][None, :] * dact
        grads = {"w": dpre.T @ x, "b": dpre.sum(0), "a": h.T @ g, "c": g.sum()}
        for k in p:
            if not trainable[k]:
                continue
            gk, st = grads[k], state[k]
            if optimizer == "sgd":
                gk = gk + wd * p[k]
                st["buf"] = gk if st["buf"] is None else momentum * st["buf"] + gk
                p[k] = p[k] - lr * st["buf"]
                continue
            if optimizer == "adam":
                gk = gk + wd * p[k]
            else:  # adamw
                p[k] = p[k] * (1 - lr * wd)
            st["m"] = 0.9 * st["m"] + 0.1 * gk
            st["v"] = 0.999 * st["v"] + 0.001 * gk ** 2
            mhat, vhat = st["m"] / (1 - 0.9 ** t), st["v"] / (1 - 0.999 ** t)
            p[k] = p[k] - lr * mhat / (np.sqrt(vhat) + 1e-8)
    return np.array(losses)


def act_derivative(pre, name, slope=0.0):
    """act'(pre) in float64, written out: ReLU, LeakyReLU, linear, sigmoid, tanh, exact GELU."""
    from math import pi, sqrt

    if name == "leaky_relu":
        return np.where(pre >= 0, 1.0, slope)
    if name == "gelu":
        return _normal_cdf(pre) + pre * np.exp(-pre ** 2 / 2) / sqrt(2 * pi)
    return act(pre, name)[1]


def mechanism_metrics(w, b, a, c, w0, M, core_dim, bg_train, bg_ood, x_train, y_train, x_test, y_test, *,
                      activation, loss, slope=0.0):
    """act_asym, bg_mean_proj, bg_shift_rms, bg_norm, contaminated_frac, contamination_sign,
    contamination_ratio and bg_grad_balance in float64 (docs/simulator.md, Metrics), from the
    parameters, the step-0 weights `w0` and the data (two classes, linear core, synthetic)."""
    f64 = lambda v: np.asarray(v, np.float64)  # noqa: E731
    w, b, a, w0, M = f64(w), f64(b), f64(a), f64(w0), f64(M)
    x_train, y_train, x_test, y_test = f64(x_train), f64(y_train), f64(x_test), f64(y_test)
    # act_asym: per neuron, the gate's class means in units of its range, less their sampling variances
    gate = act_derivative(x_test @ w.T + b, activation, slope)
    per_neuron = []
    for g in gate.T:
        rng = g.max() - g.min()
        if rng == 0:
            per_neuron.append(0.0)
            continue
        gp_, gn_ = g[y_test > 0], g[y_test < 0]
        diff2 = (gp_.mean() - gn_.mean()) ** 2 - gp_.var(ddof=1) / len(gp_) - gn_.var(ddof=1) / len(gn_)
        per_neuron.append(diff2 / rng ** 2)
    asym = np.sqrt(max(np.mean(per_neuron), 0.0))
    mean_train, mean_ood = np.mean(bg_train), np.mean(bg_ood)
    n_bg = M.shape[0] - core_dim
    mu_train = mean_train * M[core_dim:].sum(0)  # the training background mean in input space
    mu_ood = mean_ood * M[core_dim:].sum(0)
    u = mu_train / np.linalg.norm(mu_train) if mean_train != 0 else M[core_dim:].sum(0) / np.sqrt(n_bg)
    p = w @ u
    dw = w - w0
    shift = dw @ (mu_ood - mu_train)  # what the learned weights add to each neuron's OOD shift
    hit = np.abs(p) > 0.375 * np.sqrt(np.mean(np.sum(w0 ** 2, axis=1)))
    # Theorem 2's ratio on the learned weights: mean-weighted background over mean-weighted core
    core_mean = 0.5 * M[:core_dim].sum(0)  # E[z_j | y = +1] = 1/2 on every core feature
    ratio = np.abs(dw @ mu_train).sum() / np.abs(dw @ core_mean).sum()
    # per-sample gradients of the loss on w_k, by hand, projected on u
    pre = x_train @ w.T + b
    h, _ = act(pre, activation) if activation != "leaky_relu" else (np.where(pre >= 0, pre, slope * pre), None)
    f = h @ a + c
    _, g = loss_and_grad(f, y_train, loss)  # dL/df_i of the mean loss (1/n included; a ratio ignores it)
    per = (g * (x_train @ u))[:, None] * act_derivative(pre, activation, slope) * a[None, :]
    gp, gn = per[y_train > 0].sum(0), per[y_train < 0].sum(0)
    return {
        "act_asym": asym,
        "bg_mean_proj": p.mean(),
        "bg_shift_rms": np.sqrt(np.mean(shift ** 2)),
        "bg_norm": np.linalg.norm(dw @ M[core_dim:].T, axis=1).mean(),
        "contaminated_frac": hit.mean(),
        "contamination_sign": np.sign(p[hit]).mean() if hit.any() else np.nan,
        "contamination_ratio": ratio,
        "bg_grad_balance": np.abs(gp + gn).sum() / (np.abs(gp) + np.abs(gn)).sum(),
    }
