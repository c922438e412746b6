"""The two kinds of error a user is told about, apart from everything heavy (standard library only),
so the CLI can tell them apart before it has imported the modules that raise them."""


class Refused(Exception):
    """Input tradebeat will not act on (a malformed symbol, an impossible range): exit 2."""


class Failed(Exception):
    """The work could not be done (the exchange, the store or a run failed): exit 1."""
