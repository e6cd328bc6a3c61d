import pytest

from pipeline.config import Config, apply_overrides, configs_dir, from_dict, load_config
from pipeline.errors import ConfigError


def test_committed_configs_load():
    names = sorted(p.stem for p in configs_dir().glob("*.yaml"))
    assert {"default", "lab", "tiny"} <= set(names)
    for name in names:
        assert isinstance(load_config(name), Config)


def test_lab_config_keeps_the_reference_settings():
    lab = load_config("lab")
    assert (lab.model.hidden_size, lab.model.latent_size, lab.model.tense_embedding) == (256, 32, 8)
    assert lab.train.pairs == "same" and lab.train.batch_size == 1 and lab.train.optimizer == "sgd"


def test_overrides():
    cfg = apply_overrides(
        Config(), ["train.epochs=3", "hidden_size=64", "attention=true", "lr=1e-3"]
    )
    assert cfg.train.epochs == 3 and cfg.model.hidden_size == 64 and cfg.model.attention is True
    assert cfg.train.lr == 0.001


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["epochs"], "not KEY=VALUE"),
        (["train.nope=1"], r"unknown config key 'train.nope'$"),
        (["model.hidden=64"], r"'model.hidden' \(did you mean model.hidden_size\?\)"),
        (["train.hidden_size=64"], r"\(did you mean model.hidden_size\?\)"),
        (["epoch=3"], r"unknown config key 'epoch' \(did you mean train.epochs\?\)"),
        (["epochs=many"], "expected int"),
        (["epochs=2.5"], "whole number"),
        (["kl_schedule=sometimes"], "kl_schedule"),
        (["attention=maybe"], "expected bool"),
        (["mmd_weight=-1"], "mmd_weight"),
        (["free_nats=-0.5"], "free_nats"),
        (["context_posterior_share=1.5"], "context_posterior_share"),
        (["position_bias=-1"], "position_bias must be >= 0"),
        (["position_bias=3"], "position_bias needs model.attention"),
        (["made_up_stems=2"], "made_up_stems must lie"),
        (["made_up_stems=0.2"], "made_up_stems needs model.attention"),
        (["made_up_from=irregular"], "made_up_from must be all or regular"),
        (["made_up_prefixes=-0.1"], "made_up_prefixes must lie"),
        (["made_up_prefixes=0.2"], "made_up_prefixes needs model.attention"),
        (["latent_memory=8", "latent_memory_read=firm"], "latent_memory_read must be soft"),
        (["latent_memory_z=false"], "latent_memory_z=false needs model.latent_memory"),
        (["decoder_init_tense=false"], "decoder_init_tense=false needs model.decoder_input_z"),
        (["latent_memory=8", "latent_memory_ema=1"], "latent_memory_ema must lie"),
        (["prior_anchor=tp"], "prior_anchor must be posterior, sp or rest"),
        (["prior_anchor_top=-1"], "prior_anchor_top and train.prior_anchor_cap must be >= 0"),
        (["prior_anchor_cap=-1"], "prior_anchor_top and train.prior_anchor_cap must be >= 0"),
        (["hard_pairs=1.5"], "hard_pairs must lie in"),
        (["hard_pairs_attend=true"], "hard_pairs_attend needs train.hard_pairs above 0"),
        (["hard_pairs=0.2", "hard_pairs_attend=true"], "and model.attention"),
        (["hard_pairs_again=0.1"], r"hard_pairs_again must lie in \[0, train.hard_pairs\]"),
        (["hard_pairs=0.2", "hard_pairs_again=0.3"], "hard_pairs_again must lie in"),
        (["ema=1"], "train.ema must lie in"),
        (["label_smoothing=1"], r"train.label_smoothing must lie in \[0, 1\)"),
        (["label_smoothing_hard=false"], "label_smoothing_hard=false needs train.label_smoothing"),
        (
            ["label_smoothing=0.1", "label_smoothing_hard=false"],
            "and train.hard_pairs above 0",
        ),
        (["prior_anchor_fallback=far"], "prior_anchor_fallback must be likeliest or under_cap"),
        (["lr=1e400"], r"train.lr: expected a finite number, got '1e400'"),
        (["kl_max=nan"], r"train.kl_max: expected a finite number, got 'nan'"),
        (["grad_clip=-inf"], "expected a finite number"),
        (["epochs=inf"], "expected int, got 'inf'"),
    ],
)
def test_bad_overrides(overrides, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(Config(), overrides)


def test_turning_hard_pairs_off_in_the_shipped_config_says_what_else_to_turn_off():
    """The shipped config has hard_pairs_attend on: hard_pairs=0 alone is refused, by a
    message that names the override that goes with it, and the two together load."""
    with pytest.raises(ConfigError, match=r"set train.hard_pairs_attend=false"):
        load_config("default", ["train.hard_pairs=0"])
    cfg = load_config("default", ["train.hard_pairs=0", "train.hard_pairs_attend=false"])
    assert cfg.train.hard_pairs == 0 and not cfg.train.hard_pairs_attend


def test_an_unknown_key_in_a_config_file_names_the_close_ones(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("model:\n  hiden_size: 64\ntrain:\n  epochs: 2\n")
    with pytest.raises(ConfigError, match=r"model.hiden_size \(did you mean model.hidden_size\?\)"):
        load_config(str(f))


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="no such config"):
        load_config(tmp_path / "nope.yaml")
    f = tmp_path / "bad.yaml"
    f.write_text("model: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(f)
    with pytest.raises(ConfigError, match="unknown config section"):
        from_dict({"modle": {}})
    with pytest.raises(ConfigError, match="is a folder, not a config file"):
        load_config(tmp_path)
    f.write_text("train:\n  epochs: 1.0e+400\n")  # YAML's infinity, where int() overflows
    with pytest.raises(ConfigError, match=r"train\.epochs: expected int, got inf"):
        load_config(f)
