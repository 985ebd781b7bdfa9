import subprocess
import sys
from pathlib import Path


def test_core_imports_without_prefect_or_mlflow():
    """dae_core is the science: it must not need the orchestration stack."""
    code = (
        "import sys\n"
        "sys.modules['prefect'] = None\n"
        "sys.modules['mlflow'] = None\n"
        "import pkgutil, importlib, dae_core\n"
        "for module in pkgutil.iter_modules(dae_core.__path__):\n"
        "    importlib.import_module('dae_core.' + module.name)\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_importing_the_project_writes_nothing_in_the_working_directory(tmp_path):
    """No mkdir, database or tracking URI at import time."""
    workdir, home = tmp_path / "cwd", tmp_path / "home"
    workdir.mkdir()
    code = ("import importlib, pkgutil\n"
            "for package in ('dae_core', 'adapters', 'tasks', 'flows', 'dae_cli'):\n"
            "    root = importlib.import_module(package)\n"
            "    for module in pkgutil.walk_packages(root.__path__, package + '.'):\n"
            "        importlib.import_module(module.name)\n")
    subprocess.run([sys.executable, "-c", code], cwd=workdir, check=True,
                   env={"PYTHONPATH": str(Path(__file__).resolve().parents[1]), "HOME": str(home),
                        "PREFECT_HOME": str(home / "prefect")})
    assert list(workdir.iterdir()) == []
