"""The identity tests can fail: each kind of identity, broken on purpose, misses the float64
tolerance (conftest.IDENTITY) by orders of magnitude.

- padding: a padded neuron not masked (its true width lifted to the program's), and padded test
  rows counted in the means (the true n_test lifted);
- train once, evaluate many: every variant measured on the first variant's OOD range;
- chunking: a chunk's networks handed to the program in another order than the rows they are
  written to.
"""

import numpy as np
import pandas as pd
import pytest

from contamination.simulate import simulate
from contamination.spec import padded_spec, stack_traced, static_spec
from contamination.train import compiled_batch_run

from conftest import IDENTITY, identity, small


def differs(a: dict, b: dict) -> list[str]:
    """The metrics whose curves miss the identity tolerance."""
    return [k for k in b if not np.allclose(np.asarray(a[k], float), np.asarray(b[k], float), **IDENTITY,
                                            equal_nan=True)]


def padded_run(cfgs, spec, traced):
    out = compiled_batch_run(spec)(traced)  # jit(vmap(make_run(spec))), compiled once for the three calls
    return {k: np.asarray(v)[0, :, 0] for k, v in out["curves"].items()}


@identity
def test_padding_broken_on_purpose_misses_the_tolerance():
    a = small("toy", activation="sigmoid", width=7, core_dim=3, bg_dim=2, input_dim=13, n_test=30, seed=5)
    b = small("toy", activation="sigmoid", width=16, core_dim=4, bg_dim=4, input_dim=32, n_test=64, seed=0)
    spec = padded_spec([static_spec(a), static_spec(b)])
    alone = simulate(a)["curves"]
    traced = stack_traced([a, b])
    assert differs(padded_run([a, b], spec, traced), alone) == []  # the identity itself holds
    revived = traced._replace(true_width=traced.true_width.copy())
    revived.true_width[0] = spec.width  # the 9 padded neurons are no longer masked
    assert {"id_loss", "train_loss", "bg_norm"} <= set(differs(padded_run([a, b], spec, revived), alone))
    leaked = traced._replace(true_n_test=traced.true_n_test.copy())
    leaked.true_n_test[0] = spec.n_test  # 34 padded (zero) test rows counted in the test means
    assert {"id_loss", "id_acc", "ood_loss"} <= set(differs(padded_run([a, b], spec, leaked), alone))


@identity
def test_train_once_broken_on_purpose_misses_the_tolerance():
    # the variants (and so the programs) of test_padding.py::test_evaluation_variants_equal_separate_runs[toy]
    base = small("toy", seed=4)
    variants = [base, base.replace(bg_ood=[-0.5, 0.5]), base.replace(bg_ood=[-2.0, -1.0])]
    spec = static_spec(base, n_evals=3)
    traced = stack_traced([variants])
    traced.bg_ood[0, 2] = traced.bg_ood[0, 0]  # the third variant measured on the first's range
    out = compiled_batch_run(spec)(traced)
    third = {k: np.asarray(v)[0, :, 2] for k, v in out["curves"].items()}
    assert {"ood_loss", "ood_acc"} <= set(differs(third, simulate(variants[2])["curves"]))


@pytest.mark.slow  # as the chunking identity it breaks (test_engine.py; make test-all)
@identity
def test_chunking_broken_on_purpose_misses_the_tolerance(tmp_path, monkeypatch):
    from sweeps import engine, programs
    from sweeps.engine import run_grid
    from sweeps.grid import load

    from test_engine import assert_same_metrics, write_grid

    grid = load(str(write_grid(tmp_path)))
    run_grid(grid, tmp_path / "a", min_efficiency=1.0, chunk_size=3, progress=False)
    real = programs.chunk_inputs
    # each chunk's networks in reverse order: rows written under the wrong run ids
    monkeypatch.setattr(engine, "chunk_inputs", lambda s, size, chunk, sharding: real(s, size, chunk[::-1], sharding))
    run_grid(grid, tmp_path / "b", min_efficiency=1.0, chunk_size=3, progress=False)
    with pytest.raises(AssertionError):
        assert_same_metrics(pd.read_parquet(tmp_path / "b" / "runs"), pd.read_parquet(tmp_path / "a" / "runs"))
