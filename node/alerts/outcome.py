"""How a send that did not deliver an alert says why, and whether to try again."""

from __future__ import annotations


class AlertNotDelivered(Exception):
    """permanent: the receiver refused it for good (retrying cannot help): a dead letter
    now. answered: the receiver does not hold the alert (it answered so, or was never
    reached); False: it may (sent, no answer), which the log says."""

    def __init__(self, reason: str, permanent: bool = False, answered: bool = True):
        super().__init__(reason)
        self.permanent = permanent
        self.answered = answered
