"""A real SMTP server (aiosmtpd) that requires STARTTLS and AUTH, for pgtrail's tests.

Usage: smtp_server.py OUT.jsonl CERT.pem KEY.pem USER PASSWORD

Prints its port on the first line of stdout, then serves until killed. Each accepted
message becomes one JSON line: envelope sender and recipients, whether the session was
under TLS and authenticated, and the message text.
"""

import threading
import warnings
import json
import socket
import ssl
import sys

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

# aiosmtpd warns about its own deprecated Session.login_data when AUTH succeeds.
warnings.simplefilter("ignore")

out_path, cert, key, user, password = sys.argv[1:6]


class Handler:
    async def handle_DATA(self, server, session, envelope):
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "tls": session.ssl is not None,
            "authenticated": bool(session.authenticated),
            "data": envelope.content.decode("utf-8", "replace"),
        }
        with open(out_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        return "250 Message accepted for delivery"


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and auth_data.login == user.encode() and auth_data.password == password.encode()
    return AuthResult(success=ok)


context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
context.load_cert_chain(cert, key)
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
controller = Controller(
    Handler(),
    hostname="127.0.0.1",
    port=port,
    tls_context=context,
    require_starttls=True,
    authenticator=authenticator,
    auth_require_tls=True,
    auth_required=True,
)
controller.start()
print(port, flush=True)
try:
    threading.Event().wait()
finally:
    controller.stop()
