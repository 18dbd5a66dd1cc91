from recognize.errors import first_line


def test_first_line_is_the_messages_first_line_or_the_type_name():
    assert first_line(ValueError("bad value\n  at line 3")) == "bad value"
    assert first_line(OSError()) == "OSError"  # str() is "": splitlines()[0] would raise IndexError
    assert first_line(ValueError("  \n")) == "ValueError"
