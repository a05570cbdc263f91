"""The Python process in which one documentation page's code blocks run (``tests/docs_blocks.py``).

A page's blocks share one namespace, as in a notebook, in a process of their own: the test
session's settings (64-bit JAX, strict dtype promotion, ``tests/conftest.py``) must not leak into
what a reader would see, and a block that leaves state behind affects only its own page.

Protocol: one JSON request per line on stdin, ``{"mode": "exec" | "eval", "code": ..., "filename": ...}``;
one JSON reply per line on the file descriptor named by ``DOCS_REPLY_FD``:
``{"stdout": ..., "value": ..., "error": traceback or null}``, where ``stdout`` is what the code
printed to ``sys.stdout`` and ``sys.stderr``, interleaved as a notebook shows them. Anything
written to the real file descriptors (C libraries, subprocesses) goes to the worker's log.
"""

import contextlib
import io
import json
import os
import sys
import traceback


def main() -> None:
    reply = os.fdopen(int(os.environ["DOCS_REPLY_FD"]), "w", encoding="utf-8")
    namespace = {"__name__": "__main__"}
    for line in sys.stdin:
        request = json.loads(line)
        out, value, error = io.StringIO(), None, None
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                code = compile(request["code"], request["filename"], request["mode"])
                result = eval(code, namespace) if request["mode"] == "eval" else exec(code, namespace)
                value = None if result is None else str(result)
        except BaseException:  # noqa: BLE001 - reported to the page's test, which fails with it
            error = traceback.format_exc()
        reply.write(json.dumps({"stdout": out.getvalue(), "value": value, "error": error}) + "\n")
        reply.flush()


if __name__ == "__main__":
    main()
