"""The one exception type that reaches users.

Library code raises :class:`QwenMlxError` for every problem a user can fix (a missing folder,
a wrong architecture, a truncated file). The CLI prints its message as one line and exits
non-zero; anything else is a bug and is reported as such.
"""


class QwenMlxError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class ContextExceeded(QwenMlxError):
    """The prompt does not fit in the context (OpenAI clients get code
    context_length_exceeded)."""


class TooManyTokens(QwenMlxError):
    """An explicit token limit above what the context leaves for the reply;
    :meth:`named` says it with the field it came from (the server's own names)."""

    def __init__(self, asked: int, room: int, context: int, prompt: int,
                 field: str = "max_tokens") -> None:
        self.asked, self.room, self.context, self.prompt = asked, room, context, prompt
        shown = f"{asked:,}" if asked < 10**15 else f"{asked:.3g}"
        super().__init__(f"{field} is {shown}; at most {room:,} fit (the context is "
                         f"{context:,} tokens, the prompt {prompt:,})")

    def named(self, field: str) -> str:
        return str(TooManyTokens(self.asked, self.room, self.context, self.prompt, field))


class UnsupportedConstraint(QwenMlxError):
    """A structured-output constraint the matcher cannot compile (an unsupported JSON
    Schema keyword, a bad regex): the server names the field it came from."""


def one_line(message: str, items: int = 3) -> str:
    """A multi-line library message (a heading, then one name per line) as one line: the
    heading and the first few names, so nothing ends on a bare colon."""
    lines = [line.strip().rstrip(",.") for line in str(message).splitlines() if line.strip()]
    if not lines:
        return str(message)
    head, rest = lines[0].rstrip(":").rstrip(), lines[1:]
    if not rest:
        return head
    more = f" and {len(rest) - items} more" if len(rest) > items else ""
    return f"{head}: {'; '.join(rest[:items])}{more}"


def os_error_line(e: OSError) -> str:
    """A full disk, a permission, a missing file: the system's own words and the path. A
    copy names both files; the one written (``filename2``) is where it failed to go."""
    path = getattr(e, "filename2", None) or e.filename
    where = f": {path}" if path else ""
    return f"{e.strerror or e}{where}"
