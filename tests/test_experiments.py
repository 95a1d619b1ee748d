"""The experiment protocol: experiments register by module, own their cost and their analysis, and
the engine and the analysis never name one."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from contamination import experiments
from contamination.cost import flops, memory_bytes
from contamination.presets import preset
from contamination.spec import static_spec

ROOT = Path(__file__).resolve().parent.parent


def named_strings(path: Path) -> list[tuple[int, str]]:
    """The string literals of a module's code that equal a registered experiment's name."""
    names = set(experiments.names())
    return [(n.lineno, n.value) for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value in names]


def test_sweeps_and_analysis_never_name_an_experiment():
    """Only the analysis module an experiment declares as its own (its panels') may name it."""
    own = {exp.analysis_module: exp.name for exp in experiments.REGISTRY.values() if exp.analysis_module}
    found = []
    for package in ("sweeps", "analysis"):
        for path in sorted((ROOT / package).rglob("*.py")):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found += [(module, line, name) for line, name in named_strings(path) if own.get(module) != name]
    assert found == []


def test_the_check_sees_a_name(tmp_path):
    """The scan above is not blind: a module that names an experiment is caught."""
    path = tmp_path / "m.py"
    path.write_text(f'x = 1 if y == "{experiments.names()[-1]}" else 2\n')
    assert named_strings(path) == [(1, experiments.names()[-1])]


def test_every_module_of_the_package_is_registered_under_its_name():
    modules = sorted(p.stem for p in (ROOT / "contamination" / "experiments").glob("*.py") if p.stem != "__init__")
    assert sorted(experiments.names()) == modules
    assert experiments.names()[0] == experiments.DEFAULT == preset("toy").experiment


def test_an_experiment_without_a_cost_is_an_error():
    """The cost is part of the protocol: no experiment gets another's by default."""
    with pytest.raises(TypeError):
        experiments.Experiment("new", ("m",), training="contamination.classify:make_training")


@pytest.mark.parametrize("name", experiments.names())
def test_every_experiment_prices_its_runs(name):
    """Each registered experiment's own cost functions answer for one of its runs, and the
    generic entry points dispatch to them."""
    exp = experiments.get(name)
    s = static_spec(preset("toy", experiment=name, width=32, steps=10, log_every=5))
    assert flops(s) == exp.fn("flops")(s) > 0
    assert memory_bytes(s) == exp.fn("memory_bytes")(s) > 0
    assert isinstance(exp.describe(s), str) and exp.extra_steps(s) >= 0


def test_an_experiments_fields_are_config_fields_and_derive_the_lists():
    """A field an experiment module declares is a Config field at its default, compiled or traced
    as declared, padded where declared, and out of every other experiment's ids."""
    from contamination.config import FIELDS, SCHEMA
    from contamination.ids import run_id
    from contamination.spec import PAD_FIELDS, TRACED_FIELDS, Static

    base = preset("toy_theory", width=12)
    for exp in experiments.REGISTRY.values():
        for f in exp.fields:
            assert SCHEMA[f.name] == f and FIELDS[f.name].default == f.default
            assert (f.name in Static._fields) == (f.compiled == "static")
            assert (f.name in TRACED_FIELDS) == (f.compiled == "traced")
            assert (f.name in PAD_FIELDS) == bool(f.pad)
            others = [e for e in experiments.names() if e != exp.name]
            if others and f.type == "int":  # another experiment's run does not hash it
                other = base.replace(experiment=others[0]) if others[0] != base.experiment else base
                assert run_id(other.replace(**{f.name: f.default + 1})) == run_id(other)
