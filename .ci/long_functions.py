#!/usr/bin/env python3
"""Lists every Rust function longer than the limit (80 lines, its signature to its
closing brace) and exits 1 if there is one. Braces are counted outside strings,
character literals and comments, which is all a Rust function's extent needs."""
import pathlib
import re
import sys

LIMIT = 80
FN = re.compile(r"^\s*(pub(\([^)]*\))?\s+)?((const|async|unsafe|extern\s+\"C\")\s+)*fn\s+(\w+)")


def code_only(text):
    """The text with strings, chars and comments blanked, newlines kept."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i)); i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(re.sub(r"[^\n]", " ", text[i:j])); i = j
        elif c == "r" and re.match(r'r#*"', text[i:i + 10]) and not (i and (text[i-1].isalnum() or text[i-1] == "_")):
            m = re.match(r'r(#*)"', text[i:]); hashes = m.group(1)
            j = text.find('"' + hashes, i + len(m.group(0)))
            j = n if j < 0 else j + 1 + len(hashes)
            out.append(re.sub(r"[^\n]", " ", text[i:j])); i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(re.sub(r"[^\n]", " ", text[i:j + 1])); i = j + 1
        elif c == "'":
            m = re.match(r"'(\\.[^']*|[^\\'])'", text[i:])
            if m:
                out.append(" " * len(m.group(0))); i += len(m.group(0))
            else:
                out.append(c); i += 1
        else:
            out.append(c); i += 1
    return "".join(out)


def long_functions(path):
    lines = code_only(path.read_text()).split("\n")
    found = []
    for start, line in enumerate(lines):
        m = FN.match(line)
        if not m:
            continue
        depth, opened = 0, False
        for end in range(start, len(lines)):
            for ch in lines[end]:
                if ch == "{":
                    depth += 1; opened = True
                elif ch == "}":
                    depth -= 1
                elif ch == ";" and not opened and depth == 0:
                    break  # a declaration without a body
            else:
                if opened and depth == 0:
                    length = end - start + 1
                    if length > LIMIT:
                        found.append((length, f"{path}:{start + 1}", m.group(5)))
                    break
                continue
            break
    return found


roots = sys.argv[1:] or ["src", "harness", "worker"]
found = []
for root in roots:
    for path in sorted(pathlib.Path(root).rglob("*.rs")):
        found += long_functions(path)
for length, where, name in sorted(found, reverse=True):
    print(f"{where}: fn {name} is {length} lines (limit {LIMIT})")
sys.exit(1 if found else 0)
