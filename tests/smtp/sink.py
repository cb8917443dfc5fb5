"""A real SMTP server for the tests (aiosmtpd): each message received is parsed and written to
OUT_DIR as one JSON file {from, to, subject, text, html}, named in arrival order.

Usage: python3 sink.py OUT_DIR [starttls|smtps CERT KEY] [USER PASSWORD]
prints the port it listens on (127.0.0.1), then serves until stdin closes. `starttls` requires
STARTTLS before MAIL; `smtps` speaks TLS from the first byte; USER/PASSWORD make AUTH required
(and only over TLS).
"""

import email
import itertools
import json
import os
import socket
import sys
from email import policy

import ssl

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

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
            "message_id": msg["message-id"],
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
    kwargs = {}
    rest = sys.argv[2:]
    # aiosmtpd's auth_require_tls only knows STARTTLS; under smtps every byte is TLS anyway.
    implicit_tls = rest[:1] == ["smtps"]
    if rest[:1] and rest[0] in ("starttls", "smtps"):
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(rest[1], rest[2])
        if rest[0] == "starttls":
            kwargs.update(tls_context=context, require_starttls=True)
        else:
            kwargs.update(ssl_context=context)
        rest = rest[3:]
    if rest:
        user, password = rest[0].encode(), rest[1].encode()

        def authenticator(server, session, envelope, mechanism, data):
            ok = isinstance(data, LoginPassword) and (data.login, data.password) == (user, password)
            return AuthResult(success=ok)

        kwargs.update(authenticator=authenticator, auth_required=True, auth_require_tls=not implicit_tls)
    controller = Controller(Handler(), hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    print(port, flush=True)
    sys.stdin.read()
    controller.stop()


main()
