"""Ids survive new fields: a field at its default is left out of the hash, so adding one never
changes an existing id, and a results directory written before resumes with nothing retrained."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from contamination import ids
from contamination.config import Config
from contamination.ids import ALWAYS_HASHED, FIRST_ROUND_FIELDS, RESULTS_VERSION, config_id, run_id
from contamination.presets import preset
from sweeps.engine import run_grid
from sweeps.grid import load

DATA = Path(__file__).resolve().parent / "data" / "results-v3"


@pytest.mark.parametrize("name", ["classify", "distill"])
def test_a_directory_written_before_resumes_with_nothing_retrained(name, tmp_path):
    """tests/data/results-v3/ was written (results version 3) before the id rule changed from
    special cases (distillation fields dropped from classify ids, log_schedule at its default
    dropped) to the general rule; it holds a non-default later field (log_schedule geometric)
    and distill runs with default and non-default distillation fields. (When RESULTS_VERSION
    changes, every id may too: regenerate it with `python -m sweeps run
    tests/data/results-v3/NAME.toml --out tests/data/results-vN/NAME` at the last commit of the
    old version.)"""
    out = tmp_path / name
    shutil.copytree(DATA / name, out)
    # The ids are under test, not the version guard: the metrics' meaning changed since (results
    # version 4) while no id did, so the copy is relabelled to today's version before resuming.
    manifest = out / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "results_version": RESULTS_VERSION}))
    grid = load(str(DATA / f"{name}.toml"))
    written = pd.read_parquet(out / "runs")
    assert set(written["run_id"]) == {r.run_id for r in grid.runs()}
    assert set(written["config_id"]) == {r.config_id for r in grid.runs()}
    s = run_grid(grid, out, progress=False)
    assert (s.done, s.skipped, s.total) == (0, len(written), len(written))


def test_adding_a_field_leaves_existing_ids_alone(monkeypatch):
    """A field added to Config (here `new_knob`) at its default changes no id; set, it does."""
    Extended = dataclasses.make_dataclass("Extended", [("new_knob", float, 0.5)], bases=(Config,), frozen=True)
    monkeypatch.setattr(ids, "DEFAULTS", Extended().to_dict())
    for cfg in (preset("toy_theory", width=12), preset("distill", teacher="linear"), preset("theory", seed=3)):
        fields = dataclasses.asdict(cfg)
        same = Extended(**fields)
        assert (run_id(same), config_id(same)) == (run_id(cfg), config_id(cfg))
        other = Extended(**fields, new_knob=0.7)
        assert run_id(other) != run_id(cfg) and config_id(other) != config_id(cfg)


def test_fields_at_their_default_are_left_out_and_the_frozen_ones_are_not():
    base = preset("toy_theory")
    # a later field: left out at its default, hashed when set
    assert ids.id_fields(base.to_dict()).keys() == set(FIRST_ROUND_FIELDS)
    assert "log_schedule" in ids.id_fields(base.replace(log_schedule="geometric").to_dict())
    # a classify run does not read the distillation fields: they stay out of its ids
    assert run_id(base.replace(rep_dim=32, teacher="linear")) == run_id(base)
    # a distill run hashes its distillation fields whatever their value (as when they appeared)
    d = preset("distill")
    assert set(ALWAYS_HASHED["distill"]) <= ids.id_fields(d.to_dict()).keys()
    # the frozen lists name real fields only, and seeds differ in run ids but not config ids
    assert set(ALWAYS_HASHED["distill"]) <= set(Config().to_dict())
    assert run_id(base.replace(seed=1)) != run_id(base) and config_id(base.replace(seed=1)) == config_id(base)
