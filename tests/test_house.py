"""The house stays low and its rooms small (issue 14, CONVENTIONS.md §1): checked on every run."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("house", ROOT / "tools" / "house.py")
house = importlib.util.module_from_spec(spec)
sys.modules["house"] = house
spec.loader.exec_module(house)


def test_at_most_six_floors_and_config_at_the_bottom():
    report = house.report()
    assert report["floors"] <= 6, report["by_floor"]
    assert "config" in report["by_floor"][1] and "llm" in report["by_floor"][1]
    graph = report["graph"]
    assert graph["config"] == [] and graph["explain"] == []  # maps need only Keras + tf-keras-vis
    for stage in ("train", "evaluate", "predict", "saliency", "export", "oodeval"):  # siblings
        assert not {"train", "evaluate", "predict"} - {stage} & set(graph[stage]), (
            stage,
            graph[stage],
        )


def test_no_module_over_400_lines_and_no_private_import():
    report = house.report()
    assert report["over_400"] == [], report["over_400"]
    assert report["private_imports"] == []


def test_no_repeated_block_of_six_lines():  # anywhere: the package, tests, benchmarks, tools
    assert house.repeated_blocks(also=[ROOT / d for d in ("tests", "benchmarks", "tools")]) == []


def test_the_checker_sees_cycles_floors_and_repeats(tmp_path):
    (tmp_path / "a.py").write_text("from btc import b\n")
    (tmp_path / "b.py").write_text("from btc.c import x\n")
    (tmp_path / "c.py").write_text("def _p():\n    return 1\n")
    assert house.floors(house.imports(tmp_path)) == {"a": 3, "b": 2, "c": 1}
    (tmp_path / "c.py").write_text("import btc.a\n")
    try:
        house.floors(house.imports(tmp_path))
    except ValueError as exc:
        assert "import cycle" in str(exc)
    else:
        raise AssertionError("cycle not detected")
    block = "".join(f"value_number_{i} = compute_something({i})\n" for i in range(6))
    (tmp_path / "a.py").write_text(block)
    (tmp_path / "b.py").write_text("x = 1\n" + block)
    assert house.repeated_blocks(tmp_path) == [["a.py:1", "b.py:2"]]
    (tmp_path / "more").mkdir()
    (tmp_path / "more" / "t.py").write_text(block)
    assert house.repeated_blocks(tmp_path, also=[tmp_path / "more"]) == [
        ["a.py:1", "b.py:2", "more/t.py:1"]
    ]
    (tmp_path / "b.py").write_text("from btc.a import _hidden\n")
    assert house.private_imports(tmp_path) == ["b.py: from btc.a import _hidden"]


def test_every_module_has_its_own_test_file():
    modules = sorted(p.stem for p in house.PACKAGE.glob("*.py") if p.stem != "__init__")
    missing = [m for m in modules if not (ROOT / "tests" / f"test_{m}.py").is_file()]
    assert not missing, f"btc modules without tests/test_<module>.py: {', '.join(missing)}"
