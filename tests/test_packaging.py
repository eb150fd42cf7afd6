"""`kernels/` ships as `batchcli.kernels` (importable from the editable install and from a built wheel), and
the fused CPU ops' C++ source ships with the package, since it is built on the user's machine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_editable_install_maps_kernels():
    import batchcli.kernels

    assert Path(batchcli.kernels.__file__).resolve().parent == ROOT / "kernels"


@pytest.mark.slow
def test_built_wheel_ships_kernels(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(ROOT)], check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("batchllm-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(tmp_path / "site"),
                    str(wheel)], check=True, capture_output=True)
    code = "import batchcli.kernels, batchcli.kernels.shared_prefix_attention as k; print(batchcli.kernels.__file__)"
    out = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(tmp_path / 'site')!r}); {code}"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().startswith(str(tmp_path / "site"))
    assert (tmp_path / "site" / "batchcli" / "engine" / "native" / "ops.cpp").is_file()  # built on first use
