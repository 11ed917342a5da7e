"""A real Python advisory-lock library holding or trying a lock, for tests/peers/peers.rs.

usage: peer.py <postgresql-lock|django-pglock> <database url> <lock name> <hold|try>

hold: take the lock (waiting), print "held", wait for a line (or EOF) on stdin, release, print
      "released".
try:  try the lock without waiting, print "acquired" (and release it) or "busy".
"""

import sys
from urllib.parse import parse_qs, unquote, urlparse


def main() -> None:
    library, url, name, mode = sys.argv[1:5]
    if library == "postgresql-lock":
        import psycopg
        from postgresql_lock import Lock

        conn = psycopg.connect(url, autocommit=True)
        lock = Lock(conn, name)
        acquire = lambda block: lock.acquire(block=block)  # noqa: E731
        release = lock.release
    elif library == "django-pglock":
        import django
        from django.conf import settings

        u = urlparse(url)
        query = {k: v[0] for k, v in parse_qs(u.query).items()}
        settings.configure(
            DATABASES={
                "default": {
                    "ENGINE": "django.db.backends.postgresql",
                    "NAME": unquote(u.path.lstrip("/")),
                    "USER": unquote(u.username or ""),
                    "PASSWORD": unquote(u.password or ""),
                    "HOST": u.hostname or "",
                    "PORT": str(u.port or ""),
                    "OPTIONS": {k: v for k, v in query.items() if k == "application_name"},
                }
            },
            INSTALLED_APPS=["pgactivity", "pglock"],
            USE_TZ=True,
        )
        django.setup()
        import pglock

        held = {}

        def acquire(block: bool) -> bool:
            lock = pglock.advisory(name) if block else pglock.advisory(name, timeout=0)
            ok = lock.__enter__()
            held["lock"] = lock
            if not ok:
                lock.__exit__(None, None, None)
            return ok

        def release() -> None:
            held.pop("lock").__exit__(None, None, None)
    else:
        sys.exit(f"unknown peer library {library!r}")

    if mode == "hold":
        assert acquire(True)
        print("held", flush=True)
        sys.stdin.readline()
        release()
        print("released", flush=True)
    elif mode == "try":
        if acquire(False):
            release()
            print("acquired", flush=True)
        else:
            print("busy", flush=True)
    else:
        sys.exit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
