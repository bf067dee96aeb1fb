"""One 30 MiB line (under the 32 MiB line cap) keeps validation's memory flat: token counting cuts
each text at what max_sequence_length can use before tokenizing. Measured in a fresh process
(peak RSS before and after validating); the whole line used to be tokenized (+4.5 GB)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.utils.server import REPO

SCRIPT = r"""
import io, json, resource, sys
from common.schemas import TrainingType
from common.validation import Limits, load_tokenizer, validate_stream

tokenizer, name = load_tokenizer(sys.argv[1])
assert tokenizer is not None, name
text = "hello world " * (30 * 1024 * 1024 // 12)
line = json.dumps({"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": "ok"}]})
data = (line + "\n").encode()
del text, line
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
report = validate_stream(io.BytesIO(data), TrainingType.sft, limits=Limits(max_sequence_length=2048),
                         tokenizer=tokenizer, tokenizer_name=name)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"before_kib": before, "after_kib": after, "bytes": len(data),
                  "errors": [e.model_dump() for e in report.errors]}))
"""


def test_a_30_mib_line_is_reported_over_the_limit_with_flat_memory(tiny_model: Path) -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_model)], cwd=REPO, capture_output=True, text=True,
                         check=True, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=300)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    growth_mib = (result["after_kib"] - result["before_kib"]) / 1024
    print(f"peak RSS {result['before_kib'] / 1024:.0f} MiB -> {result['after_kib'] / 1024:.0f} MiB "
          f"(+{growth_mib:.0f} MiB) validating a {result['bytes'] / 2**20:.0f} MiB line")
    assert result["errors"] and result["errors"][0]["line"] == 1
    assert "over max_sequence_length 2048" in result["errors"][0]["message"]
    assert growth_mib < 256, result  # the data is already in memory; validating it may not multiply it
