"""Ray settings that cannot work are refused before anything starts, with the fix named."""

from __future__ import annotations

import socket

import pytest

from dsrl.training.build import make_base_policy
from dsrl.training.config_io import load_config
from dsrl.training.flags import ConfigError


@pytest.mark.parametrize(
    "overrides, words",
    [
        ([("env.mode", "ray"), ("env.ray_address", "headnode")], ["env.ray_address", "host:port"]),
        ([("env.ray_address", "10.0.0.1:6379")], ["--ray_address", "--env_backend ray"]),
        (
            [
                ("agent.algorithm", "dsrl_na"),
                ("agent.num_aliases", "0"),
                ("base_policy.ray", "true"),
            ],
            ["dsrl_na", "--num_aliases 0", "drop base_policy.ray"],
        ),
        (
            [("base_policy.ray", "true"), ("base_policy.remote", "127.0.0.1:8000")],
            ["base_policy.ray", "policy server"],
        ),
    ],
)
def test_ray_settings_that_cannot_work_are_config_errors(overrides, words):
    with pytest.raises(ConfigError) as err:
        load_config("demo", overrides=overrides)
    for word in words:
        assert word in str(err.value)


def test_an_address_where_no_cluster_answers_fails_in_seconds_naming_ray_start():
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("this process is already connected to Ray")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = load_config(
        "demo",
        overrides=[("env.mode", "ray"), ("base_policy.ray", "true")],
        flags={"ray_address": f"127.0.0.1:{port}"},
    )
    with pytest.raises(ConfigError, match="ray start --head"):
        make_base_policy(config)
    assert not ray.is_initialized()
