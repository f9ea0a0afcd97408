"""Fault injection, saved artifacts: a flipped bit in any saved file, an edited config.json or a truncated file is a
clear error naming the file; verify=False and artifacts saved before manifests still load."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from oat_jax import OATTokenizer, integrity
from oat_jax.config import OATConfig
from oat_jax.artifacts import TYPE_FILE
from oat_jax.normalizer import Normalizer

CONFIG = OATConfig(action_dim=2, horizon=8, num_tokens=4, levels=(4, 3, 3), enc_width=16, enc_depth=1, enc_heads=2,
                   dec_width=16, dec_depth=1, dec_heads=2, dec_ffn_dim=32)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tok") / "tok")
    OATTokenizer.init(CONFIG, jax.random.PRNGKey(0), Normalizer.identity(2)).save(path)
    return path


def _copy(saved, tmp_path):
    dst = str(tmp_path / "copy")
    shutil.copytree(saved, dst)
    return dst


def _saved_files(path):
    return sorted(os.path.relpath(os.path.join(d, f), path) for d, _, fs in os.walk(path) for f in fs
                  if f != integrity.MANIFEST_FILE)


def test_every_saved_file_is_covered(saved):
    with open(os.path.join(saved, integrity.MANIFEST_FILE)) as f:
        listed = set(json.load(f)["sha256"])
    files = _saved_files(saved)
    assert set(f.replace(os.sep, "/") for f in files) == listed
    assert any(f.startswith("params") for f in files) and "config.json" in files and "normalizer.json" in files
    assert TYPE_FILE in files


def test_a_flipped_bit_in_any_file_is_an_error_naming_it(saved, tmp_path):
    for i, rel in enumerate(_saved_files(saved)):
        copy = _copy(saved, tmp_path / str(i))
        file = os.path.join(copy, rel)
        data = bytearray(open(file, "rb").read())
        data[len(data) // 2] ^= 0x01
        open(file, "wb").write(bytes(data))
        with pytest.raises(integrity.IntegrityError, match="does not match the SHA-256") as e:
            OATTokenizer.load(copy)
        assert file in str(e.value), rel


@pytest.mark.parametrize("field,value", [("horizon", 16), ("levels", [4, 3, 4]), ("causal_registers", False),
                                         ("dtype", "bfloat16")])
def test_an_edited_config_field_is_an_error_naming_config_json(saved, tmp_path, field, value):
    copy = _copy(saved, tmp_path)
    path = os.path.join(copy, "config.json")
    config = json.load(open(path))
    config[field] = value
    json.dump(config, open(path, "w"), indent=1)
    with pytest.raises(integrity.IntegrityError, match="config.json"):
        OATTokenizer.load(copy)


def test_a_truncated_or_missing_file_is_an_error_naming_it(saved, tmp_path):
    copy = _copy(saved, tmp_path / "t")
    biggest = max(_saved_files(copy), key=lambda r: os.path.getsize(os.path.join(copy, r)))
    file = os.path.join(copy, biggest)
    size = os.path.getsize(file)
    with open(file, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(integrity.IntegrityError, match="truncated") as e:
        OATTokenizer.load(copy)
    assert file in str(e.value)
    copy = _copy(saved, tmp_path / "m")
    os.remove(os.path.join(copy, "normalizer.json"))
    with pytest.raises(FileNotFoundError, match="normalizer.json"):
        OATTokenizer.load(copy)


def test_verify_false_and_artifacts_without_a_manifest_still_load(saved, tmp_path):
    reference = OATTokenizer.load(saved)
    copy = _copy(saved, tmp_path)
    path = os.path.join(copy, "config.json")
    json.dump(json.load(open(path)), open(path, "w"), indent=4)  # same content, other bytes
    with pytest.raises(integrity.IntegrityError):
        OATTokenizer.load(copy)
    x = np.random.default_rng(0).uniform(-1, 1, (3, 8, 2)).astype(np.float32)
    expected = reference.tokenize(x)[0]
    np.testing.assert_array_equal(OATTokenizer.load(copy, verify=False).tokenize(x)[0], expected)
    os.remove(os.path.join(copy, integrity.MANIFEST_FILE))  # deleted: this layout is always saved with one
    with pytest.raises(integrity.IntegrityError, match="has no integrity.json.*verify=False"):
        OATTokenizer.load(copy)
    np.testing.assert_array_equal(OATTokenizer.load(copy, verify=False).tokenize(x)[0], expected)
    os.remove(os.path.join(copy, "action_tokenizer.json"))  # the first layout, saved before manifests existed
    np.testing.assert_array_equal(OATTokenizer.load(copy).tokenize(x)[0], expected)


def test_a_damaged_policy_file_is_an_error_naming_it(tmp_path):
    from oat_jax.policy.policy import TokenPolicy
    from policy_helpers import save_tiny_oat, tiny_policy

    saved = tiny_policy(save_tiny_oat(str(tmp_path / "tok"))).save(str(tmp_path / "policy"))
    TokenPolicy.load(saved)
    file = os.path.join(saved, "policy.json")
    meta = json.load(open(file))
    meta["n_action_steps"] = 3
    json.dump(meta, open(file, "w"), indent=1)
    with pytest.raises(integrity.IntegrityError, match="policy.json"):
        TokenPolicy.load(saved)
    assert TokenPolicy.load(saved, verify=False).n_action_steps == 3
    for emptied in (False, True):  # a manifest deleted or emptied: nothing could be checked, so nothing loads
        manifest = os.path.join(saved, integrity.MANIFEST_FILE)
        if emptied:
            open(manifest, "w").close()
        elif os.path.exists(manifest):
            os.remove(manifest)
        with pytest.raises(integrity.IntegrityError, match="integrity.json"):
            TokenPolicy.load(saved)


@pytest.mark.parametrize("name,content", [("config.json", '{"horizon": 8, "levels": [4, 3'),
                                          ("normalizer.json", '{"mode": "limits", "scale": ["a", "b"], '
                                                              '"offset": [0, 0], "stats": {}}')])
def test_damaged_json_without_verification_is_an_error_naming_the_file(saved, tmp_path, name, content):
    copy = _copy(saved, tmp_path)
    with open(os.path.join(copy, name), "w") as f:
        f.write(content)
    with pytest.raises(ValueError, match=f"{name} is damaged") as e:
        OATTokenizer.load(copy, verify=False)
    assert os.path.join(copy, name) in str(e.value)


def test_damaged_exported_and_bin_artifacts_are_errors_naming_the_file(tmp_path):
    from oat_jax.action_tokenizers.registry import fit_action_tokenizer, load_action_tokenizer
    from oat_jax.serialization import ExportedTokenizer, export_tokenizer

    tok = OATTokenizer.init(CONFIG, jax.random.PRNGKey(0), Normalizer.identity(2))
    exported = export_tokenizer(tok, str(tmp_path / "export"), batch_sizes=(1,))
    ExportedTokenizer(exported)
    params = os.path.join(exported, "params.npz")
    data = bytearray(open(params, "rb").read())
    data[len(data) // 2] ^= 0x04
    open(params, "wb").write(bytes(data))
    with pytest.raises(integrity.IntegrityError) as e:
        ExportedTokenizer(exported)
    assert params in str(e.value)
    chunks = np.random.default_rng(0).uniform(-1, 1, (64, 8, 2)).astype(np.float32)
    path = fit_action_tokenizer("bin", chunks).save(str(tmp_path / "bin"))
    load_action_tokenizer(path)
    file = os.path.join(path, "action_tokenizer.json")
    content = json.load(open(file))
    content["num_bins"] = 128
    json.dump(content, open(file, "w"))
    with pytest.raises(integrity.IntegrityError, match="action_tokenizer.json"):
        load_action_tokenizer(path)


@pytest.mark.parametrize("file, content, message", [
    ("config.json", None, r"config\.json is damaged or not a tokenizer file .*levels must be whole numbers"),
    ("config.json", "[" * 100000 + "]" * 100000, r"config\.json is damaged or not valid JSON"),
    ("action_tokenizer.json", "[" * 100000 + "]" * 100000, r"action_tokenizer\.json is damaged or not valid JSON"),
])
def test_hostile_json_with_a_matching_manifest_is_a_clear_error(saved, tmp_path, file, content, message):
    """Files edited by someone who also rewrote the manifest: a level of 1e308 or JSON nested 100,000 deep is a
    ValueError naming the file, never an OverflowError or RecursionError."""
    from oat_jax.action_tokenizers import load_action_tokenizer

    copy = _copy(saved, tmp_path)
    path = os.path.join(copy, file)
    if content is None:
        config = json.load(open(path))
        config["levels"] = [1e308] + config["levels"][1:]
        content = json.dumps(config)
    with open(path, "w") as f:
        f.write(content)
    os.remove(os.path.join(copy, integrity.MANIFEST_FILE))
    integrity.write_manifest(copy)
    with pytest.raises(ValueError, match=message):
        load_action_tokenizer(copy)


def test_policy_loaders_name_what_is_wrong(tmp_path):
    """A policy.json edited to another width (manifest rewritten) is an error naming policy.json, and a tokenizer
    run's workdir given to the policy loaders says it holds a tokenizer."""
    from oat_jax.policy import load_policy
    from oat_jax.policy.policy import TokenPolicy
    from policy_helpers import save_tiny_oat, tiny_policy
    import train_helpers

    saved = tiny_policy(save_tiny_oat(str(tmp_path / "tok"))).save(str(tmp_path / "policy"))
    file = os.path.join(saved, "policy.json")
    meta = json.load(open(file))
    meta["config"]["width"] *= 2
    json.dump(meta, open(file, "w"), indent=1)
    os.remove(os.path.join(saved, integrity.MANIFEST_FILE))
    integrity.write_manifest(saved)
    with pytest.raises(ValueError, match=r"policy\.json does not match the saved params"):
        TokenPolicy.load(saved)

    from oat_jax.training.tokenizer.trainer import train_and_evaluate
    workdir = str(tmp_path / "tok_run")
    train_and_evaluate(train_helpers.tiny_config(train_helpers.write_tiny_dataset(str(tmp_path / "data"))), workdir)
    for loader in (load_policy, TokenPolicy.load):
        with pytest.raises(FileNotFoundError, match="checkpoint of a tokenizer run, not a policy"):
            loader(workdir)


def test_another_tokenizer_type_is_an_error_naming_the_file(saved, tmp_path):
    """action_tokenizer.json naming a type no loader knows (manifest rewritten): a ValueError naming the file and
    the known types, not a KeyError."""
    from oat_jax.action_tokenizers import load_action_tokenizer

    copy = _copy(saved, tmp_path)
    path = os.path.join(copy, "action_tokenizer.json")
    content = json.load(open(path))
    content["type"] = "vq_vae"
    json.dump(content, open(path, "w"))
    os.remove(os.path.join(copy, integrity.MANIFEST_FILE))
    integrity.write_manifest(copy)
    with pytest.raises(ValueError, match=r"action_tokenizer\.json names type 'vq_vae'; known types: \["):
        load_action_tokenizer(copy)
