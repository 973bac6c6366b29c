"""Config: presets, overrides and one-line errors."""

import dataclasses

import pytest

from distdrq.config import (
    AgentConfig,
    Config,
    ConfigError,
    LinearSchedule,
    configs_dir,
    field_docs,
    load_config,
    set_key,
    validate_agent,
)
from distdrq.envs.tasks import TASKS


def test_every_drqv2_task_has_a_preset_with_its_difficulty():
    assert len(TASKS) == 24
    for name, spec in TASKS.items():
        cfg = load_config(name)
        assert cfg.env.task == name
        frames = {"easy": 1_100_000, "medium": 3_100_000, "hard": 30_100_000}[spec.difficulty]
        duration = {"easy": 100_000, "medium": 500_000, "hard": 2_000_000}[spec.difficulty]
        assert cfg.train.frames == frames, name
        assert cfg.agent.stddev_schedule.duration == duration, name


def test_per_task_presets_match_drqv2():
    walker = load_config("walker_walk")
    assert (walker.agent.batch_size, walker.replay.nstep) == (512, 1)
    cheetah = load_config("cheetah_run")
    assert (cheetah.agent.batch_size, cheetah.replay.nstep) == (256, 3)
    assert cheetah.agent.lr == 1e-4 and cheetah.agent.feature_dim == 50
    humanoid = load_config("humanoid_walk")
    assert humanoid.agent.lr == 8e-5 and humanoid.agent.feature_dim == 100
    assert load_config("quadruped_run").replay.capacity == 100_000
    assert load_config("quadruped_walk").replay.capacity == 1_000_000
    assert TASKS["quadruped_walk"].camera_id == 2
    assert TASKS["cup_catch"].domain == "ball_in_cup"


def test_overrides_are_typed():
    cfg = load_config(
        "cheetah_run",
        overrides=[
            "agent.lr=3e-4",
            "env.fast_render=true",
            "train.frames=1_000",
            "agent.stddev_schedule.final=0.2",
        ],
    )
    assert cfg.agent.lr == pytest.approx(3e-4)
    assert cfg.env.fast_render is True
    assert cfg.train.frames == 1000
    assert cfg.agent.stddev_schedule.final == 0.2


def test_yaml_file_layers_over_the_task_preset(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("extends: cheetah_run\nagent:\n  lr: 0.001\n")
    cfg = load_config(config_file=path)
    assert cfg.env.task == "cheetah_run" and cfg.agent.lr == 0.001
    assert cfg.train.frames == 3_100_000


@pytest.mark.parametrize(
    "overrides, task, message",
    [
        (["agent.lrr=1"], None, "unknown config key 'agent.lrr' (did you mean lr?)"),
        (["agnt.lr=1"], None, "unknown config key 'agnt' (did you mean agent?)"),
        (["agent.lr=fast"], None, "agent.lr='fast' is not a number"),
        (["agent.batch_size=0"], None, "agent.batch_size=0 must be > 0"),
        (["agent.precision=fp8"], None, "choose one of: auto, bf16, fp16, fp32"),
        (["env.fast_render=maybe"], None, "is not a boolean"),
        (["agent.lr"], None, "is not of the form section.key=value"),
        ([], "walker_wlak", "unknown task 'walker_wlak' (did you mean walker_walk"),
    ],
)
def test_errors_are_one_line_and_name_the_problem(overrides, task, message):
    with pytest.raises(ConfigError) as info:
        load_config(task, overrides=overrides)
    text = str(info.value)
    assert message in text
    assert "\n" not in text


# every rule of the agent section: the override and the one-line error it gives
AGENT_RULES = [
    ("agent.algo=ppo", "agent.algo='ppo' is not allowed; choose one of: drqv2, drq"),
    ("agent.encoder=resnet", "agent.encoder='resnet' is not allowed; choose one of: drqv2, nano"),
    ("agent.lr=0", "agent.lr=0.0 must be > 0"),
    ("agent.hidden_dim=-1", "agent.hidden_dim=-1 must be > 0"),
    ("agent.critic_tau=0", "agent.critic_tau=0.0 must be in (0, 1]"),
    ("agent.drq.encoder_tau=0", "agent.drq.encoder_tau=0.0 must be in (0, 1]"),
    ("agent.drq.critic_augs=0", "agent.drq.critic_augs=0 must be > 0"),
    ("agent.drq.log_std_max=-20",
     "agent.drq.log_std_min=-10.0 must be < agent.drq.log_std_max=-20.0"),
    ("agent.stddev_clip=-0.1", "agent.stddev_clip=-0.1 must be >= 0"),
    ("agent.stddev_schedule.final=-1", "agent.stddev_schedule.final=-1.0 must be >= 0"),
    ("agent.stddev_schedule.duration=0", "agent.stddev_schedule.duration=0 must be > 0"),
    ("agent.num_expl_steps=-5", "agent.num_expl_steps=-5 must be >= 0"),
    ("agent.metrics_every=0", "agent.metrics_every=0 must be > 0"),
    ("agent.device=gpu", "agent.device='gpu' is not a torch device; use auto, cpu, cuda or cuda:N"),
]  # fmt: skip


@pytest.mark.parametrize(
    "override, message",
    [
        *AGENT_RULES,
        ("replay.discount=1.5", "replay.discount=1.5 must be in (0, 1]"),
        ("replay.nstep=0", "replay.nstep=0 must be > 0"),
        ("replay.decode_on=gpu", "replay.decode_on='gpu' is not allowed; choose one of: learner"),
        ("replay.decode_threads=0", "replay.decode_threads=0 must be > 0"),
        ("replay.learner_cache_mb=-1", "replay.learner_cache_mb=-1 must be >= 0"),
        ("env.image_size=8", "env.image_size=8 is too small; use 16 or more"),
        ("env.camera_id=-2", "env.camera_id=-2 must be -1 (the task's default camera) or >= 0"),
        ("distributed.learner_gpus=-0.5", "distributed.learner_gpus=-0.5 must be -1 (one GPU if"),
        ("distributed.learner_threads=-1", "distributed.learner_threads=-1 must be >= 1, or 0"),
        ("train.seed_frames=-1", "train.seed_frames=-1 must be >= 0"),
    ],
)
def test_each_rule_is_one_line_naming_the_key_and_the_fix(override, message):
    with pytest.raises(ConfigError) as info:
        load_config("cheetah_run", overrides=[override])
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("override, message", AGENT_RULES)
def test_agents_check_their_section_by_the_same_rules(override, message):
    """validate_agent (what the agents call) gives validate's error for every agent rule."""
    cfg = AgentConfig()
    key, value = override.split("=")
    set_key(Config(agent=cfg), key, value)
    with pytest.raises(ConfigError) as info:
        validate_agent(cfg)
    assert str(info.value).startswith(message)
    assert validate_agent(AgentConfig(device="cuda:1")).device == "cuda:1"  # a device, unused


def test_agents_reject_a_bad_config_they_are_given():
    from distdrq.agent import make_agent

    cfg = AgentConfig(hidden_dim=8, feature_dim=4, device="cpu", critic_tau=2.0)
    with pytest.raises(ConfigError, match=r"^agent.critic_tau=2.0 must be in \(0, 1\]$"):
        make_agent((9, 32, 32), 2, cfg)


def test_yaml_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("agent: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(config_file=bad)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("replay:\n  capacityy: 5\n")
    with pytest.raises(ConfigError, match="'replay.capacityy'"):
        load_config(config_file=unknown)
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(config_file=tmp_path / "missing.yaml")


def test_every_field_has_a_docstring():
    for section in dataclasses.fields(Config):
        cls = section.default_factory().__class__  # type: ignore[misc]
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            assert docs.get(f.name), f"{cls.__name__}.{f.name} has no docstring"


def test_set_key_rejects_sections_as_values():
    cfg = Config()
    with pytest.raises(ConfigError, match="agent must be a mapping"):
        set_key(cfg, "agent", "1")


def test_linear_schedule():
    s = LinearSchedule(initial=1.0, final=0.1, duration=100)
    assert s(0) == 1.0
    assert s(50) == pytest.approx(0.55)
    assert s(100) == pytest.approx(0.1)
    assert s(10_000) == pytest.approx(0.1)


def test_presets_directory_is_found():
    assert (configs_dir() / "tasks" / "walker_walk.yaml").is_file()


def test_saved_configs_of_older_versions_still_resume(tmp_path):
    """A run dir written before DrQ's keys moved to agent.drq resumes with their values."""
    import yaml

    from distdrq.config import to_dict
    from distdrq.run.rundir import load_run_config

    old = to_dict(load_config(task="cheetah_run"))
    drq = old["agent"].pop("drq")
    old["agent"].update(drq | {"init_temperature": 0.3})
    del old["agent"]["target_augs"], old["agent"]["critic_augs"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    cfg = load_run_config(tmp_path)
    assert cfg.agent.drq.init_temperature == 0.3 and cfg.agent.drq.target_augs == 2
