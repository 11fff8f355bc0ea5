"""queries.sql: every statement named and described, every name the code uses defined, and
none defined that nothing uses."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from jobq_core import sql
from jobq_core.queries import QUERIES, parse
from jobq_core.sql import Statements

CORE = Path(__file__).resolve().parents[1] / "jobq_core"


def _statement_names_used() -> set[str]:
    """Attributes read off a `Statements` in jobq_core (`st.x`, `self._st.x`,
    `x.statements.y`), names looked up in QUERIES, and the schema's manifests."""
    used: set[str] = set()
    for path in CORE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute):
                owner = node.value
                if (isinstance(owner, ast.Name) and owner.id == "st") or (
                        isinstance(owner, ast.Attribute) and owner.attr in ("_st", "statements")):
                    used.add(node.attr)
            elif (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name)
                  and node.value.id == "QUERIES" and isinstance(node.slice, ast.Constant)):
                used.add(node.slice.value)
    for steps in (*sql.MIGRATION_STEPS.values(), *sql.EARLY_STEPS.values(), sql.LEGACY_UPGRADE):
        used.update(steps)
    used.update(name for pairs in sql.EARLY_INDEXES.values() for _, name in pairs)
    return used


def test_every_statement_is_described() -> None:
    assert len(QUERIES) >= 20
    for query in QUERIES.values():
        assert query.description, f"{query.name} has no description"
        assert query.text and not query.text.startswith("--"), query.name


def test_every_name_the_code_uses_is_defined_and_every_statement_is_used() -> None:
    used = _statement_names_used()
    fields = {field.name for field in dataclasses.fields(Statements)}
    undefined = {name for name in used
                 if name not in QUERIES and name not in fields and not hasattr(Statements, name)}
    assert undefined == set()
    assert set(QUERIES) - used == set()


def test_a_name_given_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="twice"):
        parse("-- a --\n-- one\nSELECT 1\n\n-- a --\n-- two\nSELECT 2\n")


def test_descriptions_and_placeholders_stay_out_of_the_text() -> None:
    parsed = parse("preamble\n-- x --\n-- takes %(n)s\n--\n-- more\nSELECT %(n)s -- inline\n")
    assert parsed["x"].description == "takes %(n)s\n\nmore"
    assert parsed["x"].text == "SELECT %(n)s -- inline"


def test_the_history_conversion_makes_partitions_as_far_ahead_as_the_folds() -> None:
    assert f"{{ahead_fn}}({sql.HISTORY_AHEAD_DAYS}, " in QUERIES["convert_history"].text


def test_no_statement_is_shadowed_by_a_method_of_statements() -> None:
    assert {name for name in QUERIES if hasattr(Statements, name)} == set()


def test_every_statement_renders_with_what_it_is_given() -> None:
    st = Statements(sql.Names.parse("app.svti_jobs"))
    st.resolve("app", "jobq_app_svti_jobs_0123456789ab")
    in_schema = {name for steps in (*sql.MIGRATION_STEPS.values(), *sql.EARLY_STEPS.values(),
                                    sql.LEGACY_UPGRADE) for name in steps}
    for name in QUERIES.keys() - in_schema - {"index_drop"}:
        assert getattr(st, name), name
    for version in sql.MIGRATION_STEPS:
        assert all(st.migration(version))
    assert all(st.migration(1, "svti_jobs_id")) and all(st.early_steps(7))
    for pairs in sql.EARLY_INDEXES.values():
        for key, name in pairs:
            assert b"CONCURRENTLY" in st.build_index(name, concurrently=True)
            assert st.drop_index(key, concurrently=False)


def test_comment_lines_are_not_sent_but_in_a_function_body() -> None:
    parsed = parse("-- a --\n-- described\nSELECT 1\n  -- why\nFROM t\n\n"
                   "-- f --\n-- described\nCREATE FUNCTION f() AS $$\n-- kept\n$$\n")
    assert parsed["a"].text == "SELECT 1\nFROM t"
    assert "-- kept" in parsed["f"].text
    assert "--" not in QUERIES["claim_typed"].text
