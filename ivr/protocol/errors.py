"""Protocol errors, split by whose fault they are.

Following h11: a :class:`LocalProtocolError` means *we* tried to send something the peer
would misread (a header value with a line break, an over-long line), so it is raised
before any byte leaves; a :class:`RemoteProtocolError` means the peer sent something we
cannot make sense of. Callers catch the second to drop or log one bad message and go on,
and treat the first as a bug or bad input from higher up.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base class of every error raised by :mod:`ivr.protocol`."""


class LocalProtocolError(ProtocolError):
    """We were asked to encode something that is not valid on the wire."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that do not form a valid message.

    The parser that raised it has already discarded the offending message (or line) and
    stays usable: the next call returns the message after it.
    """
