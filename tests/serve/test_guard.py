"""The token check: Bearer or Basic (the browser's prompt), compared in constant time."""

from __future__ import annotations

import base64

from recognize.serve.guard import route_label, token_matches


def test_token_matches() -> None:
    token = b"s3cret"
    assert token_matches({b"authorization": b"Bearer s3cret"}, token)
    assert token_matches({b"authorization": b"bearer  s3cret"}, token)
    assert token_matches({b"authorization": b"Basic " + base64.b64encode(b"anyone:s3cret")}, token)
    for header in (b"", b"Bearer", b"Bearer s3cre", b"Bearer s3cretX", b"Token s3cret", b"Basic !!!",
                   b"Basic " + base64.b64encode(b"s3cret")):
        assert not token_matches({b"authorization": header}, token), header
    assert not token_matches({}, token)


def test_route_labels_are_bounded() -> None:
    assert route_label("/v1/frames") == "/v1/frames"
    assert route_label("/static/app.js") == "/static"
    assert route_label("/random/../path") == "other"
