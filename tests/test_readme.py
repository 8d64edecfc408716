"""The README's "Your own model" route, run as written: a torch_ecg whole model's state
dict -> mscnn's class -> save_checkpoint -> `compile build --checkpoint` with no preset."""

import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _blocks(section: str) -> tuple[str, str]:
    text = (ROOT / "README.md").read_text()
    part = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    python = re.search(r"```python\n(.*?)```", part, re.S).group(1)
    shell = re.search(r"```sh\n(.*?)```", part, re.S).group(1)
    return python, shell


@pytest.mark.slow
def test_the_readme_route_for_a_torch_ecg_whole_model_builds(tmp_path):
    python, shell = _blocks("Your own model")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch_ecg's imports warn about deprecated torch APIs
        from torch_ecg.model_configs import ECG_SEQ_LAB_NET_CONFIG
        from torch_ecg.models import ECG_SEQ_LAB_NET

    import copy

    config = copy.deepcopy(ECG_SEQ_LAB_NET_CONFIG)
    config.rnn.name = "none"
    trained = ECG_SEQ_LAB_NET(["N"], 1, config)  # torch_ecg's own class, as a user trains it
    torch.save(trained.state_dict(), tmp_path / "torch_ecg_model.pth")
    done = subprocess.run([sys.executable, "-c", python], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    [line] = [ln for ln in shell.splitlines() if ln.strip()]
    command = line.split("#")[0].split()
    assert command[:3] == [".venv/bin/python", "-m", "compile"]
    built = subprocess.run([sys.executable, *command[1:], "--out", "build", "--quiet"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=900,
                           env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert built.returncode == 0, built.stderr[-2000:]
    folder = line.split("#")[1].strip()
    manifest = tmp_path / folder / "manifest.json"
    assert manifest.is_file(), sorted(p.name for p in (tmp_path / "build").rglob("*"))[:20]
    assert '"attn"' in manifest.read_text() and '"detect"' in manifest.read_text()
