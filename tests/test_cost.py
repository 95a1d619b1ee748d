"""The static cost model against XLA: FLOPs of a training step, bytes of a compiled chunk."""

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from contamination.presets import preset
from contamination.spec import static_spec, traced_values
from contamination.cost import memory_bytes, step_flops
from contamination.classify import make_training


def _xla_step_flops(cfg) -> float:
    step, carry = make_training(static_spec(cfg), traced_values(cfg))[:2]
    analysis = jax.jit(step).lower(carry, None).compile().cost_analysis()
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


@pytest.mark.parametrize("kw", [
    dict(width=8, digit_classes=[3, 8], n_classes=2),
    dict(width=16, border=4, digit_classes=[3, 8], n_classes=2),
    dict(width=16, n_classes=10, digit_classes=list(range(10))),
])
def test_cnn_step_flops_match_xla(kw):
    cfg = preset("digits", model="cnn", n_train=250, n_test=107, steps=1, log_every=1, **kw)
    assert _xla_step_flops(cfg) == pytest.approx(step_flops(static_spec(cfg)), rel=0.05)


@pytest.mark.parametrize("name,kw", [
    ("toy", dict()),  # the reference sizes
    ("toy", dict(width=64, input_dim=64, core_dim=8, bg_dim=8, n_train=256, n_test=256)),
    ("toy", dict(batch_size=100)),
    ("toy", dict(n_test=3000)),
    ("toy", dict(width=512, n_train=2000, optimizer="sgd")),
    ("theory", dict()),  # online batches
    ("distill", dict()),
])
def test_memory_estimate_within_25_percent_of_xla_buffers(name, kw):
    from sweeps.programs import compile_bucket

    cfg = preset(name, steps=20, log_every=10, **kw)
    compiled = compile_bucket(static_spec(cfg), 4, Mesh(np.array(jax.local_devices()[:1]), ("cfg",))).compiled
    ma = compiled.memory_analysis()
    measured = (ma.temp_size_in_bytes + ma.argument_size_in_bytes + ma.output_size_in_bytes) / 4
    assert memory_bytes(static_spec(cfg)) == pytest.approx(measured, rel=0.25)


@pytest.mark.parametrize("kw", [
    dict(depth=3, width=64, input_dim=64, core_dim=8, bg_dim=8, n_train=256),
    dict(widths=[128, 32], batch_size=100, optimizer="adam"),
    dict(n_classes=5, width=64, input_dim=64, core_dim=10, bg_dim=8, n_train=256),
    dict(n_classes=4, depth=2, width=96, n_train=512),
])
def test_step_flops_of_deeper_and_k_class_networks_match_xla(kw):
    cfg = preset("toy", steps=1, log_every=1, **kw)
    assert _xla_step_flops(cfg) == pytest.approx(step_flops(static_spec(cfg)), rel=0.05)


@pytest.mark.parametrize("kw", [
    dict(depth=3, width=128),
    dict(widths=[256, 64], n_classes=4),
    dict(n_classes=8, width=128, batch_size=100),
])
def test_memory_estimate_of_deeper_and_k_class_networks_within_25_percent(kw):
    from sweeps.programs import compile_bucket

    cfg = preset("toy", steps=20, log_every=10, **kw)
    compiled = compile_bucket(static_spec(cfg), 4, Mesh(np.array(jax.local_devices()[:1]), ("cfg",))).compiled
    ma = compiled.memory_analysis()
    measured = (ma.temp_size_in_bytes + ma.argument_size_in_bytes + ma.output_size_in_bytes) / 4
    assert memory_bytes(static_spec(cfg)) == pytest.approx(measured, rel=0.25)
