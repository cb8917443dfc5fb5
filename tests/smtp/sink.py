"""A real SMTP server for the tests (aiosmtpd): each message received is parsed and written to
OUT_DIR as one JSON file {from, to, subject, text, html}, named in arrival order.

Usage: python3 sink.py OUT_DIR  -- prints the port it listens on (127.0.0.1), then serves until
stdin closes.
"""

import email
import itertools
import json
import os
import socket
import sys
from email import policy

from aiosmtpd.controller import Controller

OUT = sys.argv[1]
COUNTER = itertools.count()


class Handler:
    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.content, policy=policy.default)
        text = msg.get_body(("plain",))
        html = msg.get_body(("html",))
        record = {
            "from": envelope.mail_from,
            "to": envelope.rcpt_tos,
            "subject": str(msg["subject"]),
            "text": text.get_content() if text else None,
            "html": html.get_content() if html else None,
        }
        path = os.path.join(OUT, f"{next(COUNTER):05d}.json")
        with open(path + ".tmp", "w") as f:
            json.dump(record, f)
        os.rename(path + ".tmp", path)
        return "250 OK"


def main():
    os.makedirs(OUT, exist_ok=True)
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    controller = Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    print(port, flush=True)
    sys.stdin.read()
    controller.stop()


main()
