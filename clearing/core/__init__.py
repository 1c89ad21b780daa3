"""The ledger core and the batch summariser: each compiled (``_ledger``, ``_summary``)
with a plain-Python reference twin (``ledger_py``, ``summary_py``), and a dispatcher
(``ledger``, ``summary``) that chooses between them. Pure computation over bytes: no I/O."""
