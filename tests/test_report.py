"""Run report: Pareto front and the files it writes."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from cafe_tf.report import pareto_front, write_report


@given(st.lists(st.tuples(st.floats(0, 1e9), st.floats(0, 1)), min_size=1, max_size=40))
def test_pareto_front_is_undominated_and_complete(points):
    front = pareto_front(points)
    for c, s in front:
        assert not any((c2 <= c and s2 > s) or (c2 < c and s2 >= s) for c2, s2 in points)
    for c, s in points:  # every point is dominated by or equal to a front point
        assert any(fc <= c and fs >= s for fc, fs in front)
    assert [c for c, _ in front] == sorted(c for c, _ in front)


def test_write_report(tmp_path):
    rng = np.random.default_rng(0)
    cands = [{"macs": float(m), "score": float(rng.uniform(0.7, 0.9))} for m in rng.uniform(1e6, 4e7, 50)]
    path = write_report(
        tmp_path, "run", [{"stage": "retrain", "macs": 20_500_000, "accuracy": 0.912, "artifact": "m.keras"}],
        cands, {"macs": 2e7, "params": 123456, "score": 0.88}, [{"name": "uniform", "macs": 2e7, "score": 0.86}],
        [{"name": "g0", "size": 16, "width": 8}], [{"name": "cafenet", "macs": 2e7, "accuracy": 0.91}], 2.1e7,
    )
    text = open(path).read()
    assert "| retrain | 20.5M | – | 0.912 |" in text and "`m.keras`" in text and "| g0 | 16 | 8 | 50% |" in text
    png = (tmp_path / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md", "report.png"]  # no temp files left
