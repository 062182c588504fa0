"""Field masks for Update methods (AIP-134): which fields a request changes."""

from collections.abc import Sequence

from service.errors import FieldViolation, InvalidArgument


def resolve_mask(
    paths: Sequence[str],
    *,
    allowed: Sequence[str],
    output_only: Sequence[str],
    populated: Sequence[str],
) -> frozenset[str]:
    """The fields to change.

    An empty mask means every field the request populated; `*` means all updatable
    fields; unknown or output-only paths are errors.
    """
    if not paths:
        if not populated:
            raise InvalidArgument(
                [
                    FieldViolation(
                        "update_mask", "names no field and the request sets none", "EMPTY_UPDATE"
                    )
                ]
            )
        return frozenset(populated)
    if list(paths) == ["*"]:
        return frozenset(allowed)
    violations = []
    for path in paths:
        if path in output_only:
            violations.append(
                FieldViolation("update_mask", f"{path} is output only", "OUTPUT_ONLY_FIELD")
            )
        elif path not in allowed:
            violations.append(
                FieldViolation(
                    "update_mask",
                    f"unknown field {path}; one of {', '.join(allowed)}",
                    "UNKNOWN_FIELD",
                )
            )
    if violations:
        raise InvalidArgument(violations)
    return frozenset(paths)
