# The wire: record sizes and numeric codes, declared once for both compiled modules
# (included by _ledger and _summary). They must equal clearing/limits.py and
# clearing/codes.py: ``WIRE`` carries them out, and clearing.core.ledger / .summary
# refuse to use a build whose numbers differ (check_wire).

cdef enum:
    TAP_BYTES = 36                      # limits.TAP_BYTES
    RESULT_BYTES = 40                   # limits.RESULT_BYTES
    STATUS_COUNT = 10                   # codes.STATUS_COUNT: max(TapStatus) + 1

cdef enum:                              # codes.TapStatus
    OK = 1
    ID_CONFLICT = 2
    INVALID_AMOUNT = 3
    TOO_LATE = 4
    IN_FUTURE = 5
    UNKNOWN_CARD = 6
    CARD_BLOCKED = 7
    INSUFFICIENT_FUNDS = 8
    SEQUENCE_TOO_FAR_AHEAD = 9          # the last status
cdef enum:                              # codes.ChargedTo
    CHARGED_TO_NONE = 0
    CHARGED_TO_CARD = 1
    CHARGED_TO_ISSUER_LOSS = 2
cdef enum:                              # codes.TerminalClass
    VALIDATOR = 1
    POS = 2
    BILLING = 3
cdef enum:                              # codes.CardState (the states the core tells apart)
    ACTIVE = 1
    LOST = 2

WIRE = {
    "TAP_BYTES": TAP_BYTES, "RESULT_BYTES": RESULT_BYTES, "STATUS_COUNT": STATUS_COUNT,
    "TapStatus": {"OK": OK, "ID_CONFLICT": ID_CONFLICT, "INVALID_AMOUNT": INVALID_AMOUNT,
                  "TOO_LATE": TOO_LATE, "IN_FUTURE": IN_FUTURE, "UNKNOWN_CARD": UNKNOWN_CARD,
                  "CARD_BLOCKED": CARD_BLOCKED, "INSUFFICIENT_FUNDS": INSUFFICIENT_FUNDS,
                  "SEQUENCE_TOO_FAR_AHEAD": SEQUENCE_TOO_FAR_AHEAD},
    "ChargedTo": {"CHARGED_TO_NONE": CHARGED_TO_NONE, "CARD": CHARGED_TO_CARD,
                  "ISSUER_LOSS": CHARGED_TO_ISSUER_LOSS},
    "TerminalClass": {"VALIDATOR": VALIDATOR, "POS": POS, "BILLING": BILLING},
    "CardState": {"ACTIVE": ACTIVE, "LOST": LOST},
}
