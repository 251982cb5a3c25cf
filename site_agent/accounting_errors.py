"""The accountant's one error type, in a module of its own.

Both site_agent.accounting (entries, histories, ε, calibration) and site_agent.pld_accounting
(the PLD composition it builds on) raise it, and the PLD module must not import the accounting
module that imports it; so the type sits below both. Import it from site_agent.accounting.
"""

from __future__ import annotations


class AccountingError(ValueError):
    """A malformed accountant entry or state document: refused, never guessed, since a wrong
    history would under-report ε."""
