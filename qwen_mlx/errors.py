"""The one exception type that reaches users.

Library code raises :class:`QwenMlxError` for every problem a user can fix (a missing folder,
a wrong architecture, a truncated file). The CLI prints its message as one line and exits
non-zero; anything else is a bug and is reported as such.
"""


class QwenMlxError(Exception):
    """A problem with the user's input or environment, explained in one line."""
