"""Load generator for a realistic city day (SPEC §1, §12): model, pacing, checks.

``loadgen.model`` plans a seeded city day; ``loadgen.run`` sends it (the day
compressed, paced by ``loadgen.day``; a fixed offered rate; or flat out);
``loadgen.check`` compares the server's own totals and balances with what it
answered; ``loadgen.cli`` is ``python -m loadgen`` and ``clearing loadgen``.
"""
