import numpy as np
import pytest

from flmk.data.records import AnnotationError
from flmk.data.sources.pts import read_pts, write_pts


def test_round_trip_is_zero_based(tmp_path):
    pts = np.array([[0.0, 0.0], [10.5, 20.25], [99.0, 1.0]])
    write_pts(tmp_path / "a.pts", pts)
    text = (tmp_path / "a.pts").read_text()
    assert "1.000 1.000" in text  # written 1-based
    np.testing.assert_allclose(read_pts(tmp_path / "a.pts"), pts, atol=1e-3)


def test_header_spacing_and_missing_trailing_newline(tmp_path):
    p = tmp_path / "b.pts"
    p.write_text("version: 1\nn_points:   2\n{\n1 2\n3.5 4.5\n}")
    np.testing.assert_allclose(read_pts(p), [[0, 1], [2.5, 3.5]])


@pytest.mark.parametrize(
    "body, line, match",
    [
        ("version: 1\nn_points: 2\n{\n1 2\nx 4\n}\n", 5, "two numbers"),
        ("version: 1\nn_points: 3\n{\n1 2\n3 4\n}\n", 6, "expected 3 points"),
        ("version: 1\nn_points: 2\n{\n1 2\n3 4\n5 6\n}\n", 6, "closing"),
    ],
)
def test_malformed_files_name_file_and_line(tmp_path, body, line, match):
    p = tmp_path / "bad.pts"
    p.write_text(body)
    with pytest.raises(AnnotationError, match=match) as err:
        read_pts(p)
    assert str(p) in str(err.value) and f"line {line}" in str(err.value)


def test_missing_header(tmp_path):
    p = tmp_path / "c.pts"
    p.write_text("{\n1 2\n}\n")
    with pytest.raises(AnnotationError, match="n_points"):
        read_pts(p)
