"""Showing text that came from a stream without letting it control the terminal."""

from __future__ import annotations


def escape_for_terminal(s: str) -> str:
    """Render untrusted text so printing it cannot control the terminal.

    Header strings (meta values, tool, uuid) come from whoever made the stream;
    printed raw, an ESC sequence could rewrite the screen, set the window title
    or hide text, and bidi or zero-width characters could disguise it.  Such
    characters become Python-style escapes.  Backslash is escaped too, so the
    rendering is unambiguous: ``\\x1b`` on screen always means an ESC in the data.
    Ordinary printable Unicode (accented letters, CJK, emoji) is kept, because
    escaping it would make legitimate non-English metadata unreadable.
    """
    out: list[str] = []
    for ch in s:
        if ch == "\\":
            out.append("\\\\")
        elif ch == " " or ch.isprintable():
            out.append(ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        else:
            code = ord(ch)
            if code < 0x100:
                out.append(f"\\x{code:02x}")
            elif code < 0x10000:
                out.append(f"\\u{code:04x}")
            else:
                out.append(f"\\U{code:08x}")
    return "".join(out)


def shown(value: object, limit: int = 80) -> str:
    """Quote a hostile value for a one-line error message."""
    text = escape_for_terminal(value if isinstance(value, str) else repr(value))
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"'{text}'" if isinstance(value, str) else text
