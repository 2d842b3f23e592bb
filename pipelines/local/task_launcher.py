"""The interpreter kfp.local starts for each task, when the embedded runner has a task server.

kfp.local runs ``python -m kfp.dsl.executor_main ...`` for every task, with ``python`` replaced
by ``sys.executable``. The embedded runner points that at a one-line script that runs this
file with the real interpreter and ``-IS`` (no site, nothing but the standard library), so
each task starts here, in a few milliseconds, and hands its argument list, environment,
working folder and standard streams to the task server (``pipelines/local/task_server.py``). The
server forks the task from an interpreter that has already imported kfp, pandas and
scikit-learn, and reports its exit status, which this process exits with. A signal sent
here is passed on to the task; if this process dies, the task is killed.

Anything but ``-m <module>``, no server, or a server that does not take the task: the real
interpreter runs it, exactly as kfp.local would have (``os.execvp``).
"""

import json
import os
import signal
import socket
import sys

SERVER_ENV = "FLYWHEEL_TASK_SERVER"  # the server's socket path
PYTHON_ENV = "FLYWHEEL_TASK_PYTHON"  # the real interpreter
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _real_python(argv: list[str]) -> None:
    python = os.environ.get(PYTHON_ENV) or "python3"
    os.execvp(python, [python, *argv])


def _lines(conn: socket.socket):
    buffer = b""
    while True:
        chunk = conn.recv(256)
        if not chunk:
            return
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            yield line.decode()


def main(argv: list[str]) -> int:
    path = os.environ.get(SERVER_ENV)
    if not path or len(argv) < 2 or argv[0] != "-m":
        _real_python(argv)
    try:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(path)
        body = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
        socket.send_fds(conn, [len(body).to_bytes(8, "big")], [0, 1, 2])
        conn.sendall(body)
        replies = _lines(conn)
        pid = int(next(replies))
    except (OSError, StopIteration, ValueError):
        _real_python(argv)  # the task did not start there: start it here

    def forward(signum, _frame):
        try:
            conn.sendall(f"{signum}\n".encode())
        except OSError:
            pass

    for signum in FORWARDED:
        signal.signal(signum, forward)
    code = next(replies, None)
    if code is None:
        sys.stderr.write(f"task server lost task {pid}\n")
        return 1
    status = int(code)
    if status < 0:  # killed by a signal: end the same way
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
