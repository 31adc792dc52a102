"""Start the Streamlit explorer (`workbench app`, `make app`).

    from apps.app_launcher import serve
    serve()                                   # http://127.0.0.1:8501, localhost only
    serve(host="0.0.0.0", port=8600)          # reachable from other machines: opt in explicitly

Binds 127.0.0.1 unless told otherwise; usage statistics off; uploads limited to 20 MB (they are
only ever read as text).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

APP = Path(__file__).resolve().parent / "explorer" / "app.py"


def command(host: str = "127.0.0.1", port: int = 8501, headless: bool = True) -> list[str]:
    """The `streamlit run` command line `serve` executes (for tests and process managers)."""
    if not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"port: expected an int in 1..65535, got {port!r}")
    if not isinstance(host, str) or not host:
        raise ValueError(f"host: expected an interface address such as '127.0.0.1', got {host!r}")
    return [sys.executable, "-m", "streamlit", "run", str(APP),
            "--server.address", host, "--server.port", str(port),
            "--server.headless", "true" if headless else "false",
            "--browser.gatherUsageStats", "false",
            "--server.maxUploadSize", "20",
            "--server.fileWatcherType", "none",
            "--global.developmentMode", "false",
            "--client.toolbarMode", "minimal"]


def serve(host: str = "127.0.0.1", port: int = 8501, headless: bool = True) -> None:
    """Run the explorer in this process (replaces it with `streamlit run`; returns only on error)."""
    cmd = command(host, port, headless)
    env = os.environ.copy()
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    root = str(APP.parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    os.chdir(root)
    os.execve(cmd[0], cmd, env)
