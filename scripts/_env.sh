# Sourced by scripts/test, scripts/demo and scripts/bench: one place that makes .venv
# on a fresh machine and keeps it in step with pyproject.toml.

say() { printf '\n==> %s\n' "$*" >&2; }
die() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; exit 1; }

# The project needs Python 3.11+; take the first interpreter on PATH that qualifies.
find_python() {
  local candidate
  for candidate in "${PYTHON:-}" python3 python3.13 python3.12 python3.11; do
    [[ -n "$candidate" ]] && command -v "$candidate" >/dev/null 2>&1 || continue
    if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$candidate"
      return 0
    fi
  done
  return 1
}

ensure_venv() {
  if [[ ! -x .venv/bin/python ]]; then
    local python
    python=$(find_python) || die "Python 3.11+ is required (set PYTHON=/path/to/python3.11)"
    say "creating .venv with $("$python" --version)"
    "$python" -m venv .venv
  fi
  # Reinstall only when pyproject.toml changed since the last successful install.
  local stamp=.venv/.fleet-pyproject.sha256 wanted
  wanted=$(.venv/bin/python -c \
    'import hashlib; print(hashlib.sha256(open("pyproject.toml", "rb").read()).hexdigest())')
  if [[ "$(cat "$stamp" 2>/dev/null || true)" != "$wanted" ]]; then
    say "installing the project and its dev dependencies into .venv"
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e '.[dev]'
    echo "$wanted" >"$stamp"
  fi
}
