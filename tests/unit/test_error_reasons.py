"""Every ErrorInfo reason the service can answer is in the proto's table of reasons, so
callers can rely on the list (the table sits above `service WebhookService`)."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).parents[2]
PROTO = ROOT / "protos" / "webhooks" / "v1" / "webhook_service.proto"


def _constant(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _reasons_in_code() -> set[str]:
    found: set[str] = set()
    files = [*(ROOT / "service").rglob("*.py"), *(ROOT / "kafka").rglob("*.py")]
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", getattr(node.func, "attr", ""))
                if name in ("FieldViolation", "invalid") and len(node.args) == 3:
                    found.add(_constant(node.args[2]) or "")
                if name == "EventRejected" and node.args:
                    found.add(_constant(node.args[0]) or "")
                for keyword in node.keywords:
                    if keyword.arg == "reason":
                        found.add(_constant(keyword.value) or "")
            # (description, reason) pairs, as check_literal_host returns.
            if isinstance(node, ast.Tuple) and len(node.elts) == 2:
                reason = _constant(node.elts[1]) or ""
                if _constant(node.elts[0]) and re.fullmatch(r"[A-Z]+(_[A-Z]+)+", reason):
                    found.add(reason)
    found.discard("")
    return found


# Raised without a reason of their own: their class's default is the reason.
DEFAULTS = {"QUOTA_EXCEEDED", "UNAVAILABLE"}


def _reasons_in_table() -> set[str]:
    """The first word of each indented line, or each item of a line that lists several."""
    text = PROTO.read_text()
    table = text[text.index("The reasons,") : text.index("service WebhookService")]
    found: set[str] = set()
    for line in table.splitlines():
        if not line.startswith("//   ") or not line[5:8].isupper():
            continue
        entry = line[5:]
        items = entry.split(", ") if "," in entry.split("  ")[0] else [entry.split()[0]]
        found |= {item.split()[0].rstrip(",") for item in items}
    return found


def test_the_proto_lists_every_reason_the_code_gives() -> None:
    in_code = _reasons_in_code() | DEFAULTS
    assert len(in_code) > 60  # the scan found the calls
    missing = in_code - _reasons_in_table()
    assert not missing, f"add these to the reasons in {PROTO.name}: {sorted(missing)}"


def test_the_table_lists_no_reason_the_code_never_gives() -> None:
    extra = _reasons_in_table() - _reasons_in_code() - DEFAULTS
    assert not extra, f"no code gives these: {sorted(extra)}"
