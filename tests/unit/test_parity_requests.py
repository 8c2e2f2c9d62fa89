"""The parity gate's requests fit the server's body limit: chunked by encoded size, not rows
(issue 24: 3,072 floats a row overflowed 1 MiB at 32 rows; 224x224 tensors are 1.5 MB a row)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from servegate.config import RequestLimits
from servegate.errors import ConfigError
from servegate.gates.parity import ENVELOPE_BYTES, request_chunks


def _body(chunk: list) -> int:
    return len(json.dumps({"instances": chunk}, separators=(",", ":")))


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(0, 200), min_size=1, max_size=80),
       limit=st.integers(1200, 6000), most=st.integers(1, 40))
def test_every_request_fits_and_keeps_the_order(sizes: list[int], limit: int, most: int) -> None:
    rows = [[0.5] * n for n in sizes]
    limits = RequestLimits(max_body_bytes=limit, max_instances=most)
    chunks = request_chunks(rows, limits, rows=64)
    assert [r for c in chunks for r in c] == rows
    assert all(_body(c) <= limit - ENVELOPE_BYTES + 16 and len(c) <= most for c in chunks)


def test_wide_rows_are_sent_a_few_at_a_time() -> None:
    rows = np.random.default_rng(0).random((40, 3 * 32 * 32), dtype=np.float32).tolist()
    chunks = request_chunks(rows, RequestLimits())
    assert len(chunks) > 2 and all(_body(c) <= (1 << 20) for c in chunks)
    assert len(request_chunks(rows[:5], RequestLimits(), rows=2)) == 3  # the row cap still holds


def test_a_single_row_over_the_limit_says_what_to_raise() -> None:
    with pytest.raises(ConfigError, match="row 1 is .* bytes.*max_body_bytes"):
        request_chunks([[1.0], [0.123456789] * 200_000], RequestLimits())
