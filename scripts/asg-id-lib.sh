# Shared by the asg-id VM scripts. POSIX sh + curl: what an EC2 image has.
# Every setting (environment, or /etc/asg-id/agent.env read by the systemd units) is in the
# README's table under "The VM side"; the defaults are here.

ASG_ID_STATE_DIR=${ASG_ID_STATE_DIR:-/run/asg-id}
ASG_ID_IDENTITY_FILE="$ASG_ID_STATE_DIR/identity.env"
# The registry URL that answered last, so the next request (and the next script) starts there.
ASG_ID_URL_FILE="$ASG_ID_STATE_DIR/registry-url"
ASG_ID_TIMEOUT=${ASG_ID_TIMEOUT:-5}

asg_log() {
  printf '%s: %s\n' "${0##*/}" "$*" >&2
}

asg_die() {
  status=$1
  shift
  asg_log "$*"
  exit "$status"
}

command -v curl >/dev/null 2>&1 || asg_die 69 "curl is not installed; the asg-id scripts need it"

# ASG_ID_REGISTRY_URL holds one URL or several, separated by spaces or commas; they are tried
# in turn, starting with the one that answered last (remembered in $ASG_ID_URL_FILE).
asg_require_url() {
  set -f # a URL is not a glob
  ASG_URLS=
  for u in $(printf '%s\n' "${ASG_ID_REGISTRY_URL:-}" | tr ',' ' '); do
    ASG_URLS="$ASG_URLS ${u%/}"
  done
  set +f
  ASG_URLS=${ASG_URLS# }
  [ -n "$ASG_URLS" ] || asg_die 64 "ASG_ID_REGISTRY_URL is not set (one registry URL, or several separated by spaces or commas)"
  [ -n "$(asg_s_to_ms "$ASG_ID_TIMEOUT")" ] || asg_die 64 "ASG_ID_TIMEOUT='$ASG_ID_TIMEOUT' is not a number of seconds"
  # Written back (to identity.env) without spaces, so both sh and systemd read it as one value.
  ASG_ID_REGISTRY_URL=$(printf '%s\n' "$ASG_URLS" | tr ' ' ',')
  ASG_URL_SAVED=
  [ -r "$ASG_ID_URL_FILE" ] && read -r ASG_URL_SAVED < "$ASG_ID_URL_FILE" 2>/dev/null
  case " $ASG_URLS " in
    *" ${ASG_URL_SAVED:-none} "*) ASG_URL=$ASG_URL_SAVED ;;
    *) ASG_URL=${ASG_URLS%% *} ;;
  esac
}

# The URLs in the order to try them: the current one first, then those after it, wrapping round.
asg_url_order() {
  before= after= seen=
  for u in $ASG_URLS; do
    if [ -n "$seen" ]; then after="$after $u"
    elif [ "$u" = "$ASG_URL" ]; then seen=1
    else before="$before $u"
    fi
  done
  echo "$ASG_URL$after$before"
}

asg_remember_url() {
  [ "$1" != "$ASG_URL" ] && asg_log "now using $1${ASG_WHY:+ ($ASG_WHY)}"
  ASG_URL=$1
  [ "$1" = "$ASG_URL_SAVED" ] && return 0
  # Best effort: a state folder we cannot write only costs the next script a retry.
  if { printf '%s\n' "$1" > "$ASG_ID_URL_FILE.$$" && mv -f "$ASG_ID_URL_FILE.$$" "$ASG_ID_URL_FILE"; } 2>/dev/null; then
    ASG_URL_SAVED=$1
  else
    rm -f "$ASG_ID_URL_FILE.$$" 2>/dev/null
  fi
  return 0
}

# Monotonic time in milliseconds (Linux /proc/uptime, which wall-clock steps do not move).
asg_now_ms() {
  if [ -r /proc/uptime ]; then
    awk '{ printf "%.0f\n", $1 * 1000 }' /proc/uptime
  else
    echo $(( $(date +%s) * 1000 ))
  fi
}

# Milliseconds to seconds with three decimals, for sleep and curl --max-time (0 when negative).
asg_ms_to_s() {
  set -- $(($1 < 0 ? 0 : $1))
  printf '%d.%03d\n' $(($1 / 1000)) $(($1 % 1000))
}

# Seconds (a decimal) to milliseconds; empty when it is not a number.
asg_s_to_ms() {
  case "$1" in
    ''|*[!0-9.]*|*.*.*|.) return 0 ;;
  esac
  awk -v s="$1" 'BEGIN { printf "%.0f\n", s * 1000 }'
}

# A random integer 0..65535: from the kernel, so VMs booted together do not draw the same one.
asg_random() {
  r=$(od -An -N2 -tu2 /dev/urandom 2>/dev/null | tr -d ' \n')
  case "$r" in
    ''|*[!0-9]*) r=$(( ($$ * 7919 + $(asg_now_ms)) % 65536 )) ;;
  esac
  echo "$r"
}

# asg_jitter MS: MS give or take up to 10 %, uniformly.
asg_jitter() {
  echo $(( $1 * (900 + $(asg_random) % 201) / 1000 ))
}

# Why curl got no HTTP answer, from its error line ("curl: (7) Failed to connect to … ").
asg_curl_error() {
  e=$(sed -n 's/^curl: ([0-9]*) //p' "$ASG_ERR_FILE" | tail -n 1)
  echo "${e:-no answer (curl exit $1)}"
}

# asg_post PATH JSON [DEADLINE_MS]: sends the request to the registries in turn, moving to the
# next on a connection failure, a timeout or a 5xx. Returns 0 with the answer of the first that
# gave one that is not a 5xx (ASG_CODE, the body in $ASG_BODY_FILE, ASG_URL the one that gave
# it, ASG_SENT_MS when it was sent, on the monotonic clock). Returns 1 when none did, with
# ASG_WHY saying what each one did. With DEADLINE_MS (monotonic), no request outlives it.
asg_post() {
  ASG_CODE=000 ASG_WHY=
  for u in $(asg_url_order); do
    max=$ASG_ID_TIMEOUT
    if [ -n "${3:-}" ]; then
      left=$(( $3 - $(asg_now_ms) ))
      if [ "$left" -le 0 ]; then
        ASG_WHY="${ASG_WHY:+$ASG_WHY; }$u: not tried, out of time"
        continue
      fi
      [ "$left" -lt "$(asg_s_to_ms "$max")" ] && max=$(asg_ms_to_s "$left")
    fi
    ASG_SENT_MS=$(asg_now_ms)
    if [ -n "${ASG_ID_TOKEN:-}" ]; then
      ASG_CODE=$(curl -sS -o "$ASG_BODY_FILE" -w '%{http_code}' --max-time "$max" \
        -H 'Content-Type: application/json' -H "Authorization: Bearer $ASG_ID_TOKEN" \
        -d "$2" "$u$1" 2>"$ASG_ERR_FILE")
    else
      ASG_CODE=$(curl -sS -o "$ASG_BODY_FILE" -w '%{http_code}' --max-time "$max" \
        -H 'Content-Type: application/json' -d "$2" "$u$1" 2>"$ASG_ERR_FILE")
    fi
    rc=$?
    case "$ASG_CODE" in
      ''|000) ASG_CODE=000; why="$u unreachable: $(asg_curl_error "$rc")" ;;
      5??) why="$u answered HTTP $ASG_CODE $(asg_error_code)" ;;
      *) asg_remember_url "$u"; return 0 ;;
    esac
    ASG_WHY="${ASG_WHY:+$ASG_WHY; }$why"
  done
  return 1
}

# asg_field NAME: a string or integer field of the flat JSON object in $ASG_BODY_FILE.
asg_field() {
  sed -n -e "s/.*\"$1\":\"\\([^\"]*\\)\".*/\\1/p" -e "s/.*\"$1\":\\([0-9][0-9]*\\).*/\\1/p" "$ASG_BODY_FILE" | head -n 1
}

asg_error_code() {
  sed -n 's/.*"code":"\([a-z_]*\)".*/\1/p' "$ASG_BODY_FILE" | head -n 1
}

# Milliseconds from one ISO 8601 UTC time (2026-01-08T10:00:00.000Z) to another; empty when
# either is not one. Plain awk, since busybox date cannot parse them.
asg_ms_between() {
  awk -v a="$1" -v b="$2" '
    function ms(t,  y, m, days) {
      if (t !~ /^[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9]/) return ""
      y = substr(t, 1, 4) + 0; m = substr(t, 6, 2) + 0
      if (m <= 2) { y -= 1; m += 12 }
      days = 365 * y + int(y / 4) - int(y / 100) + int(y / 400) + int((153 * (m - 3) + 2) / 5) + substr(t, 9, 2)
      return ((days * 24 + substr(t, 12, 2)) * 60 + substr(t, 15, 2)) * 60000 + substr(t, 18, 2) * 1000 + (substr(t, 20, 1) == "." ? substr(t, 21, 3) : 0)
    }
    BEGIN { x = ms(a); y = ms(b); if (x != "" && y != "") printf "%.0f\n", y - x }'
}

asg_body_file() {
  ASG_BODY_FILE=$(mktemp "${TMPDIR:-/tmp}/asg-id.XXXXXX") &&
    ASG_ERR_FILE=$(mktemp "${TMPDIR:-/tmp}/asg-id.XXXXXX") || {
    rm -f "${ASG_BODY_FILE:-}"
    asg_die 70 "cannot create a temporary file in ${TMPDIR:-/tmp}"
  }
  trap 'rm -f "$ASG_BODY_FILE" "$ASG_ERR_FILE"' EXIT
}

# Reads identity.env. What it says about the lease (identifier, epoch, the registry's fence
# window and TTL, when the claim was sent) comes from there and nowhere else; the registry
# URLs of the environment, when set, win over the ones recorded at claim time.
asg_load_identity() {
  if [ ! -r "$ASG_ID_IDENTITY_FILE" ]; then
    asg_log "no identity at $ASG_ID_IDENTITY_FILE (run asg-id-claim first)"
    return 1
  fi
  configured_urls=${ASG_ID_REGISTRY_URL:-}
  unset ASG_ID_IDENTIFIER ASG_ID_EPOCH ASG_ID_FENCE_AFTER_MS ASG_ID_TTL_MS ASG_ID_TTL_SECONDS ASG_ID_CLAIMED_AT_MS
  # shellcheck disable=SC1090
  . "$ASG_ID_IDENTITY_FILE"
  [ -n "$configured_urls" ] && ASG_ID_REGISTRY_URL=$configured_urls
  if [ -z "${ASG_ID_IDENTIFIER:-}" ] || [ -z "${ASG_ID_EPOCH:-}" ] || [ -z "${ASG_ID_CLIENT_ID:-}" ]; then
    asg_log "$ASG_ID_IDENTITY_FILE lacks the identifier, epoch or client id (run asg-id-claim again)"
    return 1
  fi
}

asg_json_lease() {
  printf '{"client_id":"%s","identifier":"%s","epoch":%s}' "$ASG_ID_CLIENT_ID" "$ASG_ID_IDENTIFIER" "$ASG_ID_EPOCH"
}

# Gives the identifier back; a 409 or 404 means it is not ours any more, which is what we wanted.
asg_release() {
  if ! asg_post /release "$(asg_json_lease)"; then
    asg_log "release of $ASG_ID_IDENTIFIER failed ($ASG_WHY); the reaper will reclaim it"
    return 1
  fi
  case "$ASG_CODE" in
    200) asg_log "released $ASG_ID_IDENTIFIER (epoch $ASG_ID_EPOCH)"; return 0 ;;
    404|409) asg_log "$ASG_ID_IDENTIFIER was no longer ours ($(asg_error_code))"; return 0 ;;
    *) asg_log "release of $ASG_ID_IDENTIFIER refused (HTTP $ASG_CODE $(asg_error_code) from $ASG_URL); the reaper will reclaim it"; return 1 ;;
  esac
}
