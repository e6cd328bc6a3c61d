"""Property tests: whatever a user types or a file holds, tensevae answers or refuses cleanly."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pipeline
from pipeline.errors import ModelLoadError, WordError
from pipeline.vocab import Vocab


@pytest.fixture(scope="module")
def model(tiny_run):
    return tiny_run[0].model


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.text(max_size=40))
def test_any_string_converts_or_is_refused_with_word_error(model, word):
    try:
        out = pipeline.convert(model, [word], "sp", "p")
    except WordError as e:
        assert isinstance(e, ValueError) and "\n" not in str(e)
    else:
        assert len(out) == 1 and set(out[0]) <= set(Vocab().chars)


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=30))
def test_vocab_round_trips(word):
    v = Vocab()
    assert v.decode(v.encode(word)) == word


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.data())
def test_mangled_model_bytes_fail_cleanly(model, data):
    blob = bytearray(pipeline.to_bytes(model))
    kind = data.draw(st.sampled_from(["truncate", "flip", "header"]))
    if kind == "truncate":
        blob = blob[: data.draw(st.integers(0, len(blob) - 1))]
    elif kind == "flip":
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] ^= data.draw(st.integers(1, 255))
    else:
        i = data.draw(st.integers(8, 200))
        blob[i] = data.draw(st.integers(0, 255))
    try:
        loaded = pipeline.from_bytes(bytes(blob))
    except ModelLoadError:
        return
    # A flip inside the weights can leave a valid file: it must then still be a usable model.
    assert len(pipeline.convert(loaded, ["walk"], "sp", "p")) == 1


def test_a_config_value_out_of_range_is_a_load_error(model, tmp_path):
    """A model whose config holds a value this version cannot build (here model.dropout
    1.1, which a flipped byte made of 0.1 once) is refused with one ModelLoadError line by
    both loaders, as a config file would be, not a ValueError from building the model."""
    import json

    from pipeline import artifacts, lite

    meta = artifacts.describe(model)
    meta["model"]["dropout"] = 1.1
    blob = artifacts._pack(model.state_dict(), {"tensevae": json.dumps(meta)})
    with pytest.raises(ModelLoadError, match=r"model\.dropout must lie in"):
        pipeline.from_bytes(blob)
    folder = artifacts.save(model, tmp_path / "m")
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match=r"model\.dropout must lie in"):
        artifacts.load(folder)
    with pytest.raises(ModelLoadError, match=r"model\.dropout must lie in"):
        lite.LiteModel.load(folder)


def test_urls_are_masked():
    from db.session import mask_url
    from workers.settings import redact

    assert mask_url("postgresql://me:s3cret@db:5432/x") == "postgresql://me:***@db:5432/x"
    assert "s3cret" not in redact("could not reach redis://:s3cret@host:6379/0 now")
    assert mask_url("sqlite:///tmp/x.sqlite") == "sqlite:///tmp/x.sqlite"
