"""The generated tables of docs/ (env options, agent hyperparameters) match the code: `scripts/docs_tables.py`."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "docs_tables.py"


def _docs_tables():
    spec = importlib.util.spec_from_file_location("docs_tables", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_generated_docs_are_current():
    completed = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=300,
                               cwd=ROOT)
    assert completed.returncode == 0, completed.stderr


def test_check_names_the_stale_file_and_the_fix_and_a_rewrite_fixes_it(tmp_path, capsys):
    docs_tables = _docs_tables()
    docs = tmp_path / "docs"
    docs.mkdir()
    for name in ("env.md", "agents.md"):
        shutil.copy(ROOT / "docs" / name, docs / name)
    env_md = docs / "env.md"
    env_md.write_text(env_md.read_text().replace("| `batch_size` | int | `32` |", "| `batch_size` | int | `64` |"))
    assert "`64`" in env_md.read_text()
    assert docs_tables.main(["--check", "--docs", str(docs)]) == 1
    error = capsys.readouterr().err
    assert str(env_md) in error and "python scripts/docs_tables.py" in error and "agents.md" not in error
    assert docs_tables.main(["--docs", str(docs)]) == 0
    assert "| `batch_size` | int | `32` |" in env_md.read_text()
    assert env_md.read_text() == (ROOT / "docs" / "env.md").read_text()
    assert docs_tables.main(["--check", "--docs", str(docs)]) == 0


def test_every_builtin_agent_and_env_option_has_a_documented_row():
    import dataclasses

    import agents
    from kd_gym import EnvConfig
    from kd_gym.config import dataclass_field_docs

    docs_tables = _docs_tables()
    env_block, agent_block = docs_tables.env_options(), docs_tables.agent_hyperparameters()
    for field in dataclasses.fields(EnvConfig):
        assert f"| `{field.name}` |" in env_block
    for name in agents.BUILTIN:
        agent_class, _ = agents.resolve("single:<k>" if name == "single" else name)
        assert agent_class.__qualname__ in agent_block
        docs = dataclass_field_docs(agent_class.Config)
        for field in dataclasses.fields(agent_class.Config):
            assert f"| `{field.name}` |" in agent_block
            assert docs[field.name].replace("|", "\\|") in agent_block, f"{name}.{field.name} has no documentation"
    assert "| `seed` | int | `0` |" in agent_block


def test_a_missing_marker_is_an_error_that_says_what_to_add(tmp_path):
    docs_tables = _docs_tables()
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "env.md").write_text("# The environments\n\nno markers here\n")
    shutil.copy(ROOT / "docs" / "agents.md", docs / "agents.md")
    with pytest.raises(SystemExit, match="<!-- env-options:start -->"):
        docs_tables.main(["--check", "--docs", str(docs)])
