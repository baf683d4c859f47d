"""Run by tests/codegen.rs with the generated package on PYTHONPATH and
SPOOLHOUSE_SOCKET / SPOOLHOUSE_INBOX set: every event type of the example
registry through the socket and through an inbox file, then invalid values
refused on the client with the collector's own message (the same raw line
sent to the collector beside it)."""

import json
import os
import socket
import sys

from spoolhouse_events import (
    Client,
    NotStored,
    Registration,
    Rejected,
    ScreenView,
    ValidationError,
    Vote,
    WatchProgress,
)


def every_event(base):
    return [
        Registration(user_id=base + 1, gender=Registration.Gender.FEMALE, country_id=7,
                     platform=Registration.Platform.IOS),
        WatchProgress(user_id=base + 2, video_id=99, video_time=1234),
        Vote(user_id=base + 3, target_user_id=5, vote=Vote.Vote.YES, country_id=250),
        ScreenView(user_id=base + 4, screen="home \u00e9", platform=ScreenView.Platform.WEB,
                   load_ms=42, is_first_launch=True),
    ]


def raw(line):
    """The collector's rejection of one raw line."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(os.environ["SPOOLHOUSE_SOCKET"])
    s.sendall(line.encode() + b"\n")
    s.shutdown(socket.SHUT_WR)
    answers = s.makefile().read().splitlines()
    s.close()
    return json.loads(answers[0])


sock = Client(socket_path=os.environ["SPOOLHOUSE_SOCKET"])
print("socket stored", sock.send(*every_event(1000)))
inbox = Client(inbox_dir=os.environ["SPOOLHOUSE_INBOX"], inbox_name="typed.log")
print("inbox stored", inbox.send(*every_event(2000)))

# Invalid values: the client's error is the collector's, word for word.
cases = [
    (lambda: Vote(user_id=1, target_user_id=2, vote="maybe", country_id=7),
     {"user_id": 1, "target_user_id": 2, "vote": "maybe", "country_id": 7}, "vote"),
    (lambda: Vote(user_id=1, target_user_id=2, vote="yes", country_id=70000),
     {"user_id": 1, "target_user_id": 2, "vote": "yes", "country_id": 70000}, "vote"),
    (lambda: ScreenView(user_id=1, screen="x" * 65, platform="web", load_ms=1),
     {"user_id": 1, "screen": "x" * 65, "platform": "web", "load_ms": 1}, "screen_view"),
    (lambda: Vote(user_id="1", target_user_id=2, vote="yes", country_id=7),
     {"user_id": "1", "target_user_id": 2, "vote": "yes", "country_id": 7}, "vote"),
    (lambda: ScreenView(user_id=1, screen="a\u001fb", platform="web", load_ms=1),
     {"user_id": 1, "screen": "a\u001fb", "platform": "web", "load_ms": 1}, "screen_view"),
    (lambda: WatchProgress(user_id=1, video_id=2, video_time=3, time_ms=17000000000),
     None, "watch_progress"),
]
import time
for make, attrs, event in cases:
    try:
        make()
        print("not refused on the client:", attrs)
        sys.exit(1)
    except ValidationError as e:
        t = 17000000000 if attrs is None else int(time.time() * 1000)
        a = attrs if attrs is not None else {"user_id": 1, "video_id": 2, "video_time": 3}
        line = json.dumps({"event": event, "time": t, "attrs": a})
        got = raw(line)
        want = "line 1: " + str(e)
        if (got["field"], got["rule"], got["error"]) != (e.field, e.rule, want):
            print("client:", e.field, e.rule, want)
            print("collector:", got)
            sys.exit(1)
print("client errors equal the collector's:", len(cases))
# A required field left out.
try:
    Vote(user_id=1, target_user_id=2, vote=None, country_id=7)
    sys.exit(1)
except ValidationError as e:
    assert (e.field, e.rule) == ("attrs.vote", "missing"), e
print("ok")
