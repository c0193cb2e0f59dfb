"""docs/protocol.md embeds the JSON Schema that scripts/protocol_schema.py generates from the real structs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_protocol_page_embeds_the_generated_schema() -> None:
    generated = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "protocol_schema.py")],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    page = (ROOT / "docs" / "protocol.md").read_text()
    blocks = [json.loads(block) for block in re.findall(r"```json\n(.*?)\n```", page, re.DOTALL)]
    embedded = [block for block in blocks if isinstance(block, dict) and "$schema" in block]
    assert len(embedded) == 1, "docs/protocol.md should hold exactly one JSON Schema block"
    assert embedded[0] == json.loads(generated), "regenerate it: .venv/bin/python scripts/protocol_schema.py"
