"""Checksummed GAD save files: a flipped byte is an error naming the file, never other weights."""
from __future__ import annotations

import random

import pytest
import torch
from captum.attr import Saliency

from captum_gradflow import GADWrapper, SmallCNN
from captum_gradflow.gad import GADConfig, tensor_digest


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    model = SmallCNN(num_classes=2, channels=(4, 4, 4), hidden=(16, 8)).eval()
    x = torch.rand(24, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    y = torch.arange(24) % 2
    gad = GADWrapper(Saliency(model), n_support=2, steps=6, delta=(1.0, 2.0), batch_size=8, progress=False)
    gad.fit((x, y), pair=(0, 1))
    path = tmp_path_factory.mktemp("gad") / "gad.pt"
    gad.save(path)
    return model, gad, path, x


def _weights(gad):
    return [{k: v.clone() for k, v in m.state_dict().items()} for m in gad.support_models]


def test_round_trip_keeps_config_schedule_and_weights(saved):
    model, gad, path, x = saved
    loaded = GADWrapper.load(path, Saliency(model), progress=False)
    assert loaded.config == gad.config and loaded.config.delta == (1.0, 2.0)
    assert loaded.alphas.shape == (2, 2) and torch.equal(loaded.alphas, gad.alphas)
    for a, b in zip(_weights(loaded), _weights(gad)):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(loaded.attribute(x[:3], target=0), gad.attribute(x[:3], target=0))


def test_tensor_digest_sees_dtype_shape_and_every_byte():
    t = torch.arange(6, dtype=torch.float32)
    assert tensor_digest(t) == tensor_digest(t.clone())
    assert tensor_digest(t) != tensor_digest(t.reshape(2, 3))
    assert tensor_digest(t) != tensor_digest(t.double())
    u = t.clone()
    u.view(torch.int32)[3] ^= 1  # one bit of one float
    assert tensor_digest(t) != tensor_digest(u)


def test_flipped_weight_bytes_are_a_value_error_naming_the_file(saved, tmp_path):
    model, gad, path, _ = saved
    raw = bytearray(path.read_bytes())
    weight = gad.support_models[1].classifier[1].weight.detach().numpy().tobytes()
    at = raw.find(weight[:64])
    assert at > 0  # torch stores tensors uncompressed: the weight's bytes are in the file
    for i in range(at + 8, at + 12):
        raw[i] ^= 0xFF
    bad = tmp_path / "flipped.pt"
    bad.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"flipped\.pt is corrupt.*state_dicts\[1\]\.classifier\.1\.weight"):
        GADWrapper.load(bad, Saliency(model))


def test_random_byte_flips_never_load_other_weights(saved, tmp_path):
    model, gad, path, _ = saved
    original = path.read_bytes()
    rng = random.Random(0)
    outcomes = []
    for k in range(24):
        raw = bytearray(original)
        for i in rng.sample(range(len(raw)), 3):
            raw[i] ^= 1 << rng.randrange(8)
        bad = tmp_path / f"flip{k}.pt"
        bad.write_bytes(bytes(raw))
        try:
            loaded = GADWrapper.load(bad, Saliency(model), progress=False)
        except ValueError as err:
            assert str(bad) in str(err)
            outcomes.append("error")
            continue
        for a, b in zip(_weights(loaded), _weights(gad)):  # it loaded: then nothing changed
            assert all(torch.equal(a[key], b[key]) for key in a)
        assert loaded.config == gad.config and torch.equal(loaded.alphas, gad.alphas)
        outcomes.append("same")
    assert outcomes.count("error") >= 12  # most flips land in data the checksums cover


def test_edited_payload_without_new_checksums_is_refused(saved, tmp_path):
    model, _, path, _ = saved
    payload = torch.load(path, weights_only=True)
    payload["state_dicts"][0]["classifier.5.bias"] += 0.5
    edited = tmp_path / "edited.pt"
    torch.save(payload, edited)
    with pytest.raises(ValueError, match="corrupt.*classifier.5.bias"):
        GADWrapper.load(edited, Saliency(model))
    payload = torch.load(path, weights_only=True)
    payload["config"]["lr"] = 1.0
    torch.save(payload, edited)
    with pytest.raises(ValueError, match="corrupt.*configuration"):
        GADWrapper.load(edited, Saliency(model))
    del payload["checksums"]
    torch.save(payload, edited)
    with pytest.raises(ValueError, match="incomplete"):
        GADWrapper.load(edited, Saliency(model))


def test_loaded_wrapper_cannot_refit_for_another_model(saved):
    model, _, path, _ = saved
    loaded = GADWrapper.load(path, Saliency(model), progress=False)
    assert loaded.for_model(model) is loaded
    with pytest.raises(ValueError, match="keeps no fit data"):
        loaded.for_model(SmallCNN(num_classes=2, channels=(4, 4, 4), hidden=(16, 8)))
    assert GADConfig.from_dict(loaded.config.to_dict()) == loaded.config
