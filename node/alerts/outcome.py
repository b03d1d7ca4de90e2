"""How a send that did not deliver an alert says why, and whether to try again."""

from __future__ import annotations


class AlertNotDelivered(Exception):
    """permanent: the receiver refused it for good (retrying cannot help): a dead letter
    now. answered: the receiver answered, so it does not hold the alert."""

    def __init__(self, reason: str, permanent: bool = False, answered: bool = True):
        super().__init__(reason)
        self.permanent = permanent
        self.answered = answered
