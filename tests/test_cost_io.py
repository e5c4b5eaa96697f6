"""file:PATH loading, saving with class names, heatmaps, describe_cost."""
import json

import numpy as np
import pytest
import torch

from tllib_jtln.cost import build_cost, describe_cost, load_cost_file, save_cost
from tllib_jtln.errors import UserError

SOURCE = ["T-shirt", "Trouser", "Coat"]
TARGET = ["Pullover", "Dress"]


def one_line(exc_info):
    message = str(exc_info.value)
    assert "\n" not in message
    return message


def test_save_then_file_round_trip(tmp_path):
    matrix = torch.tensor([[0.2, 0.0], [1.0, 0.5], [0.1, 0.9]])
    paths = save_cost(matrix, SOURCE, TARGET, tmp_path / "run")
    assert {p.name for p in paths.values()} == {"cost.npy", "cost.json", "cost.png"}
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(paths["json"].read_text())["target_classes"] == TARGET
    loaded = build_cost(f"file:{paths['npy']}", source_classes=SOURCE, target_classes=TARGET)
    torch.testing.assert_close(loaded, matrix)
    doubled = tmp_path / "raw.npy"
    np.save(doubled, 2 * matrix.numpy())
    assert float(build_cost(f"file:{doubled}", num_source_classes=3, num_target_classes=2).max()) == 1.0
    raw = build_cost(f"file:{doubled}", num_source_classes=3, num_target_classes=2, normalize="none")
    torch.testing.assert_close(raw, 2 * matrix)


def test_file_rejects_a_wrong_shape_in_one_line(tmp_path):
    path = tmp_path / "m.npy"
    np.save(path, np.ones((2, 2)))
    with pytest.raises(UserError) as info:
        build_cost(f"file:{path}", num_source_classes=3, num_target_classes=2)
    assert "matrix is 2 x 2 but the task needs 3 x 2" in one_line(info)
    csv_path = tmp_path / "m.csv"
    csv_path.write_text("0.1,0.2,0.3\n0.4,0.5,0.6\n0.7,0.8,0.9\n")
    with pytest.raises(UserError) as info:
        build_cost(f"file:{csv_path}", num_source_classes=3, num_target_classes=2)
    assert "matrix is 3 x 3" in one_line(info)


def test_file_rejects_mismatched_class_names_in_one_line(tmp_path):
    save_cost(torch.ones(3, 2), ["T-shirt", "Coat", "Trouser"], TARGET, tmp_path)
    with pytest.raises(UserError) as info:
        build_cost(f"file:{tmp_path / 'cost.npy'}", source_classes=SOURCE, target_classes=TARGET)
    assert "source class 1 is 'Coat' in the file but 'Trouser' in the dataset" in one_line(info)
    csv_path = tmp_path / "named.csv"
    csv_path.write_text("source\\target,Pullover,Shirt\nT-shirt,0.1,0.2\nTrouser,0.3,0.4\nCoat,0.5,0.6\n")
    with pytest.raises(UserError) as info:
        build_cost(f"file:{csv_path}", source_classes=SOURCE, target_classes=TARGET)
    assert "target class 1 is 'Shirt' in the file but 'Dress'" in one_line(info)


def test_csv_with_names_is_parsed(tmp_path):
    csv_path = tmp_path / "named.csv"
    csv_path.write_text("source\\target,Pullover,Dress\nT-shirt,0.1,0.2\nTrouser,0.3,0.4\nCoat,0.5,0.8\n")
    cost = load_cost_file(csv_path, SOURCE, TARGET, expected_shape=(3, 2))
    torch.testing.assert_close(cost, torch.tensor([[0.1, 0.2], [0.3, 0.4], [0.5, 0.8]]))
    header_only = tmp_path / "header.csv"
    header_only.write_text("Pullover,Dress\n0.1,0.2\n0.3,0.4\n0.5,0.8\n")
    torch.testing.assert_close(load_cost_file(header_only, SOURCE, TARGET), cost)


@pytest.mark.parametrize("content, message", [
    ("0.1,0.2\n0.3\n", "line 2: 1 values, expected 2"),
    ("0.1,abc\n0.3,0.4\n", "line 1, column 2: 'abc' is not a number"),
    ("0.1,-0.2\n0.3,0.4\n", "negative entries"),
    ("", "empty"),
])
def test_bad_csv_files(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(UserError) as info:
        build_cost(f"file:{path}")
    assert message in one_line(info)


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(UserError, match="cost file not found"):
        build_cost(f"file:{tmp_path / 'nope.npy'}")
    with pytest.raises(UserError, match="needs a path"):
        build_cost("file:")
    (tmp_path / "m.txt").write_text("1")
    with pytest.raises(UserError, match="use .npy or .csv"):
        build_cost(f"file:{tmp_path / 'm.txt'}")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(UserError, match="not a numeric .npy"):
        build_cost(f"file:{tmp_path / 'obj.npy'}")


def test_large_heatmap_without_tick_labels(tmp_path):
    matrix = torch.rand(300, 80)
    paths = save_cost(matrix, [f"s{i}" for i in range(300)], None, tmp_path, stem="big")
    assert paths["png"].stat().st_size > 1000
    np.testing.assert_array_equal(np.load(paths["npy"]), matrix.numpy())


def test_describe_cost_lists_nearest_sources():
    matrix = torch.tensor([[0.2, 0.0], [1.0, 0.5], [0.1, 0.9]])
    lines = describe_cost(matrix, SOURCE, TARGET, n=2).splitlines()
    assert lines[0].startswith("Pullover <- Coat 0.100, T-shirt 0.200")
    assert lines[1].startswith("Dress    <- T-shirt 0.000, Trouser 0.500")
