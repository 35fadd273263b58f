"""One source for defaults and one registry of policies: ``conf/`` and the policy modules.

``DeploymentConfig``'s defaults are read from the YAML groups; a deployment composed by
Hydra with no overrides must be the same deployment. Every policy module has its YAML
and every scheduler YAML names a policy module.
"""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from vidur_jax import app
from vidur_jax.sim import conf_defaults, policies
from vidur_jax.sim.build import DeploymentConfig


def test_python_defaults_are_the_composed_defaults():
    composed = app.deployment_from(app.compose([]))
    default = DeploymentConfig()
    for field in dataclasses.fields(DeploymentConfig):
        if field.name == "cpu_overhead_dir":  # the data root of the run, not a knob default
            continue
        assert getattr(default, field.name) == getattr(composed, field.name), field.name


@pytest.mark.parametrize("option", ["s3", "static_batching"])
def test_scheduler_specific_defaults_come_from_their_yaml(option):
    data = yaml.safe_load((conf_defaults.CONF_DIR / "scheduler" / f"{option}.yaml").read_text())
    default = DeploymentConfig()
    own = {k: v for k, v in data.items() if k.startswith(("s3_", "batch_timeout", "batch_max"))}
    assert own
    for key, value in own.items():
        assert getattr(default, key) == value, key
    composed = app.deployment_from(app.compose([f"scheduler={option}"]))
    for key in own:
        assert getattr(composed, key) == getattr(default, key), key


def test_a_missing_key_is_an_error_not_a_silent_default():
    with pytest.raises(KeyError, match="no key 'nope'"):
        conf_defaults.value("scheduler", "nope")


def test_every_policy_has_its_yaml_and_every_yaml_a_policy():
    files = {p.stem: p for p in (conf_defaults.CONF_DIR / "scheduler").glob("*.yaml")}
    assert set(files) == set(policies.POLICIES)
    for name, path in files.items():
        assert yaml.safe_load(path.read_text())["replica_scheduler"] == name
        assert policies.get(name).name == name


def test_unknown_policy_is_one_clear_line():
    with pytest.raises(Exception, match="unknown replica_scheduler 'nope'; allowed: .*vllm"):
        policies.get("nope")
