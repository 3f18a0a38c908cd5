"""cafe_tf.io: atomic writes and versioned JSON artifacts."""

import json
import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cafe_tf import io


class Boom(RuntimeError):
    pass


def _listing(folder):
    return sorted(os.listdir(folder))


# ----------------------------------------------------------------------------- atomic writes


def test_atomic_path_failure_leaves_no_file_and_no_temp_file(tmp_path):
    target = tmp_path / "widths.json"
    with pytest.raises(Boom):
        with io.atomic_path(target) as tmp:
            with open(tmp, "w") as f:
                f.write("half a fi")
            assert os.path.exists(tmp)
            raise Boom()
    assert _listing(tmp_path) == []


def test_atomic_path_failure_before_writing_leaves_nothing(tmp_path):
    with pytest.raises(Boom):
        with io.atomic_path(tmp_path / "model.keras"):
            raise Boom()
    assert _listing(tmp_path) == []


def test_atomic_path_failure_keeps_the_previous_file(tmp_path):
    target = tmp_path / "report.md"
    io.write_text(target, "old\n")
    with pytest.raises(Boom):
        with io.atomic_path(target) as tmp:
            with open(tmp, "w") as f:
                f.write("new, but broken")
            raise Boom()
    assert target.read_text() == "old\n"
    assert _listing(tmp_path) == ["report.md"]


def test_atomic_path_success_renames_and_cleans_up(tmp_path):
    target = tmp_path / "sub" / "dir" / "model.keras"  # missing folders are created
    with io.atomic_path(target) as tmp:
        # A temporary name beside the target, with its extension, not created yet (keras refuses
        # to overwrite), and hidden so a listing of finished artifacts never shows it.
        assert os.path.dirname(tmp) == str(target.parent)
        assert tmp.endswith(".keras")
        assert os.path.basename(tmp).startswith(".model.keras.")
        assert not os.path.exists(tmp)
        with open(tmp, "wb") as f:
            f.write(b"weights")
        assert not target.exists()  # nothing at the target until the block succeeds
    assert target.read_bytes() == b"weights"
    assert _listing(target.parent) == ["model.keras"]


def test_atomic_path_explicit_suffix(tmp_path):
    with io.atomic_path(tmp_path / "model", suffix=".tflite") as tmp:
        assert tmp.endswith(".tflite")
        open(tmp, "wb").close()
    assert _listing(tmp_path) == ["model"]


def test_atomic_path_block_that_writes_nothing_leaves_nothing(tmp_path):
    # os.replace of a missing temp file fails; the target must not appear.
    with pytest.raises(OSError):
        with io.atomic_path(tmp_path / "x.json"):
            pass
    assert _listing(tmp_path) == []


def test_write_bytes_and_text_overwrite(tmp_path):
    target = tmp_path / "f.txt"
    io.write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    io.write_text(target, "héllo")
    assert target.read_bytes() == "héllo".encode("utf-8")
    assert _listing(tmp_path) == ["f.txt"]


def test_write_json_numpy_values(tmp_path):
    target = tmp_path / "metrics.json"
    io.write_json(target, {"acc": np.float32(0.5), "widths": np.array([16, 32]), "n": np.int64(3)})
    assert json.loads(target.read_text()) == {"acc": 0.5, "widths": [16, 32], "n": 3}


def test_write_json_unserialisable_leaves_nothing(tmp_path):
    with pytest.raises(TypeError, match="object is not JSON serialisable"):
        io.write_json(tmp_path / "bad.json", {"x": object()})
    assert _listing(tmp_path) == []


# ----------------------------------------------------------------------------- artifacts


def test_artifact_round_trip(tmp_path):
    path = tmp_path / "widths.json"
    payload = {"model": "resnet20", "widths": [16, 24, 32], "macs": 40.5e6, "meta": {"seed": 0}}
    io.write_artifact(path, "widths", 2, payload)
    on_disk = json.loads(path.read_text())
    assert on_disk["schema"] == "widths" and on_disk["schema_version"] == 2
    got = io.read_artifact(path, "widths", versions=(1, 2), required=("model", "widths"))
    assert got == {"schema": "widths", "schema_version": 2, **payload}
    assert _listing(tmp_path) == ["widths.json"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20,
)


@given(payload=st.dictionaries(st.text().filter(lambda k: k not in ("schema", "schema_version")), json_values,
                               max_size=6))
def test_artifact_round_trip_any_payload(tmp_path_factory, payload):
    path = tmp_path_factory.mktemp("art") / "a.json"
    io.write_artifact(path, "kind", 1, payload)
    got = io.read_artifact(path, "kind", versions=(1,), required=tuple(payload))
    assert got == {"schema": "kind", "schema_version": 1, **payload}


def _write_raw(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_read_artifact_missing_file_names_it(tmp_path):
    path = tmp_path / "nowhere" / "widths.json"
    with pytest.raises(io.ArtifactError, match="does not exist") as e:
        io.read_artifact(path, "widths", versions=(1,))
    assert str(path) in str(e.value)


def test_read_artifact_folder_is_not_a_file(tmp_path):
    with pytest.raises(io.ArtifactError, match="does not exist") as e:
        io.read_artifact(tmp_path, "widths", versions=(1,))
    assert str(tmp_path) in str(e.value)


@pytest.mark.parametrize("text", ["", "{", '{"schema": "widths",}', "not json"])
def test_read_artifact_bad_json_names_the_file(tmp_path, text):
    path = _write_raw(tmp_path / "widths.json", text)
    with pytest.raises(io.ArtifactError, match="is not valid JSON") as e:
        io.read_artifact(path, "widths", versions=(1,))
    assert str(path) in str(e.value)


def test_read_artifact_binary_garbage_names_the_file(tmp_path):
    path = tmp_path / "widths.json"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(io.ArtifactError, match="is not valid JSON") as e:
        io.read_artifact(path, "widths", versions=(1,))
    assert str(path) in str(e.value)


def test_read_artifact_not_an_object(tmp_path):
    path = _write_raw(tmp_path / "widths.json", "[1, 2]")
    with pytest.raises(io.ArtifactError, match="must hold a JSON object, found list") as e:
        io.read_artifact(path, "widths", versions=(1,))
    assert str(path) in str(e.value)


def test_read_artifact_wrong_schema(tmp_path):
    path = tmp_path / "widths.json"
    io.write_artifact(path, "benchmark", 1, {})
    with pytest.raises(io.ArtifactError, match="has schema 'benchmark'; expected 'widths'") as e:
        io.read_artifact(path, "widths", versions=(1,))
    assert str(path) in str(e.value)


def test_read_artifact_no_schema(tmp_path):
    path = _write_raw(tmp_path / "widths.json", '{"widths": [1]}')
    with pytest.raises(io.ArtifactError, match="has schema None") as e:
        io.read_artifact(path, "widths", versions=(1,))
    assert str(path) in str(e.value)


def test_read_artifact_wrong_version(tmp_path):
    path = tmp_path / "widths.json"
    io.write_artifact(path, "widths", 3, {"widths": [1]})
    with pytest.raises(io.ArtifactError, match=r"has schema_version 3; this cafe-tf reads version 4 only: re-run "
                       "the stage that writes it to write it again") as e:
        io.read_artifact(path, "widths", versions=(4,))
    assert str(path) in str(e.value)
    with pytest.raises(io.ArtifactError, match=r"widths file .* reads version 4 only: re-run cafe-tf search to write"):
        io.read_artifact(path, "widths", versions=(4,), writer="cafe-tf search")


def test_read_artifact_missing_keys_are_named(tmp_path):
    path = tmp_path / "widths.json"
    io.write_artifact(path, "widths", 1, {"model": "resnet20"})
    with pytest.raises(io.ArtifactError, match=r"lacks required keys \['widths', 'macs'\]") as e:
        io.read_artifact(path, "widths", versions=(1,), required=("model", "widths", "macs"))
    assert str(path) in str(e.value)


@pytest.mark.parametrize("exc", [ValueError, TypeError, KeyError])
def test_read_artifact_validate_rejection_names_the_file(tmp_path, exc):
    path = tmp_path / "widths.json"
    io.write_artifact(path, "widths", 1, {"widths": [-1]})

    def validate(obj):
        if min(obj["widths"]) < 1:
            raise exc("widths must be positive")

    with pytest.raises(io.ArtifactError, match="is invalid: .*widths must be positive") as e:
        io.read_artifact(path, "widths", versions=(1,), validate=validate)
    assert str(path) in str(e.value)


def test_read_artifact_validate_accepts(tmp_path):
    path = tmp_path / "widths.json"
    io.write_artifact(path, "widths", 1, {"widths": [8]})
    seen = []
    got = io.read_artifact(path, "widths", versions=(1,), validate=seen.append)
    assert seen == [got] and got["widths"] == [8]


def test_artifact_error_is_a_value_error():
    assert issubclass(io.ArtifactError, ValueError)
