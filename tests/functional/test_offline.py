"""The engine loads and generates without touching the network, and the HTTP side never loads torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PROBE = r"""
import json, sys
events = []
NETWORK = {"socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr",
           "socket.sendto", "socket.sendmsg", "urllib.Request", "http.client.connect"}
def hook(event, args):
    # urllib3 binds ::1 port 0 at import to probe for IPv6: local, no traffic. Anything else counts.
    if event == "socket.bind" and args[1][0] in ("::1", "127.0.0.1") and args[1][1] == 0:
        return
    if event in NETWORK or event == "socket.bind":
        events.append(event)
        raise PermissionError("network use during model load: " + event)
sys.addaudithook(hook)
import os
from pathlib import Path
from zguard.engine.pipeline import DiffusersEngine
from zguard.engine import GenerationJob
engine = DiffusersEngine(Path(sys.argv[1]), model_id="z-image-turbo", device="auto", demo=True)
engine.load()
images = engine.generate(GenerationJob("网络 test", None, 32, 32, 2, 0), lambda: False)
import huggingface_hub.constants as hc
print(json.dumps({"events": events, "size": images[0].size, "hub_offline": hc.HF_HUB_OFFLINE,
                  "env": {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")},
                  "device": engine.info.device, "dtype": engine.info.dtype}))
"""


def test_load_and_generate_open_no_socket(demo_model_dir: Path) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "HF_HUB_OFFLINE": "0",
        "TRANSFORMERS_OFFLINE": "0",
        "HOME": str(demo_model_dir.parent),
    }
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(demo_model_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["events"] == []
    assert result["size"] == [32, 32]
    # Forced offline even though the environment said otherwise.
    assert result["hub_offline"] is True
    assert result["env"] == {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    # No GPU here: auto picks the CPU with float32.
    assert (result["device"], result["dtype"]) == ("cpu", "float32")


def test_missing_file_fails_instead_of_downloading(tmp_path: Path, demo_model_dir: Path) -> None:
    import shutil

    broken = tmp_path / "model"
    shutil.copytree(demo_model_dir, broken)
    (broken / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    probe = PROBE.replace("images = engine.generate", "raise SystemExit(0)\nimages = engine.generate")
    done = subprocess.run(
        [sys.executable, "-c", probe, str(broken)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode != 0
    assert "network use" not in done.stderr


def test_pickle_weights_are_refused(tmp_path: Path, demo_model_dir: Path) -> None:
    import shutil

    import torch
    from safetensors.torch import load_file

    model = tmp_path / "model"
    shutil.copytree(demo_model_dir, model)
    weights = model / "vae" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(weights), model / "vae" / "diffusion_pytorch_model.bin")
    weights.unlink()
    probe = PROBE.replace("images = engine.generate", "raise SystemExit(0)\nimages = engine.generate")
    done = subprocess.run(
        [sys.executable, "-c", probe, str(model)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode != 0
    assert "safetensors" in done.stderr.lower()


def test_http_side_never_imports_torch_or_diffusers() -> None:
    code = (
        "import sys, json\n"
        "import zguard.app.api, zguard.app.console, zguard.services.images, zguard.serve.lifecycle, zguard.cli.main, zguard.cli.docs\n"
        "print(json.dumps(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(done.stdout) == []


def test_probe_catches_a_lookup() -> None:
    """Control: the audit hook really sees and blocks network use, so an empty list means something."""
    probe = PROBE.replace("import os\n", "import os, socket\nsocket.getaddrinfo('example.invalid', 443)\n", 1)
    done = subprocess.run(
        [sys.executable, "-c", probe, "/nonexistent"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode != 0
    assert "network use during model load: socket.getaddrinfo" in done.stderr
