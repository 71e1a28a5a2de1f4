import pytest

from mcpfleet.framing import KEPT, LineBuffer, MessageTooLarge, encode_line


def test_lines_split_across_chunks_are_reassembled_in_order() -> None:
    buffer = LineBuffer()
    assert buffer.feed(b'{"a":') == []
    assert buffer.feed(b'1}\n{"b":2}\r\n{"c"') == [b'{"a":1}', b'{"b":2}']
    assert buffer.feed(b":3}\n") == [b'{"c":3}']
    assert buffer.flush() is None


def test_blank_lines_are_skipped_and_remainder_is_flushed() -> None:
    buffer = LineBuffer()
    assert buffer.feed(b"\n\n{}\n  \n{") == [b"{}"]
    assert buffer.flush() == b"{"


def test_overlong_line_is_skipped_in_place_and_the_stream_goes_on() -> None:
    buffer = LineBuffer(max_line=10)
    assert buffer.feed(b'{"id":1}\n' + b"x" * 11) == [b'{"id":1}']  # the long one is not complete yet
    out = buffer.feed(b"yyy\r\nok\n")
    assert isinstance(out[0], MessageTooLarge) and out[1:] == [b"ok"]
    assert out[0].size == 14 and out[0].limit == 10 and out[0].head == b"x" * 11 + b"yyy"
    assert buffer.feed(b"next\n") == [b"next"]


def test_a_skipped_line_keeps_only_its_ends_across_many_chunks() -> None:
    buffer = LineBuffer(max_line=100)
    assert buffer.feed(b'{"jsonrpc":"2.0","id":7,"result":"' + b"a" * 200) == []
    for _ in range(1000):
        assert buffer.feed(b"b" * 1000) == []
    [skipped] = buffer.feed(b'c"}\n{"id":8}\n')[:1]
    assert isinstance(skipped, MessageTooLarge)
    assert skipped.size == 34 + 200 + 1_000_000 + 3
    assert skipped.head.startswith(b'{"jsonrpc":"2.0","id":7') and len(skipped.head) == KEPT
    assert skipped.tail.endswith(b'bc"}') and len(skipped.tail) == KEPT
    assert buffer.feed(b"") == []


def test_a_complete_overlong_line_in_one_chunk_and_one_at_the_end() -> None:
    buffer = LineBuffer(max_line=4)
    [first, second] = buffer.feed(b"123456\nok\n")
    assert isinstance(first, MessageTooLarge) and first.size == 6 and second == b"ok"
    buffer.feed(b"abcdefgh")
    last = buffer.flush()
    assert isinstance(last, MessageTooLarge) and last.size == 8


def test_encode_line_appends_newline_and_refuses_embedded_ones() -> None:
    assert encode_line(b"{}") == b"{}\n"
    with pytest.raises(ValueError, match="newline"):
        encode_line(b'{"a":\n1}')
