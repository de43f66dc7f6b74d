from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from slimkit.data import Dataset, DataSpec, check_fits, load_data, synthetic
from slimkit.errors import DataError
from slimkit.hf import TEXT_INPUTS
from slimkit.model import InputSpec, TorchModel
from tests.models import tiny_cnn, tiny_mlp


@pytest.fixture(scope="module")
def mlp() -> TorchModel:
    return tiny_mlp(width=16)


@pytest.fixture
def text_model(minilm_path: Path) -> TorchModel:
    # the module is never run: loading texts only reads the signature and the tokenizer
    return TorchModel(tiny_mlp(width=16).module, list(TEXT_INPUTS), tokenizer=str(minilm_path))


# --- Dataset ------------------------------------------------------------------------------

def test_dataset_length_mismatch() -> None:
    with pytest.raises(DataError, match=r"differ in length \(\[3, 4\]\)"):
        Dataset({"a": np.zeros((3, 2)), "b": np.zeros((4, 2))})
    with pytest.raises(DataError, match="mine"):
        Dataset({"a": np.zeros((3, 2))}, labels=np.zeros(2), name="mine")


def test_dataset_batches_head_and_fingerprint() -> None:
    x = np.arange(10 * 3, dtype=np.float32).reshape(10, 3)
    ds = Dataset({"x": x}, np.arange(10))
    assert len(ds) == 10
    parts = list(ds.batches(4))
    assert [len(p["x"]) for p in parts] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([p["x"] for p in parts]), x)
    head = ds.head(3)
    assert len(head) == 3 and head.labels is not None and list(head.labels) == [0, 1, 2]
    assert ds.fingerprint() == Dataset({"x": x.copy()}, np.arange(10)).fingerprint()
    assert ds.fingerprint() != head.fingerprint()
    assert ds.fingerprint() != Dataset({"x": x}, np.arange(10)[::-1].copy()).fingerprint()
    assert ds.fingerprint() != Dataset({"x": x}).fingerprint()
    assert ds.fingerprint() != Dataset({"y": x}, np.arange(10)).fingerprint()


def test_save_npz_round_trip(tmp_path: Path, mlp: TorchModel) -> None:
    ds = Dataset({"x": np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)},
                 np.arange(5))
    ds.save_npz(tmp_path / "d.npz")
    back = load_data(DataSpec(source="npz", path=str(tmp_path / "d.npz")), mlp)
    assert back.fingerprint() == ds.fingerprint()


# --- npz ----------------------------------------------------------------------------------

def test_npz_with_labels(tmp_path: Path, mlp: TorchModel) -> None:
    x = np.random.default_rng(0).standard_normal((6, 16))  # float64 on disk
    np.savez(tmp_path / "d.npz", x=x, labels=np.arange(6))
    ds = load_data(DataSpec(source="npz", path=str(tmp_path / "d.npz")), mlp)
    assert ds.inputs["x"].dtype == np.float32  # cast to the model's dtype
    np.testing.assert_allclose(ds.inputs["x"], x, rtol=1e-6)
    assert ds.labels is not None and list(ds.labels) == list(range(6))
    assert ds.name == "d.npz"


def test_npz_without_labels_and_limit(tmp_path: Path, mlp: TorchModel) -> None:
    np.savez(tmp_path / "d.npz", x=np.zeros((6, 16), np.float32), extra=np.zeros(6))
    ds = load_data(DataSpec(source="npz", path=str(tmp_path / "d.npz"), limit=4), mlp)
    assert ds.labels is None
    assert list(ds.inputs) == ["x"]  # arrays the model does not take are left out
    assert len(ds) == 4


def test_npz_missing_input_named(tmp_path: Path, mlp: TorchModel) -> None:
    np.savez(tmp_path / "d.npz", features=np.zeros((3, 16), np.float32))
    with pytest.raises(DataError, match=r"no array for model input\(s\) x "):
        load_data(DataSpec(source="npz", path=str(tmp_path / "d.npz")), mlp)


def test_npz_wrong_feature_size(tmp_path: Path, mlp: TorchModel) -> None:
    np.savez(tmp_path / "d.npz", x=np.zeros((3, 15), np.float32))
    with pytest.raises(DataError, match="axis 1 is 15, the model expects 16"):
        load_data(DataSpec(source="npz", path=str(tmp_path / "d.npz")), mlp)


def test_npz_wrong_rank(tmp_path: Path, mlp: TorchModel) -> None:
    np.savez(tmp_path / "d.npz", x=np.zeros((3, 4, 4), np.float32))
    with pytest.raises(DataError, match="has 3 dims"):
        load_data(DataSpec(source="npz", path=str(tmp_path / "d.npz")), mlp)


def test_npz_not_readable(tmp_path: Path, mlp: TorchModel) -> None:
    (tmp_path / "d.npz").write_bytes(b"this is not a zip file")
    with pytest.raises(DataError, match=r"not a readable \.npz"):
        load_data(DataSpec(source="npz", path=str(tmp_path / "d.npz")), mlp)


def test_missing_path(tmp_path: Path, mlp: TorchModel) -> None:
    with pytest.raises(DataError, match="no such file"):
        load_data(DataSpec(source="npz", path=str(tmp_path / "absent.npz")), mlp)


# --- images -------------------------------------------------------------------------------

def _write_images(root: Path, counts: dict[str, int], size: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True)
        for k in range(n):
            pixels = rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{k}.png")
    (root / "cat" / "notes.txt").write_text("not an image")


@pytest.mark.parametrize("channels", [3, 1])
def test_image_folder(tmp_path: Path, channels: int) -> None:
    _write_images(tmp_path, {"cat": 2, "dog": 3}, size=(12, 10))
    model = tiny_cnn(channels=channels, size=8)
    ds = load_data(DataSpec(source="images", path=str(tmp_path)), model)
    x = ds.inputs["image"]
    assert x.shape == (5, channels, 8, 8)
    assert x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0 and x.std() > 0.1
    assert ds.labels is not None and list(ds.labels) == [0, 0, 1, 1, 1]  # sorted class folders


def test_image_pixels_scaled_and_channel_first(tmp_path: Path) -> None:
    (tmp_path / "only").mkdir()
    pixels = np.zeros((8, 8, 3), np.uint8)
    pixels[..., 0] = 255  # pure red
    Image.fromarray(pixels).save(tmp_path / "only" / "red.png")
    ds = load_data(DataSpec(source="images", path=str(tmp_path)), tiny_cnn())
    x = ds.inputs["image"][0]
    np.testing.assert_allclose(x[0], 1.0)
    np.testing.assert_allclose(x[1:], 0.0)


def test_image_folder_needs_static_shape(tmp_path: Path, mlp: TorchModel) -> None:
    _write_images(tmp_path, {"cat": 1}, size=(8, 8))
    with pytest.raises(DataError, match=r"\[batch, C, H, W\]"):
        load_data(DataSpec(source="images", path=str(tmp_path)), mlp)


def test_empty_image_folder(tmp_path: Path) -> None:
    (tmp_path / "cat").mkdir()
    with pytest.raises(DataError, match="no images found"):
        load_data(DataSpec(source="images", path=str(tmp_path)), tiny_cnn())


# --- text ---------------------------------------------------------------------------------

def test_jsonl_texts_with_labels(tmp_path: Path, text_model: TorchModel) -> None:
    rows = [{"text": "a short sentence", "label": 1}, {"text": "another one", "label": 0},
            {"text": "the third and last sentence of this file", "label": 1}]
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    ds = load_data(DataSpec(source="text", path=str(path), max_length=12), text_model)
    assert set(ds.inputs) == {"input_ids", "attention_mask"}
    ids, mask = ds.inputs["input_ids"], ds.inputs["attention_mask"]
    assert ids.shape == mask.shape == (3, 12)
    assert ids.dtype == mask.dtype == np.int64
    assert (ids[:, 0] == 101).all()  # [CLS]
    # "another one" is [CLS] another one [SEP]: four tokens, then padding
    assert mask[1].tolist() == [1] * 4 + [0] * 8
    assert (ids[1, 4:] == 0).all()
    assert mask[2].sum() > mask[0].sum() > mask[1].sum()
    assert ds.labels is not None and ds.labels.tolist() == [1, 0, 1]


def test_jsonl_custom_fields_and_missing_labels(tmp_path: Path, text_model: TorchModel) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"body": "hello world", "y": 3}) + "\n" +
                    json.dumps({"body": "no label here"}) + "\n")
    spec = DataSpec(source="text", path=str(path), text_field="body", label_field="y",
                    max_length=8)
    ds = load_data(spec, text_model)
    assert len(ds) == 2
    assert ds.labels is None  # only some rows have one


def test_jsonl_bad_line(tmp_path: Path, text_model: TorchModel) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"other": 1}) + "\n")
    with pytest.raises(DataError, match=r"t\.jsonl:2: expected a JSON object with field 'text'"):
        load_data(DataSpec(source="text", path=str(path)), text_model)


def test_txt_texts(tmp_path: Path, text_model: TorchModel) -> None:
    path = tmp_path / "t.txt"
    path.write_text("first line\n\n   \nsecond line is longer than the first\n")
    ds = load_data(DataSpec(source="text", path=str(path), max_length=16), text_model)
    assert ds.inputs["input_ids"].shape == (2, 16)
    assert ds.labels is None
    assert ds.inputs["attention_mask"][1].sum() > ds.inputs["attention_mask"][0].sum()


def test_texts_need_a_tokenizer(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("hello\n")
    model = TorchModel(tiny_mlp(width=16).module, list(TEXT_INPUTS))
    with pytest.raises(DataError, match="tokenizer"):
        load_data(DataSpec(source="text", path=str(path)), model)


def test_empty_text_file(tmp_path: Path, text_model: TorchModel) -> None:
    path = tmp_path / "t.txt"
    path.write_text("\n\n")
    with pytest.raises(DataError, match="no texts"):
        load_data(DataSpec(source="text", path=str(path)), text_model)


# --- factory and synthetic ----------------------------------------------------------------

def test_factory(mlp: TorchModel) -> None:
    spec = DataSpec(source="factory", factory="tests.models:mlp_data", kwargs={"n": 7})
    ds = load_data(spec, mlp)
    assert len(ds) == 7 and ds.name == "mlp_data"
    assert ds.labels is not None and len(ds.labels) == 7


def test_factory_returning_something_else(mlp: TorchModel) -> None:
    spec = DataSpec(source="factory", factory="tests.models:not_a_dataset")
    with pytest.raises(DataError, match=r"returned dict, not slimkit\.Dataset"):
        load_data(spec, mlp)


def test_factory_that_does_not_exist(mlp: TorchModel) -> None:
    from slimkit.errors import SlimkitError

    spec = DataSpec(source="factory", factory="tests.models:no_such_data")
    with pytest.raises(SlimkitError, match="has no attribute 'no_such_data'"):
        load_data(spec, mlp)


def test_synthetic() -> None:
    inputs = [
        InputSpec(name="x", dtype="float32", shape=["batch", 4]),
        *TEXT_INPUTS,
        InputSpec(name="pixels", dtype="uint8", shape=["batch", "h", 2]),
    ]
    ds = synthetic(inputs, 5, {"sequence": 7})
    assert ds.inputs["x"].shape == (5, 4) and ds.inputs["x"].dtype == np.float32
    assert ds.inputs["input_ids"].shape == (5, 7) and ds.inputs["input_ids"].dtype == np.int64
    assert ((ds.inputs["input_ids"] >= 1000) & (ds.inputs["input_ids"] < 2000)).all()
    assert (ds.inputs["attention_mask"] == 1).all()
    assert ds.inputs["pixels"].shape == (5, 128, 2)  # unnamed dynamic axes default to 128
    assert ds.labels is None
    check_fits(ds, inputs)
    assert synthetic(inputs, 5, {"sequence": 7}).fingerprint() == ds.fingerprint()
    assert synthetic(inputs, 5, {"sequence": 7}, seed=1).fingerprint() != ds.fingerprint()


def test_data_spec_validation() -> None:
    with pytest.raises(ValueError, match="needs the field 'path'"):
        DataSpec(source="images")
    with pytest.raises(ValueError, match="greater than 0"):
        DataSpec(source="npz", path="x", limit=0)
    with pytest.raises(ValueError, match=r"unknown example 'mnist' .known: minilm, digits."):
        DataSpec(source="example", name="mnist")


# --- bundled examples are checked when the recipe is read ---------------------------------

def test_example_split_is_checked_when_the_spec_is_made() -> None:
    with pytest.raises(ValueError, match=r"example 'digits' has no split 'validation' "
                                         r"\(it has: test, train, calibration\)"):
        DataSpec(source="example", name="digits", split="validation")
    assert DataSpec(source="example", name="minilm", split="all").split == "all"


def test_example_table_matches_the_examples() -> None:
    from slimkit.examples import SPLITS, digits

    assert set(SPLITS["digits"]) == set(digits._split_indices(50, np.arange(50) % 10))
    with pytest.raises(DataError, match="unknown split 'nope'"):
        digits.load_data("nope")


def test_recipe_with_an_unknown_split_fails_to_load() -> None:
    from slimkit.config import parse_recipe
    from slimkit.errors import ConfigError

    raw = {"name": "r", "model": {"source": "slimkit.examples.digits:load_model"},
           "data": {"source": "example", "name": "digits", "split": "valid"},
           "candidates": [{"name": "torch", "runtime": "torch"}]}
    with pytest.raises(ConfigError, match="has no split 'valid'") as info:
        parse_recipe(raw)
    assert "\n" not in str(info.value)


# --- factories get the split and limit the recipe asks for --------------------------------

def by_split(split: str = "test", n: int = 6, limit: int | None = None) -> Dataset:
    """A factory whose rows say which split and limit it was asked for."""
    x = np.full((n, 16), {"test": 0.0, "calibration": 1.0}[split], np.float32)
    return Dataset({"x": x}, np.full(n, -1 if limit is None else limit), f"by-{split}")


def splitless(n: int = 6) -> Dataset:
    return Dataset({"x": np.zeros((n, 16), np.float32)}, None, "splitless")


def anything(**kwargs: object) -> Dataset:
    return Dataset({"x": np.zeros((4, 16), np.float32)}, np.array([len(kwargs)] * 4), "any")


def test_factory_receives_split_and_limit(mlp: TorchModel) -> None:
    spec = DataSpec(source="factory", factory="tests.test_data:by_split", split="calibration",
                    limit=4, kwargs={"n": 8})
    ds = load_data(spec, mlp)
    assert ds.name == "by-calibration" and (ds.inputs["x"] == 1.0).all()
    assert len(ds) == 4 and ds.labels is not None and (ds.labels == 4).all()
    ds = load_data(DataSpec(source="factory", factory="tests.test_data:by_split"), mlp)
    assert ds.name == "by-test" and len(ds) == 6 and ds.labels is not None
    assert (ds.labels == -1).all()  # no limit set: the factory's own default stands
    # **kwargs takes both split and limit
    ds = load_data(DataSpec(source="factory", factory="tests.test_data:anything", limit=2), mlp)
    assert ds.labels is not None and list(ds.labels) == [2, 2] and len(ds) == 2


def test_calibration_split_of_a_factory_is_not_silently_dropped(mlp: TorchModel) -> None:
    # the split is taken from the spec, as a calibration spec gets it: explicit, or not the
    # default, and the factory cannot take it
    for spec in (DataSpec(source="factory", factory="tests.test_data:splitless", split="test"),
                 DataSpec(source="factory", factory="tests.test_data:splitless").model_copy(
                     update={"split": "calibration"})):
        with pytest.raises(DataError, match=r"^tests\.test_data:splitless: takes no `split` "
                                            r"parameter") as info:
            load_data(spec, mlp)
        assert "\n" not in str(info.value)
    # a split left at its default is not asked for; the limit still applies afterwards
    ds = load_data(DataSpec(source="factory", factory="tests.test_data:splitless", limit=3), mlp)
    assert len(ds) == 3


def test_factory_kwargs_it_cannot_take(mlp: TorchModel) -> None:
    with pytest.raises(DataError, match=r"splitless: takes no parameter.s. size"):
        load_data(DataSpec(source="factory", factory="tests.test_data:splitless",
                           kwargs={"size": 3}), mlp)
    with pytest.raises(DataError, match="split is given both as a field and in kwargs"):
        load_data(DataSpec(source="factory", factory="tests.test_data:by_split",
                           split="calibration", kwargs={"split": "test"}), mlp)


# --- bad values are refused, for every source ---------------------------------------------

def test_nan_and_infinite_rows_are_counted(tmp_path: Path, mlp: TorchModel) -> None:
    x = np.zeros((64, 16), np.float64)
    x[[3, 10], 2] = np.nan
    x[10, 5] = np.inf  # same row twice: counted once
    x[40, 0] = -np.inf
    np.savez(tmp_path / "data.npz", x=x)
    with pytest.raises(DataError) as info:
        load_data(DataSpec(source="npz", path=str(tmp_path / "data.npz")), mlp)
    assert str(info.value) == "data.npz: input 'x' has NaN or infinite values in 3 of 64 rows"


def test_nan_from_a_factory_is_refused() -> None:
    x = np.ones((5, 16), np.float32)
    x[0, 0] = np.nan
    with pytest.raises(DataError, match="mine: input 'x' has NaN or infinite values in 1 of 5"):
        check_fits(Dataset({"x": x}, None, "mine"), tiny_mlp(width=16).inputs)


def test_nan_limited_away_is_accepted(tmp_path: Path, mlp: TorchModel) -> None:
    x = np.zeros((6, 16), np.float32)
    x[5] = np.nan
    np.savez(tmp_path / "d.npz", x=x)
    assert len(load_data(DataSpec(source="npz", path=str(tmp_path / "d.npz"), limit=5), mlp)) == 5


def test_empty_data_is_refused(tmp_path: Path, mlp: TorchModel) -> None:
    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 16), np.float32))
    with pytest.raises(DataError, match=r"^empty\.npz: has no rows$"):
        load_data(DataSpec(source="npz", path=str(tmp_path / "empty.npz")), mlp)
    with pytest.raises(DataError, match="has no rows"):
        load_data(DataSpec(source="factory", factory="tests.test_data:splitless",
                           kwargs={"n": 0}), mlp)


def test_npz_of_strings_or_objects_is_refused(tmp_path: Path, mlp: TorchModel) -> None:
    np.savez(tmp_path / "s.npz", x=np.array([["a"] * 16] * 3))
    with pytest.raises(DataError, match=r"^s\.npz: input 'x' holds <U1 values, not numbers$"):
        load_data(DataSpec(source="npz", path=str(tmp_path / "s.npz")), mlp)
    np.savez(tmp_path / "o.npz", x=np.array([[{"a": 1}] * 16] * 3, dtype=object))
    with pytest.raises(DataError, match=r"o\.npz: array 'x' is not readable as numbers") as info:
        load_data(DataSpec(source="npz", path=str(tmp_path / "o.npz")), mlp)
    assert "\n" not in str(info.value)
    with pytest.raises(DataError, match="holds object values, not numbers"):
        check_fits(Dataset({"x": np.array([[None] * 16], dtype=object)}, None, "objs"),
                   mlp.inputs)


def test_a_single_array_is_not_an_npz(tmp_path: Path, mlp: TorchModel) -> None:
    np.save(tmp_path / "x.npy", np.zeros((3, 16), np.float32))
    (tmp_path / "x.npy").rename(tmp_path / "x.npz")
    with pytest.raises(DataError, match=r"a single array, not an \.npz file"):
        load_data(DataSpec(source="npz", path=str(tmp_path / "x.npz")), mlp)
