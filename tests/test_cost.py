"""The static cost model against XLA: FLOPs of a training step, bytes of a compiled chunk."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from contamination.config import preset, static_spec, traced_values
from contamination.cost import memory_bytes, step_flops
from contamination.model import forward, loss_values
from contamination.train import init_carry, make_get_batch, make_optimizer, make_step, prepare


def _xla_step_flops(cfg) -> float:
    s, tr = static_spec(cfg), traced_values(cfg)
    data, params, trainable, mask, k_batch = prepare(s, tr)
    tx = make_optimizer(s.optimizer, tr["lr"], tr["weight_decay"], tr["momentum"])

    def objective(p, batch):
        f, _ = forward(p, batch.x, s.activation, tr["leaky_slope"], mask)
        return jnp.mean(loss_values(f, batch.y, s.loss))

    step = make_step(objective, tx, trainable, make_get_batch(s, data, k_batch, tr["bg_train"]))
    analysis = jax.jit(step).lower(init_carry(params, tx), None).compile().cost_analysis()
    return float((analysis[0] if isinstance(analysis, list) else analysis)["flops"])


@pytest.mark.parametrize("kw", [
    dict(),  # the reference sizes: n = 1000, d = 256, m = 256
    dict(width=64, input_dim=64, core_dim=8, bg_dim=8, n_train=256, activation="tanh", optimizer="sgd"),
    dict(width=128, batch_size=100, optimizer="adam"),
])
def test_step_flops_match_xla(kw):
    cfg = preset("toy", steps=1, log_every=1, **kw)
    xla = _xla_step_flops(cfg)
    assert xla == pytest.approx(step_flops(static_spec(cfg)), rel=0.05)


def test_memory_estimate_within_25_percent_of_xla_buffers():
    from sweeps.engine import compile_bucket
    from sweeps.grid import Run
    from sweeps.plan import Bucket

    for kw in (dict(), dict(width=64, input_dim=64, core_dim=8, bg_dim=8, n_train=256, n_test=256)):
        cfg = preset("toy", steps=20, log_every=10, **kw)
        bucket = Bucket(static_spec(cfg), [Run.of(cfg, {})], chunk_size=4)
        compiled, _, _ = compile_bucket(bucket, Mesh(np.array(jax.local_devices()[:1]), ("cfg",)))
        ma = compiled.memory_analysis()
        measured = (ma.temp_size_in_bytes + ma.argument_size_in_bytes + ma.output_size_in_bytes) / 4
        assert memory_bytes(bucket.static) == pytest.approx(measured, rel=0.25)
