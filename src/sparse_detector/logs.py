"""Log records under torchrun / srun: warnings every process would log alike appear once (rank 0's); a warning only
one process can see (its own images, its own signal) is marked :data:`RANK_SPECIFIC` and appears from every rank.
``warnings.warn`` messages (PyTorch's, ours) are ones every process meets alike: rank 0 prints them."""

from __future__ import annotations

import logging

RANK_SPECIFIC = {"rank_specific": True}  # ``extra=`` of a warning that names this process's own data or event


class OtherRankFilter(logging.Filter):
    """On ranks other than 0: only errors and warnings marked :data:`RANK_SPECIFIC`, labelled with the rank."""

    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR and not getattr(record, "rank_specific", False):
            return False
        if not getattr(record, "rank_labelled", False):
            record.msg, record.rank_labelled = f"(rank {self.rank}) {record.msg}", True
        return True


def log_for_other_rank(rank: int) -> None:
    """Make this process (rank ``rank`` > 0) log only what rank 0 cannot log for it (see :class:`OtherRankFilter`),
    its ``warnings.warn`` messages included (as log records, which the filter leaves to rank 0)."""
    logging.captureWarnings(True)
    root = logging.getLogger()
    root.setLevel(logging.WARNING)
    for handler in root.handlers:
        handler.addFilter(OtherRankFilter(rank))
