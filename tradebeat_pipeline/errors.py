"""The two kinds of failure tradebeat reports, so a caller can map any of its errors to an exit code
without knowing which module raised it (standard library only: anything may import it)."""


class Refused(Exception):
    """Input tradebeat will not act on (a bad argument, a file it must not touch); exit 2."""


class Failed(Exception):
    """The work could not be done (the exchange, the store or the disk failed it); exit 1."""
