"""Small formatting helpers for log lines and CLI output."""


def human_size(n: float) -> str:
    """1234567 -> '1.2 MB' (decimal units, as operators read download sizes)."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")
