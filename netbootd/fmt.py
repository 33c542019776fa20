"""Small formatting helpers for log lines and CLI output."""


def human_size(n: float) -> str:
    """1234567 -> '1.2 MB' (decimal units, as operators read download sizes)."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def printable(value: object, limit: int = 200) -> str:
    """Text a client supplied, as it may reach a log line or an operator's terminal: newlines,
    escape sequences and every other non-printable character shown escaped (`\\n`, `\\x1b`,
    `\\u202e`), cut at `limit` characters. A forged "identity-delivered" line or a screen clear
    cannot be smuggled through it."""
    text = value if isinstance(value, str) else str(value)
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[:limit] + "..."
