"""The builders table in docs/models.md is computed, not copied: ``docs/models_table.py`` recomputes it.

Regenerate after changing a model: ``python docs/models_table.py --write``.
"""

from __future__ import annotations

import importlib.util
import pathlib

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "docs" / "models_table.py"


def _script():
    spec = importlib.util.spec_from_file_location("models_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_builders_table_is_current():
    table = _script()
    documented = table.documented_table()
    assert documented is not None, f"{table.DOC} lacks the {table.START} ... {table.END} block"
    assert documented == table.builders_table(), (
        "docs/models.md's builders table is stale; regenerate it with `python docs/models_table.py --write`"
    )


def test_write_replaces_only_the_table(tmp_path):
    table = _script()
    doc = tmp_path / "models.md"
    doc.write_text(f"before\n{table.START}\n| stale |\n{table.END}\nafter\n", encoding="utf-8")
    table.write_table(doc)
    text = doc.read_text(encoding="utf-8")
    assert text.startswith("before\n") and text.endswith("after\n") and "| stale |" not in text
    assert table.documented_table(doc) == table.builders_table()
