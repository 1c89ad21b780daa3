"""Nightly multi-party settlement (SPEC §8): stream a day, check it, write the files."""
