"""The training config files: every field both kinds of run have is defined once (experiments/configs/common.py),
and the variant keywords are parsed in one place."""

import pytest

from experiments.configs import common, oat, policy


def _leaves(config, prefix=""):
    out = set()
    for key, value in config.items():
        if hasattr(value, "items"):
            out |= _leaves(value, f"{prefix}{key}.")
        else:
            out.add(prefix + key)
    return out


@pytest.mark.parametrize("tokenizer_variant, policy_variant", [("", "oat"), ("paper", "bin"), ("test", "dp,test")])
def test_fields_of_both_configs_are_the_shared_ones(tokenizer_variant, policy_variant):
    shared = _leaves(oat.get_config(tokenizer_variant)) & _leaves(policy.get_config(policy_variant))
    shared = {f for f in shared if not f.startswith("model.")}  # each kind's own network (both have a dtype)
    assert shared == _leaves(common.base())  # no field is defined in both files, and none of common's is dropped


def test_values_that_differ_are_stated_by_the_config_that_changes_them():
    base, tok, pol = common.base(), oat.get_config(""), policy.get_config("oat")
    assert tok.optim.lr == base.optim.lr and pol.optim.lr != base.optim.lr  # the policy states its own
    assert (pol.optim.lr, pol.optim.warmup_steps, pol.optim.weight_decay) == (3e-4, 200, 0.01)


def test_variant_keywords_are_checked_the_same_way():
    with pytest.raises(ValueError, match=r"Unknown config variant\(s\) \['bogus'\]"):
        oat.get_config("bogus")
    with pytest.raises(ValueError, match=r"Unknown config variant\(s\) \['bogus'\]"):
        policy.get_config("oat,bogus")
    with pytest.raises(ValueError, match="Choose one variant among"):
        policy.get_config("oat,bin")
    with pytest.raises(ValueError, match=r"Choose one variant among \('paper', 'scale'\)"):
        oat.get_config("paper,scale")
    assert oat.get_config(" paper , oatx ").objective.nested_dropout == "none"  # spaces and combinations


def _names_read_by_the_code():
    """Attribute names and exact string constants (`.get("name")`, `d["name"]`) in the code that consumes configs:
    oat_jax/, data_pipelines/ and experiments/ without the config files themselves."""
    import ast
    import pathlib

    repo = pathlib.Path(__file__).resolve().parent.parent
    names = set()
    for root in ("oat_jax", "data_pipelines", "experiments"):
        for path in (repo / root).rglob("*.py"):
            if path.parent.name == "configs":
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Attribute):
                    names.add(node.attr)
                elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                    names.add(node.value)
    return names


@pytest.mark.parametrize("module, variants", [(oat, ("", "oatx", "quest", "paper", "scale", "scale,oatx", "fsdp",
                                                      "runlocal", "test")),
                                              (policy, ("oat", "quest", "bin", "fast", "dp", "fsdp", "runlocal",
                                                        "test"))])
def test_every_config_field_is_read_by_the_code(module, variants):
    """A field nothing reads is an error: sections built into a dataclass must name its fields, the others must be
    read by name somewhere in the code."""
    import dataclasses
    import inspect

    from oat_jax.action_tokenizers.bin import BinActionTokenizer
    from oat_jax.policy.sampling import SamplingConfig
    from oat_jax.training.run_config import TokenizerModel
    from oat_jax.training.tokenizer.objective import Objective

    typed = {"objective": Objective, "sampling": SamplingConfig}
    if module is oat:
        typed["model"] = TokenizerModel
    read = _names_read_by_the_code()
    for variant in variants:
        for leaf in _leaves(module.get_config(variant)):
            section, name = leaf.split(".")[0], leaf.split(".")[-1]
            if section in typed:
                assert name in {f.name for f in dataclasses.fields(typed[section])}, (variant, leaf)
            elif leaf.startswith("tokenizer.fit_options."):  # keyword options of the Bin / FAST fit
                assert name in inspect.signature(BinActionTokenizer.fit).parameters, (variant, leaf)
            else:
                assert name in read, (variant, leaf)


def test_typed_run_configs_name_the_field_that_is_wrong():
    """The trainers read frozen dataclasses built once from the ConfigDict: every variant builds, and an unknown or
    missing field, or a section the run kind does not read, is a ValueError naming config.<section>.<field>."""
    import dataclasses

    from oat_jax.training import run_config

    for variant in ("", "oatx", "quest", "paper", "scale", "scale,oatx", "fsdp", "runlocal", "test"):
        run = run_config.tokenizer_run(oat.get_config(variant))
        assert run.model.action_dim == 1 and run.objective == run_config.Objective.from_dict(
            oat.get_config(variant).objective)
        with pytest.raises(dataclasses.FrozenInstanceError):
            run.optim.lr = 1.0
    for variant in ("oat", "bin", "fast", "dp", "oat,test", "dp,test"):
        run = run_config.policy_run(policy.get_config(variant))
        assert (run.diffusion is None) == (variant.split(",")[0] != "dp") == (run.sampling is not None)
    assert run_config.to_json(run_config.policy_run(policy.get_config("bin")))["tokenizer"]["fit_options"] == {
        "num_bins": 256}

    config = oat.get_config("")
    with config.unlocked():
        config.train.bogus = 1
    with pytest.raises(ValueError, match=r"config\.train: unknown field\(s\) \['config\.train\.bogus'\]"):
        run_config.tokenizer_run(config)
    config = oat.get_config("")
    with config.unlocked():
        del config.optim["clip_norm"]
    with pytest.raises(ValueError, match=r"missing field\(s\) \['config\.optim\.clip_norm'\]"):
        run_config.tokenizer_run(config)
    config = policy.get_config("oat")
    with config.unlocked():
        config.diffusion = policy.get_config("dp").diffusion
    with pytest.raises(ValueError, match=r"config\.diffusion: a policy of config\.policy\.type='token' does not"):
        run_config.policy_run(config)  # a token policy with a diffusion section: policy.type says token
    config = oat.get_config("")
    with config.unlocked():
        config.sampling = policy.get_config("oat").sampling
    with pytest.raises(ValueError, match=r"config\.sampling: a TokenizerRun does not read this section"):
        run_config.tokenizer_run(config)
    config = oat.get_config("")
    with config.unlocked():
        config.model.action_dim = 7
    with pytest.raises(ValueError, match=r"config\.model\.action_dim"):
        run_config.tokenizer_run(config)


@pytest.mark.parametrize("field, value", [("train.batch_size", 0), ("train.log_every", 0), ("train.num_steps", -1),
                                          ("checkpoint.every", 0), ("checkpoint.keep_last", 0)])
def test_loop_sizes_below_their_minimum_are_errors_naming_the_field(field, value):
    """A batch of 0 rows or a zero logging interval is a config error, not a NaN loss or a division by zero."""
    from oat_jax.training import run_config

    config = oat.get_config("")
    section, name = field.split(".")
    config[section][name] = value
    with pytest.raises(ValueError, match=rf"config\.{section}\.{name} must be a whole number >= "):
        run_config.tokenizer_run(config)


def test_removed_fields_are_named_with_what_replaces_them():
    """A command line written for an older config names the removed field and its replacement; no removed name is
    a field of today's configs (the message would then be wrong)."""
    from oat_jax.training import run_config

    errors = run_config.removed_field_errors(["--config.model.enc_width=128", "--config.optim.lr=1e-3",
                                              "--config.data.mixture=a:1,b:2", "--workdir=x"])
    assert errors == ["--config.model.enc_width no longer exists: set model.width (encoder and decoder share it).",
                      "--config.data.mixture no longer exists: set data.path (a mixture 'name_or_path:weight,...')."]
    current = set()
    for variant in ("", "oatx", "quest", "paper", "scale", "scale,oatx", "fsdp", "runlocal", "test"):
        current |= _leaves(oat.get_config(variant))
    for variant in ("oat", "quest", "bin", "fast", "dp", "fsdp", "runlocal", "test"):
        current |= _leaves(policy.get_config(variant))
    assert not current & set(run_config.REMOVED_FIELDS)
