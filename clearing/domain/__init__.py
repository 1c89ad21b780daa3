"""The deterministic engine and what it derives from the journal: card operations,
business days, the registry, the deny list, and the journal's entry types. No I/O."""
