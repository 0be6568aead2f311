"""Dataset readers: one per on-disk format, each returning list[FaceRecord].

A *source* is an object with ``name``, ``layout``, ``splits()`` and
``read(split) -> list[FaceRecord]``; data configs instantiate sources by
``_target_`` and name splits as ``<source>/<split>``.
"""
