"""Type-check the README's Python examples with the project's mypy settings.

Every ```python block of README.md is written to build/readme-examples/ and checked with mypy;
a block that a user would copy must be accepted by a type checker as it stands.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    blocks = re.findall(r"^```python\n(.*?)^```", (ROOT / "README.md").read_text(), flags=re.S | re.M)
    if not blocks:
        print("readme_examples: README.md has no ```python block", file=sys.stderr)
        return 1
    out = ROOT / "build" / "readme-examples"
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("example_*.py"):
        old.unlink()
    files = []
    for i, block in enumerate(blocks, 1):
        path = out / f"example_{i}.py"
        path.write_text(block)
        files.append(str(path))
    print(f"readme_examples: checking {len(files)} example(s) from README.md with mypy")
    return subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), *files],
                          cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main())
