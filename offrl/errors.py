"""Error types shown to users as one clear line by the CLI."""


class UserError(Exception):
    """Something the user can fix: a bad id, file, card or argument. The message says what."""
