import pytest

from mcpfleet.framing import LineBuffer, LineTooLongError, encode_line


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


def test_overlong_line_is_an_error_not_unbounded_memory() -> None:
    buffer = LineBuffer(max_line=10)
    with pytest.raises(LineTooLongError):
        buffer.feed(b"x" * 11)
    assert buffer.feed(b"ok\n") == [b"ok"]


def test_encode_line_appends_newline_and_refuses_embedded_ones() -> None:
    assert encode_line(b"{}") == b"{}\n"
    with pytest.raises(ValueError, match="newline"):
        encode_line(b'{"a":\n1}')
