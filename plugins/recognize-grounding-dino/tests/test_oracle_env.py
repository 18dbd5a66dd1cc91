"""The oracle environment built from a folder of wheels (`$RECOGNIZE_ORACLE_WHEELS`), for a machine
without the package index: its own cache key, and a clear refusal when the folder cannot give the
official code. (Built from the index it is exercised by every test that runs the official code.)"""

from __future__ import annotations

import zipfile
from pathlib import Path

import oracle_env
import pytest


def write_wheel(folder: Path, name: str = "not_groundingdino") -> Path:
    """A minimal valid wheel of one empty package (what pip needs to install it)."""
    dist = f"{name}-0.1.dist-info"
    files = {f"{name}/__init__.py": "",
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n",
             f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{dist}/RECORD"] = "".join(f"{path},,\n" for path in [*files, f"{dist}/RECORD"])
    path = folder / f"{name}-0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for member, text in files.items():
            wheel.writestr(member, text)
    return path


def test_a_folder_of_wheels_is_an_environment_of_its_own(tmp_path, monkeypatch):
    monkeypatch.setenv("RECOGNIZE_ORACLE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(oracle_env.WHEELS, raising=False)
    from_index = oracle_env.oracle_dir()
    folder = tmp_path / "wheels"
    folder.mkdir()
    write_wheel(folder)
    monkeypatch.setenv(oracle_env.WHEELS, str(folder))
    from_folder = oracle_env.oracle_dir()
    assert from_folder != from_index and from_folder.parent == from_index.parent
    command = oracle_env._install_command(Path("python"), Path("constraints.txt"))
    assert "--no-index" in command and "--no-deps" in command and command[-1].endswith(".whl")
    assert not set(oracle_env.REQUIREMENTS) & set(command)


def test_an_empty_folder_is_refused_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("RECOGNIZE_ORACLE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv(oracle_env.WHEELS, str(tmp_path))
    with pytest.raises(oracle_env.OracleUnavailable, match="holds no wheels"):
        oracle_env.oracle_python()


@pytest.mark.slow
@pytest.mark.subprocess
def test_wheels_without_the_official_code_give_no_environment(tmp_path, monkeypatch):
    """The wheels install, but the result cannot import rf-groundingdino: refused, and not marked
    ready (the next call tries again instead of running a broken oracle)."""
    monkeypatch.setenv("RECOGNIZE_ORACLE_HOME", str(tmp_path / "home"))
    folder = tmp_path / "wheels"
    folder.mkdir()
    write_wheel(folder)
    monkeypatch.setenv(oracle_env.WHEELS, str(folder))
    with pytest.raises(oracle_env.OracleUnavailable, match="groundingdino"):
        oracle_env.oracle_python()
    root = oracle_env.oracle_dir()
    assert (root / "bin" / "python").is_file() and not (root / ".ready").exists()
