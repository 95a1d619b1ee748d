"""Claim 5 and the single-run command: bad input is refused in one clear line, exit 2."""

import json
import subprocess
import sys

import pytest

from contamination.config import ConfigError, parse_value
from contamination.presets import preset
from contamination.run import main


@pytest.mark.parametrize("args,needle", [
    (["--preset", "toyy"], "unknown preset 'toyy' (did you mean 'toy'?)"),
    (["--set", "widht=3"], "unknown field 'widht' (did you mean 'width'?)"),
    (["--set", "activation=swish"], "activation: unknown value 'swish'; allowed: relu, gelu, leaky_relu"),
    (["--set", "loss=l2"], "loss: unknown value 'l2'; allowed: logistic, hinge, mse"),
    (["--set", "optimizer=rmsprop"], "optimizer: unknown value 'rmsprop'; allowed: sgd, adam, adamw"),
    (["--set", "core=quadratic"], "core: unknown value"),
    (["--set", "output=free"], "output: unknown value"),
    (["--set", "init=xavier"], "init: unknown value"),
    (["--set", "width=0"], "width: must be a positive integer"),
    (["--set", "n_train=-5"], "n_train: must be a positive integer"),
    (["--set", "steps=0"], "steps: must be a positive integer"),
    (["--set", "core_dim=240"], "core_dim + bg_dim = 272 exceeds input_dim = 256"),
    (["--set", "bg_train=[1,0]"], "bg_train: range low 1.0 > high 0.0"),
    (["--set", "bg_ood=[0]"], "bg_ood: expected a range [low, high]"),
    (["--set", "width=1.5"], "width: expected an integer"),
    (["--set", "lr=fast"], "lr: expected a number"),
    (["--set", "bias=maybe"], "bias: expected true or false"),
    (["--set", "lr=-1"], "lr: must be > 0"),
    (["--set", "online=true"], "batch_size: online = true needs batch_size > 0"),
    (["--set", "width"], "expected FIELD=VALUE"),
])
def test_bad_input_refused(args, needle, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert needle in err, err
    assert err.count("\n") == 1  # one line


def test_set_values_read_like_toml():
    assert parse_value("[-0.5,0.5]") == [-0.5, 0.5]
    assert parse_value("0.01") == 0.01 and parse_value("64") == 64
    assert parse_value("true") is True and parse_value("relu") == "relu"
    assert preset("toy", activation="ReLU").activation == "relu"
    with pytest.raises(ConfigError):
        preset("toy", width=True)


def test_single_run_prints_json():
    cmd = [sys.executable, "-m", "contamination.run", "--preset", "toy_theory", "--set", "width=16",
           "--set", "activation=linear", "--set", "steps=20", "--set", "log_every=10",
           "--set", "input_dim=64", "--set", "core_dim=4", "--set", "bg_dim=4", "--set", "bg_train=[-0.5,0.5]",
           "--curves"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    res = json.loads(out.stdout)
    assert res["config"]["width"] == 16 and res["config"]["activation"] == "linear"
    assert res["config"]["bg_train"] == [-0.5, 0.5]
    mechanism = ("act_asym", "bg_mean_proj", "bg_shift_rms", "contaminated_frac", "bg_grad_balance")
    for k in ("train_loss", "id_loss", "id_acc", "ood_loss", "ood_acc", "core_norm", "bg_norm", "bg_signed",
              "id_margin", "ood_margin", "diverged", *mechanism):
        assert k in res["final"]
    assert res["curves"]["step"] == [0, 10, 20]
    for k in mechanism:
        assert len(res["curves"][k]) == 3, k
    assert res["final"]["act_asym"] == 0.0  # a linear network gates nothing


def test_bad_input_exit_status_in_subprocess():
    out = subprocess.run([sys.executable, "-m", "contamination.run", "--set", "activation=swish"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "activation" in out.stderr and out.stdout == ""
