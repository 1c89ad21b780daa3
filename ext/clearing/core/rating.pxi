# Rating: a merchant's discount, a ride's concession and transfer, the charge to a card.

cdef Py_ssize_t load_batch_rules(Ledger self, int32_t party_index) except -1:
    """The party's merchant rules, copied once per batch into ``batch_rules``."""
    cdef Py_ssize_t k = 0
    rules = self.rules.get(party_index)
    if not rules:
        return 0
    grow_array(<void **>&self.batch_rules, &self.batch_rules_cap, len(rules), sizeof(rule_t))
    for effective_from_ms, discount_bp in rules:
        self.batch_rules[k].party_index = party_index
        self.batch_rules[k].effective_from_ms = effective_from_ms
        self.batch_rules[k].discount_bp = discount_bp
        k += 1
    return k



cdef int rate(Ledger self, const terminal_t *term, card_t *c, int64_t amount, int64_t occurred,
              uint32_t route, int64_t now_ms, Py_ssize_t n_rules, result_t *res) except -1:
    """SPEC §5 rules 3–8 for a fresh tap (``c`` NULL: unknown card); applies an OK tap."""
    cdef int64_t charged, gap, deadline, balance_after
    res.charged_to = CHARGED_TO_NONE
    res.charged_fen = 0
    res.balance_after_fen = c.balance_fen if c != NULL else 0
    if amount <= 0 or amount > self.cfg.max_tap_fen:
        res.status = INVALID_AMOUNT
        return 0
    if too_late(occurred, now_ms, self.cfg.max_late_ms):
        res.status = TOO_LATE
        return 0
    if in_future(occurred, now_ms, self.cfg.max_clock_skew_ms):
        res.status = IN_FUTURE
        return 0
    if c == NULL:
        res.status = UNKNOWN_CARD
        return 0

    if term.terminal_class == VALIDATOR:
        # A validator records a ride that happened: always OK (rule 8).
        charged = half_up(amount, self.cfg.concession_bp[c.card_type])
        if c.has_last_ride and c.last_route_id != route:
            if cc_sub(occurred, c.last_occurred_at_ms, &gap):
                money_overflow()
            if 0 <= gap <= self.cfg.transfer_window_ms:
                if cc_sub(charged, self.cfg.transfer_discount_fen, &charged):
                    money_overflow()
                if charged < 0:
                    charged = 0
        if c.state == ACTIVE:
            res.charged_to = CHARGED_TO_CARD
        elif c.state == LOST:
            if cc_add(c.blocked_at_ms, self.cfg.liability_window_ms, &deadline):
                money_overflow()
            res.charged_to = CHARGED_TO_CARD if occurred < deadline else CHARGED_TO_ISSUER_LOSS
        else:
            res.charged_to = CHARGED_TO_ISSUER_LOSS
        if res.charged_to == CHARGED_TO_CARD and cc_sub(c.balance_fen, charged, &balance_after):
            money_overflow()  # raise before anything changes
        c.has_last_ride = 1
        c.last_route_id = route
        c.last_occurred_at_ms = occurred
        if res.charged_to == CHARGED_TO_CARD:
            charge(self, c, charged)
        res.status = OK
        res.charged_fen = charged
        res.balance_after_fen = c.balance_fen
        return 0

    if c.state != ACTIVE:
        res.status = CARD_BLOCKED
        return 0
    if term.terminal_class == POS:
        charged = half_up(amount, rule_bp(self.batch_rules, n_rules, occurred))
    else:
        charged = amount
    if charged > c.balance_fen:
        res.status = INSUFFICIENT_FUNDS
        return 0
    charge(self, c, charged)
    res.status = OK
    res.charged_to = CHARGED_TO_CARD
    res.charged_fen = charged
    res.balance_after_fen = c.balance_fen
    return 0



cdef int charge(Ledger self, card_t *c, int64_t charged) except -1:
    """Take ``charged`` from the card; note it when it falls below the boarding minimum."""
    cdef int64_t before = c.balance_fen
    cdef int64_t after
    cdef int64_t floor = self.cfg.min_boarding_balance_fen
    if cc_sub(before, charged, &after):
        money_overflow()                        # the balance is left as it was
    c.balance_fen = after
    if before >= floor > after:
        grow_array(<void **>&self.crossings, &self.crossing_cap, self.crossing_n + 1,
                   sizeof(uint64_t))
        self.crossings[self.crossing_n] = c.card_id
        self.crossing_n += 1
    return 0
