"""Where an example came from: the fields every TFRecord example carries besides its columns.

Each example holds the log file it was read from and its line there (a position, for formats
without lines), so any row or score can be traced back to its log line. Training and serving
ignore these fields; the schema fingerprint covers them. No configured column may take their
names (nor any name starting with `RESERVED_PREFIX`).
"""

from __future__ import annotations

RESERVED_PREFIX = "_origin_"
ORIGIN_FILE = "_origin_file"  # bytes: the log file's path, as the job read it
ORIGIN_LINE = "_origin_line"  # int64: the line number in that file, from 1
ORIGIN_FIELDS = (ORIGIN_FILE, ORIGIN_LINE)
