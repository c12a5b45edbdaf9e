"""A client asking a port for ``/version`` as fast as it can, each answer or failure with its time.

Run inside a test host (``python3 -c PROBE PORT SECONDS [NEW]``): it prints ``MONOTONIC ANSWER``
per request (when the request began, on CLOCK_MONOTONIC; ``-`` for a failure, after which it
pauses 5 ms), for SECONDS, or until 1 s after its first answer NEW. Used where an update's
unavailability is measured: tests/e2e/test_agent_updates.py and bench/update.py.
"""

PROBE = """\
import socket, sys, time
port, stop = int(sys.argv[1]), time.monotonic() + float(sys.argv[2])
new = sys.argv[3] if len(sys.argv) > 3 else None
while time.monotonic() < stop:
    began = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"GET /version HTTP/1.0\\r\\n\\r\\n")
            body = b""
            while chunk := s.recv(4096):
                body += chunk
        answer = body.split(b"\\r\\n\\r\\n", 1)[-1].decode(errors="replace").strip() or "-"
    except OSError:
        answer = "-"
    print(f"{began:.4f} {answer.split()[0] if answer.split() else '-'}", flush=True)
    if answer == new:
        stop = min(stop, began + 1.0)  # enough of the new version: it is there
    if answer == "-":
        time.sleep(0.005)
"""
