"""What must survive an agent restart: token hash, node_info, mode. One JSON file, 0600."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from wire.files import write_private

LOG = logging.getLogger(__name__)
STATE_FILE = "state.json"


class StateStore:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / STATE_FILE
        self.data: dict[str, Any] = {}
        try:
            loaded = json.loads(self.path.read_text())
            if isinstance(loaded, dict):
                self.data = loaded
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            # A corrupt file must not reopen the agent: refuse to start instead.
            raise RuntimeError(f"state file {self.path} is unreadable: {exc}") from exc

    def get(self, key: str) -> Any:
        return self.data.get(key)

    def update(self, **values: Any) -> None:
        if all(self.data.get(key) == value for key, value in values.items()):
            return  # nothing new: no write, no fsync on the start path
        self.data.update(values)
        write_private(self.path, json.dumps(self.data, sort_keys=True).encode())
