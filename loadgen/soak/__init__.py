"""Crash safety and hostile input, proven against a real server on loopback.

Every scenario runs ``clearing serve`` in a subprocess on 127.0.0.1, hurts it
(kill -9, a named crash point, a full map or disk, duplicate storms, fuzzed
and forged requests, a damaged journal), and judges the journal on disk
against what its clients were told (``audit``). ``python -m loadgen.soak``
(``make soak``) runs the full versions and prints one table; the tests run
the same scenarios at CI size.
"""
