"""The DPPO DiffusionMLP base policy: parity with DPPO's own DDIM output, checkpoint loading
without torch, the base-policy contract, persistence, and DDPM behaviour cloning."""

import json
import pathlib
import pickle
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsrl.base_policies.base import BasePolicy, as_jax_base_policy
from dsrl.base_policies.diffusion import (
    DiffusionMLPPolicy,
    DiffusionPolicyConfig,
    NetworkConfig,
    Normalization,
    SamplerConfig,
    load_dppo_params,
)
from dsrl.base_policies.diffusion.network import DiffusionMLP, init_network_params
from dsrl.base_policies.diffusion.torch_checkpoint import (
    CheckpointFormatError,
    load_torch_checkpoint,
)
from dsrl.base_policies.diffusion.train import BCConfig, train_diffusion_policy

FIXTURES = pathlib.Path(__file__).parent / "data" / "dppo_parity"
CASES = ["residual_relu", "residual_layernorm_mish", "mlp_clips"]


def _case(name):
    config = DiffusionPolicyConfig.from_json(json.loads((FIXTURES / f"{name}.json").read_text()))
    with np.load(FIXTURES / f"{name}.npz") as data:
        arrays = {k: data[k] for k in data.files}
    return config, FIXTURES / f"{name}.pt", arrays


def _small_config(**sampler):
    network = NetworkConfig(
        action_dim=2, horizon_steps=3, cond_dim=4, mlp_dims=(32, 32, 32), residual_style=True
    )
    sampler = {"denoising_steps": 20, "ddim_steps": 5, **sampler}
    return DiffusionPolicyConfig(network, SamplerConfig(**sampler))


# Parity with DPPO ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_ddim_output_matches_dppo(name):
    """Same checkpoint, observation and initial noise -> DPPO's DDIM action chunk (float32)."""
    config, checkpoint, data = _case(name)
    policy = DiffusionMLPPolicy.from_dppo_checkpoint(checkpoint, config)
    actions = policy.sample_actions({"policy_state": data["obs"]}, data["noise"])
    assert actions.shape == data["actions"].shape and actions.dtype == np.float32
    assert np.abs(actions - data["actions"]).max() <= 1e-5
    # The sampler's clips act on some entries but not all, so both paths are compared.
    clip = config.sampler.final_action_clip_value or config.sampler.denoised_clip_value
    at_clip = np.isclose(np.abs(data["actions"]), clip)
    assert 0.1 < at_clip.mean() < 0.9

    eps = DiffusionMLP(config.network).apply(
        {"params": policy.params},
        jnp.asarray(data["noise"]),
        jnp.asarray(data["eps_t"]),
        jnp.asarray(data["obs"]),
    )
    assert np.abs(np.asarray(eps) - data["eps"]).max() <= 1e-5


def test_loader_takes_ema_weights_like_dppo_and_model_on_request():
    config, checkpoint, data = _case("residual_relu")
    ema = load_dppo_params(checkpoint, config.network)
    model = load_dppo_params(checkpoint, config.network, weights="model")
    raw = load_torch_checkpoint(checkpoint)
    assert raw["epoch"] == 7 and set(raw) == {"epoch", "model", "ema"}
    np.testing.assert_array_equal(
        ema["mlp_mean"]["layers.0"]["kernel"], raw["ema"]["network.mlp_mean.layers.0.weight"].T
    )
    policy = DiffusionMLPPolicy(config, model)
    other = policy.sample_actions({"policy_state": data["obs"]}, data["noise"])
    assert np.abs(other - data["actions"]).max() > 1e-3


def test_mismatched_config_names_the_differing_parameters():
    config, checkpoint, _ = _case("residual_relu")
    wider = NetworkConfig(**{**config.network.__dict__, "mlp_dims": (128, 128, 128)})
    with pytest.raises(ValueError, match=r"shape: network\.mlp_mean\.layers\.0 kernel"):
        load_dppo_params(checkpoint, wider)
    plain = NetworkConfig(**{**config.network.__dict__, "residual_style": False})
    with pytest.raises(ValueError, match=r"missing: network\.mlp_mean\.moduleList\.0\.linear_1"):
        load_dppo_params(checkpoint, plain)
    with pytest.raises(ValueError, match="no 'final' entry"):
        load_dppo_params(checkpoint, config.network, weights="final")


def test_checkpoint_that_pickles_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil/data.pkl", pickle.dumps({"ema": Payload()}, protocol=2))
    with pytest.raises(CheckpointFormatError, match="refusing to load it"):
        load_torch_checkpoint(path)
    assert not marker.exists()

    legacy = tmp_path / "legacy.pt"
    legacy.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointFormatError, match="not a zip-format"):
        load_torch_checkpoint(legacy)


# The base-policy contract ---------------------------------------------------------------------------


def test_policy_is_deterministic_batched_and_checks_its_inputs():
    config = _small_config()
    policy = DiffusionMLPPolicy(config, init_network_params(config.network, 3))
    assert isinstance(policy, BasePolicy) and policy.noise_shape == (3, 2)
    rng = np.random.default_rng(0)
    obs = {"policy_state": rng.uniform(-1, 1, (5, 4)).astype(np.float32)}
    noise = rng.standard_normal((5, 3, 2)).astype(np.float32)
    first = policy.sample_actions(obs, noise)
    np.testing.assert_array_equal(first, policy.sample_actions(obs, noise))
    # Rows are independent: permuting the batch permutes the chunks.
    order = np.array([3, 0, 4, 1, 2])
    permuted = policy.sample_actions({"policy_state": obs["policy_state"][order]}, noise[order])
    np.testing.assert_allclose(permuted, first[order], atol=1e-6)
    assert np.abs(first - policy.sample_actions(obs, noise + 0.5)).max() > 1e-3

    with pytest.raises(ValueError, match=r"expected \(B, 3, 2\)"):
        policy.sample_actions(obs, noise[:, :2])
    with pytest.raises(ValueError, match="batch mismatch"):
        policy.sample_actions(obs, noise[:4])
    with pytest.raises(KeyError, match="needs observation\\['policy_state'\\]"):
        policy.sample_actions({"pixels": obs["policy_state"]}, noise)
    with pytest.raises(ValueError, match="Set ddim_steps"):
        SamplerConfig(denoising_steps=20)


def test_normalization_maps_raw_observations_to_raw_actions():
    config = _small_config(final_action_clip_value=1.0)
    params = init_network_params(config.network, 1)
    norm = Normalization(
        obs_min=np.array([-2, 0, 1, -5], np.float32),
        obs_max=np.array([2, 4, 3, 5], np.float32),
        action_min=np.array([-0.5, 10], np.float32),
        action_max=np.array([0.5, 30], np.float32),
    )
    raw_policy = DiffusionMLPPolicy(config, params, norm)
    unit_policy = DiffusionMLPPolicy(config, params)
    rng = np.random.default_rng(1)
    raw_obs = rng.uniform(norm.obs_min, norm.obs_max, (4, 4)).astype(np.float32)
    noise = rng.standard_normal((4, 3, 2)).astype(np.float32)
    actions = raw_policy.sample_actions({"policy_state": raw_obs}, noise)
    unit = unit_policy.sample_actions({"policy_state": norm.normalize_obs(raw_obs)}, noise)
    np.testing.assert_allclose(actions, norm.unnormalize_action(unit), atol=1e-5)
    # Final clip at 1 in normalized space = the action bounds in env units.
    assert (actions >= norm.action_min - 1e-5).all() and (actions <= norm.action_max + 1e-5).all()


def test_pure_jax_sampler_for_dsrl_na_matches_sample_actions():
    config = _small_config()
    norm = Normalization.from_data(np.arange(8.0).reshape(2, 4), np.ones((2, 3, 2)) * [1, 3])
    policy = DiffusionMLPPolicy(config, init_network_params(config.network, 0), norm)
    jax_policy = as_jax_base_policy(policy)
    assert jax_policy.observation_spec == {"policy_state": ((4,), np.float32)}
    obs = np.linspace(0, 7, 12, dtype=np.float32).reshape(3, 4)
    noise = np.random.default_rng(2).standard_normal((3, 3, 2)).astype(np.float32)
    out = jax.jit(jax_policy.apply_fn)(jax_policy.params, {"policy_state": obs}, noise)
    np.testing.assert_allclose(
        np.asarray(out), policy.sample_actions({"policy_state": obs}, noise), atol=1e-6
    )


def test_save_load_roundtrip_and_damaged_params_are_detected(tmp_path):
    config, checkpoint, data = _case("residual_layernorm_mish")
    norm = Normalization.from_data(data["obs"] * 3.0, np.tanh(data["noise"]))
    policy = DiffusionMLPPolicy.from_dppo_checkpoint(checkpoint, config, normalization=norm)
    policy.save(tmp_path / "policy")
    loaded = DiffusionMLPPolicy.load(tmp_path / "policy")
    assert loaded.config == config
    obs = {"policy_state": data["obs"] * 3.0}
    np.testing.assert_array_equal(
        loaded.sample_actions(obs, data["noise"]), policy.sample_actions(obs, data["noise"])
    )
    params_file = tmp_path / "policy" / "params.npz"
    params_file.write_bytes(params_file.read_bytes()[:-8] + b"damaged!")
    with pytest.raises(ValueError, match="sha256"):
        DiffusionMLPPolicy.load(tmp_path / "policy")
    with pytest.raises(FileNotFoundError, match="from_dppo_checkpoint"):
        DiffusionMLPPolicy.load(tmp_path / "nothing")


# Behaviour cloning ------------------------------------------------------------------------------------


def test_ddpm_behaviour_cloning_reproduces_a_deterministic_demonstrator():
    """A chunk that is a smooth function of the observation is learned: from any noise, the
    cloned policy returns it far more closely than the best constant chunk does."""
    config = _small_config()
    rng = np.random.default_rng(0)
    obs = rng.uniform(-1, 1, (2048, 4)).astype(np.float32)
    weights = rng.standard_normal((4, 6)).astype(np.float32)
    chunks = (np.tanh(obs @ weights) * 5.0 + 2.0).reshape(-1, 3, 2)  # raw units, not [-1, 1]

    bc = BCConfig(steps=1500, batch_size=128, ema_decay=0.99, ema_start_step=200, log_every=500)
    policy, losses = train_diffusion_policy(config, obs, chunks, bc)
    assert losses[-1] < 0.5 * losses[0]

    test_obs = rng.uniform(-1, 1, (256, 4)).astype(np.float32)
    target = (np.tanh(test_obs @ weights) * 5.0 + 2.0).reshape(-1, 3, 2)
    noise = rng.standard_normal((256, 3, 2)).astype(np.float32)
    predicted = policy.sample_actions({"policy_state": test_obs}, noise)
    error = np.abs(predicted - target).mean()
    constant_error = np.abs(chunks.mean(0) - target).mean()
    assert error < 0.4 * constant_error, (error, constant_error)  # measured: 0.24

    with pytest.raises(ValueError, match=r"expected \(N, 3, 2\)"):
        train_diffusion_policy(config, obs, chunks[:, :2], bc)


# Naming it in a run ---------------------------------------------------------------------------------


def test_a_run_config_names_a_saved_diffusion_policy(tmp_path):
    from dsrl.training.build import make_base_policy, make_steering
    from dsrl.training.config import ConfigError
    from dsrl.training.config_io import load_config

    config, checkpoint, data = _case("residual_relu")
    DiffusionMLPPolicy.from_dppo_checkpoint(checkpoint, config).save(tmp_path / "hopper_like")
    run_config = load_config(
        "demo",
        overrides=[
            ("base_policy.kind", "diffusion_mlp"),
            ("base_policy.checkpoint", str(tmp_path / "hopper_like")),
            ("steering.query_freq", "4"),  # the release executes the whole 4-step chunk
        ],
    )
    policy = make_base_policy(run_config)
    assert isinstance(policy, DiffusionMLPPolicy) and policy.noise_shape == (4, 3)
    actions = policy.sample_actions({"policy_state": data["obs"]}, data["noise"])
    assert np.abs(actions - data["actions"]).max() <= 1e-5
    assert make_steering(run_config, policy).base_policy is policy

    with pytest.raises(ConfigError, match="base_policy.checkpoint must be a policy directory"):
        load_config("demo", overrides=[("base_policy.kind", "diffusion_mlp")])


def test_release_configs_have_dppo_parameter_counts():
    """The DSRL release's networks, as DPPO's DiffusionMLP builds them (counts from DPPO's code
    at 7b10df6), so its checkpoints load into these configs."""
    from dsrl.base_policies.diffusion.network import param_shapes
    from dsrl.base_policies.diffusion.release import release_config

    dppo_counts = {"hopper": 553_020, "can": 575_564, "square": 2_305_212, "transport": 9_044_176}
    for task, count in dppo_counts.items():
        shapes = param_shapes(release_config(task).network)
        n = sum(int(np.prod(s)) for s in jax.tree_util.tree_leaves(shapes, is_leaf=_is_shape))
        assert n == count, task
    assert release_config("transport").sampler.ddim_steps == 100
    with pytest.raises(ValueError, match="known: hopper"):
        release_config("ant")


def _is_shape(x):
    return isinstance(x, tuple) and all(isinstance(d, int) for d in x)


# Demonstrations -> a working base policy ------------------------------------------------------------


def test_chunking_follows_dppo_sequence_dataset():
    """Pairs start wherever the whole chunk fits inside the episode; the history repeats the
    episode's first state before its start (DPPO's StitchedSequenceDataset)."""
    from dsrl.base_policies.diffusion.dataset import chunk_episodes

    states = np.arange(7, dtype=np.float32)[:, None] * [1.0, -1.0]  # episodes of 4 and 3 steps
    actions = 10.0 + np.arange(7, dtype=np.float32)[:, None]
    conds, chunks = chunk_episodes(states, actions, np.array([4, 3]), horizon_steps=2, cond_steps=2)
    # Starts 0, 1, 2 (episode 1) and 4, 5 (episode 2).
    np.testing.assert_array_equal(
        chunks[..., 0], [[10, 11], [11, 12], [12, 13], [14, 15], [15, 16]]
    )
    np.testing.assert_array_equal(conds[:, [0, 2]], [[0, 0], [0, 1], [1, 2], [4, 4], [4, 5]])
    np.testing.assert_array_equal(conds[:, 1], -conds[:, 0])
    with pytest.raises(ValueError, match="No episode is at least horizon_steps=5"):
        chunk_episodes(states, actions, np.array([4, 3]), horizon_steps=5)
    with pytest.raises(ValueError, match="traj_lengths sum to 8"):
        chunk_episodes(states, actions, np.array([4, 4]), horizon_steps=2)


@pytest.mark.slow
def test_policy_cloned_from_demonstrations_balances_a_mujoco_pendulum():
    """End to end on a real simulator: noisy demonstrations of a linear controller on gymnasium's
    InvertedPendulum-v5, chunked as DPPO does (4-step chunks, executed whole), cloned by DDPM,
    sampled by DDIM from N(0, I) noise. The clone keeps the pole up for hundreds of steps where
    doing nothing lets it fall in about 30. (~30 s on a loaded 2-core machine.)"""
    import gymnasium as gym

    from dsrl.base_policies.diffusion.dataset import chunk_episodes
    from dsrl.base_policies.diffusion.rollout import run_base_policy

    gains = np.array([1.0, 10.0, 1.0, 2.0])  # a stabilising state feedback for this env
    env = gym.make("InvertedPendulum-v5")
    rng = np.random.default_rng(0)
    states, actions, lengths = [], [], []
    for episode in range(8):
        obs, _ = env.reset(seed=episode)
        length = 0
        while length < 1000:
            length += 1
            action = np.clip(gains @ obs, -3.0, 3.0)
            states.append(obs)
            actions.append([action])
            # Executing a perturbed action (labels stay clean) shows the clone how to recover.
            obs, _, terminated, truncated, _ = env.step(
                [np.clip(action + 0.3 * rng.normal(), -3, 3)]
            )
            if terminated or truncated:
                break
        lengths.append(length)
    assert min(lengths) == 1000  # the demonstrator itself never drops the pole
    conds, chunks = chunk_episodes(np.array(states), np.array(actions), np.array(lengths), 4)

    network = NetworkConfig(
        action_dim=1,
        horizon_steps=4,
        cond_dim=4,
        mlp_dims=(64, 64, 64),
        activation_type="ReLU",
        residual_style=True,
    )
    config = DiffusionPolicyConfig(network, SamplerConfig(denoising_steps=20, ddim_steps=5))
    bc = BCConfig(steps=3000, ema_decay=0.99, ema_start_step=200)
    policy, _ = train_diffusion_policy(config, conds, chunks, bc)

    cloned = run_base_policy(policy, env, episodes=5, seed=100, max_steps=1000)

    class DoNothing:
        noise_shape = (4, 1)

        def sample_actions(self, observation, noise):
            return np.zeros((1, 4, 1), np.float32)

    idle = run_base_policy(DoNothing(), env, episodes=5, seed=100, max_steps=1000)
    cloned_mean = np.mean([r.episode_return for r in cloned])
    idle_mean = np.mean([r.episode_return for r in idle])
    assert idle_mean < 60
    assert cloned_mean > 10 * idle_mean and max(r.episode_return for r in cloned) == 1000.0


def test_make_writes_a_hash_checked_policy_with_its_recipe(tmp_path, capsys):
    """The asset maker on a DPPO-format dataset: the release's Hopper network, a policy
    directory that loads (sha256 checked), the dataset's hash and a real Hopper-v5 evaluation."""
    import hashlib

    from dsrl.base_policies.diffusion import make

    rng = np.random.default_rng(0)
    dataset = tmp_path / "train.npz"
    np.savez(
        dataset,
        states=rng.normal(size=(80, 11)).astype(np.float32),
        actions=rng.uniform(-1, 1, (80, 3)).astype(np.float32),
        traj_lengths=np.array([50, 30]),
    )
    out = tmp_path / "hopper_policy"
    argv = ["--dataset", str(dataset), "--task", "hopper", "--out", str(out), "--steps", "3"]
    recipe = make.main(
        argv + ["--batch-size", "16", "--eval-env", "Hopper-v5", "--eval-episodes", "1"]
    )
    policy = DiffusionMLPPolicy.load(out)
    assert policy.noise_shape == (4, 3) and policy.normalization is not None
    saved = json.loads((out / "recipe.json").read_text())
    assert saved == recipe and saved["pairs"] == (50 - 3) + (30 - 3)
    assert saved["dataset_sha256"] == hashlib.sha256(dataset.read_bytes()).hexdigest()
    assert saved["eval"]["env"] == "Hopper-v5" and len(saved["eval"]["returns"]) == 1
    assert saved["eval"]["lengths"][0] >= 1

    np.savez(tmp_path / "bad.npz", states=np.zeros((5, 11)), actions=np.zeros((5, 3)))
    with pytest.raises(SystemExit) as exit_info:
        make.main(
            [
                "--dataset",
                str(tmp_path / "bad.npz"),
                "--task",
                "hopper",
                "--out",
                str(tmp_path / "x"),
            ]
        )
    assert exit_info.value.code == 2 and "lacks ['traj_lengths']" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_dsrl_na_run_steers_a_diffusion_base_policy(tmp_path):
    """A short demo run with `--algorithm dsrl_na` and `base_policy.kind=diffusion_mlp`: NA runs
    the DDIM sampler inside its jitted update, and the stored chunks are what the policy makes of
    the stored noise at the stored base-policy state. (~25 s CPU; 90 s on the loaded machine.)"""
    from dsrl.agents.noise_aliasing import NoiseAliasingLearner
    from dsrl.training.build import build_run
    from dsrl.training.config_io import load_config

    network = NetworkConfig(
        action_dim=2, horizon_steps=8, cond_dim=2, mlp_dims=(32, 32, 32), residual_style=True
    )
    config = DiffusionPolicyConfig(network, SamplerConfig(denoising_steps=20, ddim_steps=5))
    norm = Normalization.from_data(np.array([[-1.0, -1.0], [1.0, 1.0]]), np.zeros((1, 8, 2)) + 0.2)
    DiffusionMLPPolicy(config, init_network_params(network, 0), norm).save(tmp_path / "policy")
    flags = {
        "algorithm": "dsrl_na", "max_steps": "32", "eval_interval": "32", "eval_episodes": "2",
        "start_online_updates": "20", "batch_size": "16", "logdir": str(tmp_path / "runs"),
        "wandb_mode": "disabled", "num_envs": "2", "update_block": "16",
    }  # fmt: skip
    overrides = [
        ("base_policy.kind", "diffusion_mlp"),
        ("base_policy.checkpoint", str(tmp_path / "policy")),
        ("loop.num_video_episodes", "0"),
        ("loop.progress", "0"),
    ]
    run_config = load_config("demo", flags=flags, overrides=overrides)
    with build_run(run_config, log=lambda *_: None) as run:
        assert isinstance(run.agent, NoiseAliasingLearner)
        assert isinstance(run.steering.base_policy, DiffusionMLPPolicy)
        result = run.train()
    assert result.state.grad_steps >= 32
    stored = run.buffer.sample(8)
    q = run_config.steering.query_freq
    chunks = run.steering.base_policy.sample_actions(
        {"policy_state": stored["observations"]["policy_state"][0]}, stored["noise"][0]
    )
    np.testing.assert_allclose(chunks[:, :q], stored["action_chunks"][0], atol=1e-5)
    rows = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["training/noise_critic_loss"] for r in rows if "training/noise_critic_loss" in r]
    assert losses and np.isfinite(losses[-1])
