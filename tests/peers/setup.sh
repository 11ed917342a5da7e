#!/usr/bin/env bash
# Installs the real peer libraries the peer test runs against (tests/peers/peers.rs):
#   tests/peers/.venv          Python: postgresql-lock, django-pglock (+ Django, psycopg 3)
#   tests/peers/node_modules   npm: advisory-lock 2.0.0 and pg
#   Debian packages            ruby, ruby-activerecord (Rails 6.1's migrator), ruby-pg
# Idempotent (re-running only checks). Needs a package registry (PyPI, npm). Fails loudly, naming
# what is missing; with CI=true and root it installs python3-venv / nodejs / npm with apt-get.
set -euo pipefail
cd "$(dirname "$0")"

# the newest Python 3 on PATH (postgresql-lock's current release wants >= 3.12; older ones get 0.1.9)
py=
for c in ${PEERS_PYTHON:-} python3.13 python3.12 python3; do
  if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys' >/dev/null 2>&1; then py=$c; break; fi
done
missing=()
[ -n "$py" ] || { py=python3; missing+=(python3); }
"$py" -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
# Ruby: Rails' migrator (ActiveRecord 6.1) and the with_advisory_lock derivation, from Debian
if command -v ruby >/dev/null 2>&1; then
  ruby -e 'require "active_record"' >/dev/null 2>&1 || missing+=(ruby-activerecord)
  ruby -e 'require "pg"' >/dev/null 2>&1 || missing+=(ruby-pg)
else
  missing+=(ruby ruby-activerecord ruby-pg)
fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "${CI:-}" = "true" ] && [ "$(id -u)" = 0 ]; then
    echo "peers: installing ${missing[*]} with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "peers: FAIL: missing ${missing[*]}." >&2
    echo "peers: install them (Debian/Ubuntu: sudo apt-get install ${missing[*]}), or run as root with CI=true." >&2
    exit 1
  fi
fi

if [ ! -x .venv/bin/python ]; then
  echo "peers: creating tests/peers/.venv with $py"
  "$py" -m venv .venv || { echo "peers: FAIL: $py -m venv failed (Debian/Ubuntu: apt-get install python3-venv)" >&2; exit 1; }
fi
if ! .venv/bin/python -c 'import postgresql_lock, pglock, django, psycopg' >/dev/null 2>&1; then
  echo "peers: pip install -r requirements.txt"
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt \
    || { echo "peers: FAIL: pip could not install requirements.txt from PyPI (network? proxy?)" >&2; exit 1; }
fi
.venv/bin/python -c 'import postgresql_lock, pglock, django, psycopg' \
  || { echo "peers: FAIL: the Python peers do not import after installation" >&2; exit 1; }

if ! node -e 'require("advisory-lock"); require("pg")' >/dev/null 2>&1; then
  echo "peers: npm install"
  npm install --no-audit --no-fund --loglevel=error \
    || { echo "peers: FAIL: npm could not install package.json from the npm registry (network? proxy?)" >&2; exit 1; }
fi
node -e 'require("advisory-lock"); require("pg")' \
  || { echo "peers: FAIL: the npm peers do not load after installation" >&2; exit 1; }
ruby -e 'require "active_record"; require "pg"' \
  || { echo "peers: FAIL: ActiveRecord / pg do not load in ruby" >&2; exit 1; }
echo "peers: ready ($(.venv/bin/python -m pip list 2>/dev/null | grep -iE '^(postgresql-lock|django-pglock|django) ' | tr -s ' ' | paste -sd, -); node $(node --version); ruby $(ruby -e 'print RUBY_VERSION'), activerecord $(ruby -e 'require "active_record"; print ActiveRecord.version'))"
