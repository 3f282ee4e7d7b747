#!/usr/bin/env python3
"""Fails when project text tells its own history instead of what the tool is:
an ordinal or "last/this/previous/next/earlier/later" before "session", "Issue"
or "issue" with a number, or a dated log line. PostgreSQL's own sessions
("a session of its own", "session-level") are not history and stay allowed.

Reads every tracked text file (git ls-files), or the files given."""
import re
import subprocess
import sys

ORDINALS = (r"first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|"
            r"eleventh|twelfth|thirteenth|\d+(?:st|nd|rd|th)")
# Words may be split over lines of a comment.
GAP = r"(?:\s|//[/!]?|#)+"
PATTERNS = [
    (re.compile(rf"\b(?:{ORDINALS}|last|this|previous|next|earlier|later|prior|same|"
                rf"one|two|three|several|many){GAP}(?:\w+{GAP})?sessions?\b", re.I),
     "a session of the authors"),
    (re.compile(r"\bsession\s+\d+\b", re.I), "a numbered session"),
    (re.compile(r"\b[Ii]ssues?\s+#?\d+"), "an issue number"),
    (re.compile(r"\b20\d\d-\d\d-\d\d\b"), "a dated log line"),
]
# PostgreSQL's sessions: the server's, a connection's, the run lock's.
ALLOWED = re.compile(r"(?:PostgreSQL|server|connection|advisory|backend|idle_in_transaction|"
                     r"session[- ]level|own session|its session|each session|one session|"
                     r"sessions? of its own|a session of|the session's|pg_stat_activity|"
                     r"session advisory|application_name)", re.I)
SKIP = re.compile(r"^(?:Cargo\.lock|fixtures/|\.ci/history_words\.py)")


def files():
    if len(sys.argv) > 1:
        return sys.argv[1:]
    out = subprocess.run(["git", "ls-files"], capture_output=True, text=True, check=True)
    return [f for f in out.stdout.split("\n") if f and not SKIP.match(f)]


found = 0
for path in files():
    try:
        text = open(path, encoding="utf-8").read()
    except (UnicodeDecodeError, IsADirectoryError, FileNotFoundError):
        continue
    for pattern, what in PATTERNS:
        for m in pattern.finditer(text):
            start = text.rfind("\n", 0, m.start()) + 1
            end = text.find("\n", m.end())
            context = text[start:end if end >= 0 else len(text)]
            if what == "a session of the authors" and ALLOWED.search(context):
                continue
            number = text.count("\n", 0, m.start()) + 1
            print(f"{path}:{number}: {what}: {m.group(0)!r}")
            found += 1
sys.exit(1 if found else 0)
