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
    import hashlib
    import json
    import sys

    monkeypatch.setenv("RECOGNIZE_ORACLE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(oracle_env.WHEELS, raising=False)
    from_index = oracle_env.oracle_dir()
    # unset, the key is what it was before the variable existed: every cached environment stays valid
    before = json.dumps([sys.version, sys.prefix, oracle_env.REQUIREMENTS, oracle_env._installed()]).encode()
    assert from_index.name == f"groundingdino-{hashlib.sha256(before).hexdigest()[:12]}"
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
    with pytest.raises(oracle_env.OracleUnavailable, match="No module named 'groundingdino'"):
        oracle_env.oracle_python()
    root = oracle_env.oracle_dir()
    assert (root / "bin" / "python").is_file() and not (root / ".ready").exists()


@pytest.mark.subprocess
def test_an_oracle_built_from_inside_a_venv_sees_that_venvs_packages_after_its_own(tmp_path):
    """`--system-site-packages` shows the base interpreter's packages, not those of a venv the tests run in
    (a user's `.venv`, a GPU image's): the oracle then lacked torch. A .pth adds them, after its own.
    Here: a venv with a module of its own builds an oracle-like venv the way `oracle_python` does."""
    import subprocess
    import sys

    def venv(root: Path, python: str) -> Path:
        subprocess.run([python, "-m", "venv", "--without-pip", "--system-site-packages", str(root)], check=True)
        return root / "bin" / "python"

    def run(python: Path, code: str) -> str:
        return subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout.strip()

    user = venv(tmp_path / "user-venv", sys.executable)
    user_site = Path(run(user, "import sysconfig; print(sysconfig.get_paths()['purelib'])"))
    (user_site / "only_in_the_user_venv.py").write_text("")
    editable = tmp_path / "checkout"  # as `pip install -e` does it: a .pth in site-packages naming the source
    editable.mkdir()
    (editable / "installed_editable.py").write_text("")
    (user_site / "__editable__.checkout.pth").write_text(f"{editable}\n")
    hooked = tmp_path / "hooked-checkout"  # pip's other editable form (this project's): an import hook
    hooked.mkdir()
    (hooked / "installed_by_a_hook.py").write_text("")
    finder = "__editable___hooked_finder"
    (user_site / f"{finder}.py").write_text(f"import sys\ndef install():\n    sys.path.append({str(hooked)!r})\n")
    (user_site / "__editable__.hooked.pth").write_text(f"import {finder}; {finder}.install()\n")
    oracle = tmp_path / "oracle"
    run(user, f"import sys; sys.path.insert(0, {str(Path(oracle_env.__file__).parent)!r}); import oracle_env, subprocess, "
              f"pathlib; subprocess.run([sys.executable, '-m', 'venv', '--without-pip', '--system-site-packages', "
              f"{str(oracle)!r}], check=True); oracle_env._see_this_environment(pathlib.Path({str(oracle)!r}) / 'bin' / 'python')")
    python = oracle / "bin" / "python"
    run(python, "import only_in_the_user_venv, installed_editable, installed_by_a_hook")
    paths = run(python, "import sys; print('\\n'.join(sys.path))").splitlines()
    own = next(i for i, path in enumerate(paths) if path.startswith(str(oracle)) and path.endswith("site-packages"))
    assert str(user_site) in paths[own + 1:]


def test_outside_a_venv_nothing_is_added(tmp_path, monkeypatch):
    import sys

    monkeypatch.setattr(sys, "prefix", sys.base_prefix)
    oracle_env._see_this_environment(tmp_path / "no-python")  # would fail if it ran anything
