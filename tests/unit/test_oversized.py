"""The id of a message too large to keep, read from its first and last bytes (relay.oversized_id)."""

from __future__ import annotations

import pytest

from mcpfleet.gateway.upstream.relay import oversized_id


@pytest.mark.parametrize(
    ("head", "tail", "found"),
    [
        (b'{"jsonrpc":"2.0","id":12,"result":{"content":[', b'"}]}}', b"12"),  # Python and Go SDKs: id first
        (b'{ "jsonrpc": "2.0", "id": "req-1", "result"', b"}}", b'"req-1"'),
        (b'{"id":-3.5e2,"jsonrpc":"2.0","result"', b"}}", b"-3.5e2"),
        (b'{"result":{"content":[', b'}]},"jsonrpc":"2.0","id":9}', b"9"),  # TypeScript SDK: id last
        (b'{"result":{"content":[', b'}]},"id":"a\\"b","jsonrpc":"2.0"}', b'"a\\"b"'),
        (b'{"result":{"content":[', b'"meta":{"id":3}}}', None),  # an id nested in the result is not the id
        (b'{"result":{"content":[', b'"items":[{"id":4}]}}', None),
        (b'{"jsonrpc":"2.0","method":"notifications/message","params":{', b"}}", None),
        (b"not json at all", b"still not", None),
    ],
)
def test_the_top_level_id_is_found_at_either_end(head: bytes, tail: bytes, found: bytes | None) -> None:
    assert oversized_id(head, tail) == found
