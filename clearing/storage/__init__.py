"""What lives on disk: the LMDB journal, checkpoints, page checks, backups and
offline verification."""
