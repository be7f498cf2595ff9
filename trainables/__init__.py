"""The library side of the KD study service: everything a trial runs.

Nothing in this package imports Ray except ``trainables.trainable``.
"""
