"""Load generator for a realistic city day (SPEC §1, §12).

The full model of a city day arrives with its own issue; until then
`clearing demo` streams a burst of validator batches.
"""
