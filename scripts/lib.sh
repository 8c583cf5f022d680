# Shared helpers for the scripts in this folder. Source it; don't run it.

# The Debian packages dbwarden's tests and quick start need, by the command they provide.
declare -A DBWARDEN_PACKAGES=(
  [/usr/lib/postgresql/15/bin/initdb]=postgresql-15
  [/usr/bin/psql]=postgresql-client-15
  [/usr/bin/promtool]=prometheus
  [/usr/bin/prometheus]=prometheus
  [/usr/bin/amtool]=prometheus-alertmanager
  [/usr/bin/prometheus-alertmanager]=prometheus-alertmanager
  [/usr/bin/prometheus-postgres-exporter]=prometheus-postgres-exporter
  [/usr/bin/curl]=curl
  [/usr/bin/chromium]=chromium
  [/usr/bin/chromedriver]=chromium-driver
)

# Installs whatever is missing (as root, with apt-get), or says which package to install.
ensure_packages() {
  local missing=() bin
  for bin in "${!DBWARDEN_PACKAGES[@]}"; do
    [ -x "$bin" ] || missing+=("${DBWARDEN_PACKAGES[$bin]}")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})" >&2
    return 1
  fi
  echo "installing Debian packages: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Debian's packages start their services; dbwarden's tests start their own instances.
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  stop_package_services
}

# The Debian packages may start Prometheus, Alertmanager and postgres_exporter on
# their default ports; tests pick free ports, but stop the daemons to keep the machine quiet.
stop_package_services() {
  local svc
  for svc in prometheus prometheus-alertmanager prometheus-postgres-exporter; do
    if command -v service >/dev/null 2>&1; then service "$svc" stop >/dev/null 2>&1 || true; fi
  done
}

# Succeeds when the local PostgreSQL answers on 127.0.0.1:5432, starting the
# machine's cluster when it is installed but stopped.
ensure_local_postgres() {
  if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then return 0; fi
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    local v
    for v in /etc/postgresql/*; do
      pg_ctlcluster --skip-systemctl-redirect "$(basename "$v")" main start >/dev/null 2>&1 || true
    done
    local i
    for i in $(seq 1 100); do
      pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null && return 0
      sleep 0.1
    done
  fi
  return 1
}

# moto's S3 server (PyPI package "moto[s3,server]"), which the backup tests
# run as a real S3 API, installed in a virtualenv under target/ and named by
# DBWARDEN_MOTO_SERVER for the tests.
ensure_moto() {
  local venv="${DBWARDEN_MOTO_VENV:-$PWD/target/moto-venv}"
  if [ ! -x "$venv/bin/moto_server" ]; then
    echo "installing moto's S3 server (PyPI: moto[s3,server]) in $venv" >&2
    python3 -m venv "$venv" || { echo "cannot create a virtualenv: install python3-venv (Debian)" >&2; return 1; }
    "$venv/bin/pip" install -q "moto[s3,server]" || { echo "cannot install the PyPI package moto[s3,server]" >&2; return 1; }
  fi
  export DBWARDEN_MOTO_SERVER="$venv/bin/moto_server"
}
