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
    raise ValueError(name)


def loss_and_grad(f, y, name):
    if name == "logistic":
        return np.mean(np.logaddexp(0, -y * f)), -y / (1 + np.exp(y * f)) / len(y)
    if name == "hinge":
        return np.mean(np.maximum(0, 1 - y * f)), -y * (1 - y * f > 0) / len(y)
    if name == "mse":
        return np.mean((f - y) ** 2), 2 * (f - y) / len(y)
    raise ValueError(name)


def train(params, trainable, x, y, *, activation, loss, optimizer, lr, wd, momentum, steps):
    """Full-batch training; returns the training loss before each step and after the last."""
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
