"""Force every Hugging Face library into offline mode before it is imported.

The libraries read these variables when first imported, so `force_offline()` must run before
`diffusers`, `transformers` or `huggingface_hub` is imported anywhere in the process. Loading
also passes `local_files_only=True`, so even a library that ignored the variables would not
reach the network.
"""

from __future__ import annotations

import os

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "DIFFUSERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
    "DO_NOT_TRACK": "1",
}


def force_offline() -> None:
    """Set the offline variables in this process's environment (overriding any other value)."""
    os.environ.update(OFFLINE_ENV)
