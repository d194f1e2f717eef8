"""Schemathesis hooks for the gateway's document: values of the formats it names that a
generator cannot guess. The suite's own run imports this module; from the command line:
``SCHEMATHESIS_HOOKS=tests.e2e.schemathesis_hooks schemathesis run .../openapi.json``."""

from __future__ import annotations

from datetime import UTC

import schemathesis
from hypothesis import strategies as st

from services.gateway.openapi import CURSOR_FORMAT
from shared.pagination import encode_cursor

# A cursor is opaque and only the server makes one; any cursor it could have made is valid.
CURSORS = st.builds(encode_cursor, st.datetimes(timezones=st.just(UTC)), st.uuids())

schemathesis.openapi.format(CURSOR_FORMAT, CURSORS)
