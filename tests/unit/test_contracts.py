"""The contracts: committed stubs match protos/, and buf lint (STANDARD + COMMENTS) passes."""

import filecmp
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]
BUF = shutil.which("buf", path=str(Path(sys.executable).parent)) or shutil.which("buf")


def _files(root: Path) -> set[str]:
    return {
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_committed_stubs_match_a_fresh_make_proto(tmp_path: Path) -> None:
    out = tmp_path / "generated"
    subprocess.run(
        ["make", "-s", "proto", f"PROTO_OUT={out}", f"PY={sys.executable}", "STAMP="],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=120,
    )
    committed = ROOT / "generated"
    fresh = _files(out)
    assert fresh, "make proto generated nothing"
    # __init__.py files are ours; everything protoc writes must be committed unchanged.
    assert fresh <= _files(committed)
    stale = [
        name
        for name in sorted(fresh)
        if not filecmp.cmp(out / name, committed / name, shallow=False)
    ]
    assert stale == [], f"run `make proto` and commit generated/: {stale} differ"


def test_buf_lint_passes() -> None:
    assert BUF, "the buf CLI (buf-bin) is not installed"
    result = subprocess.run(
        [BUF, "lint"], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
