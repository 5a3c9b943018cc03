"""exiftool, an independent XMP reader, reads the TC260 AIGC label zguard writes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.common.exiftool import require_exiftool
from tests.unit.provenance.test_labels import FORMATS, labelled
from zguard.provenance.labels import FIELDS


@pytest.mark.parametrize("fmt", FORMATS)
def test_exiftool_reads_the_tc260_fields(tmp_path: Path, fmt: str) -> None:
    exiftool = require_exiftool()
    path = tmp_path / f"image.{fmt}"
    path.write_bytes(labelled(fmt))
    done = subprocess.run([exiftool, "-j", "-G1", "-XMP:all", "-warning", str(path)], capture_output=True, check=True)
    [tags] = json.loads(done.stdout)
    assert not [name for name in tags if "Warning" in name]
    label = json.loads(tags["XMP-TC260:Aigc"])  # exiftool's group for the TC260 namespace; it spells the tag Aigc
    assert list(label) == list(FIELDS)
    assert label["Label"] == "1"
    assert label["ContentProducer"] == "某银行 zguard"
    assert label["ProduceID"] == "req-0001"
    assert label["ReservedCode1"].startswith("zg1:")
