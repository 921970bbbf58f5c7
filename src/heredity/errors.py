"""The one exception type users see: a single line naming the problem and the fix."""


class HeredityError(Exception):
    """A user-facing error. ``str(err)`` is one line: what is wrong, and what to do."""

    def __init__(self, message: str):
        super().__init__(" ".join(message.split()))
