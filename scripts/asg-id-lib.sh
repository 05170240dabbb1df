# Shared by the asg-id VM scripts. POSIX sh + curl: what an EC2 image has.
# Every setting (environment, or /etc/asg-id/agent.env read by the systemd units) is in the
# README's table under "The VM side"; the defaults are here.

ASG_ID_STATE_DIR=${ASG_ID_STATE_DIR:-/run/asg-id}
ASG_ID_IDENTITY_FILE="$ASG_ID_STATE_DIR/identity.env"
# The holder key the claim drew for this boot (mode 0600): liveness and release must carry it.
ASG_ID_KEY_FILE="$ASG_ID_STATE_DIR/holder.key"
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
    # The body from a file: it carries the holder key, which must not show in `ps`.
    printf '%s' "$2" > "$ASG_REQ_FILE"
    if [ -n "${ASG_ID_TOKEN:-}" ]; then
      ASG_CODE=$(curl -sS -o "$ASG_BODY_FILE" -D "$ASG_HDR_FILE" -w '%{http_code}' --max-time "$max" \
        -H 'Content-Type: application/json' -H "Authorization: Bearer $ASG_ID_TOKEN" \
        --data-binary "@$ASG_REQ_FILE" "$u$1" 2>"$ASG_ERR_FILE")
    else
      ASG_CODE=$(curl -sS -o "$ASG_BODY_FILE" -D "$ASG_HDR_FILE" -w '%{http_code}' --max-time "$max" \
        -H 'Content-Type: application/json' --data-binary "@$ASG_REQ_FILE" "$u$1" 2>"$ASG_ERR_FILE")
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

# Retry-After of the last answer, in whole seconds; empty when it had none.
asg_retry_after() {
  tr -d '\r' < "$ASG_HDR_FILE" | sed -n 's/^[Rr][Ee][Tt][Rr][Yy]-[Aa][Ff][Tt][Ee][Rr]: *\([0-9][0-9]*\)$/\1/p' | tail -n 1
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

# Temporary files for a request and its answer (mktemp makes them 0600: the request carries the key).
asg_body_file() {
  ASG_BODY_FILE=$(mktemp "${TMPDIR:-/tmp}/asg-id.XXXXXX") &&
    ASG_ERR_FILE=$(mktemp "${TMPDIR:-/tmp}/asg-id.XXXXXX") &&
    ASG_HDR_FILE=$(mktemp "${TMPDIR:-/tmp}/asg-id.XXXXXX") &&
    ASG_REQ_FILE=$(mktemp "${TMPDIR:-/tmp}/asg-id.XXXXXX") || {
    rm -f "${ASG_BODY_FILE:-}" "${ASG_ERR_FILE:-}" "${ASG_HDR_FILE:-}"
    asg_die 70 "cannot create a temporary file in ${TMPDIR:-/tmp}"
  }
  trap 'rm -f "$ASG_BODY_FILE" "$ASG_ERR_FILE" "$ASG_HDR_FILE" "$ASG_REQ_FILE"' EXIT
}

# A holder key the registry takes: 16-256 of A-Za-z0-9._~+/=:- (the claim draws 48 hex digits).
asg_is_key() {
  case "$1" in
    ''|*[!A-Za-z0-9._~+/=:-]*) return 1 ;;
  esac
  [ "${#1}" -ge 16 ] && [ "${#1}" -le 256 ]
}

# This boot's id (Linux), so a key kept in a state folder that outlives a reboot is not reused.
asg_boot_id() {
  cat /proc/sys/kernel/random/boot_id 2>/dev/null || echo unknown
}

# Reads the holder key of this boot into ASG_KEY (empty when there is none: an identity
# claimed by an older script, or a key file of another boot).
asg_load_key() {
  ASG_KEY=
  [ -r "$ASG_ID_KEY_FILE" ] || return 0
  { read -r key_boot; read -r key; } < "$ASG_ID_KEY_FILE" 2>/dev/null || return 0
  [ "$key_boot" = "$(asg_boot_id)" ] && asg_is_key "$key" && ASG_KEY=$key
  return 0
}

# The watermark to send into ASG_WM, from the first line of ASG_ID_WATERMARK_FILE (a whole
# number below 2^53, e.g. the last millisecond timestamp the application put in an id); empty
# when the file is unset, missing or holds something else (said once, and nothing is sent).
asg_watermark() {
  ASG_WM=
  [ -n "${ASG_ID_WATERMARK_FILE:-}" ] || return 0
  w=
  [ -r "$ASG_ID_WATERMARK_FILE" ] && read -r w < "$ASG_ID_WATERMARK_FILE" 2>/dev/null
  w=$(printf '%s' "$w" | tr -d ' \t\r')
  case "$w" in
    ''|*[!0-9]*) w= ;;
    *)
      w=$(printf '%s' "$w" | sed 's/^0*//')
      [ -n "$w" ] || w=0
      # At most 2^53 - 1, the largest whole number a JSON number carries exactly.
      { [ "${#w}" -lt 16 ] || { [ "${#w}" -eq 16 ] && awk -v w="$w" 'BEGIN { exit !(w + 0 <= 9007199254740991) }'; }; } || w=
      ;;
  esac
  if [ -z "$w" ] && [ "${ASG_WM_WARNED:-}" != "$ASG_ID_WATERMARK_FILE" ]; then
    asg_log "ASG_ID_WATERMARK_FILE=$ASG_ID_WATERMARK_FILE holds no whole number below 2^53; sending no watermark"
    ASG_WM_WARNED=$ASG_ID_WATERMARK_FILE
  fi
  [ -n "$w" ] && ASG_WM_WARNED=
  ASG_WM=$w
}

# Writes identity.env from the ASG_ID_* variables, through a temporary file, and reads it back.
asg_write_identity() {
  tmp="$ASG_ID_STATE_DIR/.identity.env.$$"
  if (
    cat > "$tmp" <<ENV
ASG_ID_IDENTIFIER=$ASG_ID_IDENTIFIER
ASG_ID_EPOCH=$ASG_ID_EPOCH
ASG_ID_CLIENT_ID=$ASG_ID_CLIENT_ID
ASG_ID_REGISTRY_URL=$ASG_ID_REGISTRY_URL
ASG_ID_TTL_SECONDS=$ASG_ID_TTL_SECONDS
ASG_ID_TTL_MS=$ASG_ID_TTL_MS
ASG_ID_FENCE_AFTER_MS=$ASG_ID_FENCE_AFTER_MS
ASG_ID_CLAIMED_AT_MS=$ASG_ID_CLAIMED_AT_MS
ASG_ID_WATERMARK=$ASG_ID_WATERMARK
ENV
    chmod 0644 "$tmp" && mv -f "$tmp" "$ASG_ID_IDENTITY_FILE" &&
      ( . "$ASG_ID_IDENTITY_FILE" && [ "$ASG_ID_IDENTIFIER" = "$1" ] && [ "$ASG_ID_EPOCH" = "$2" ] ) ||
      { echo "$ASG_ID_IDENTITY_FILE does not read back" >&2; false; }
  ) 2>"$ASG_ERR_FILE"; then
    return 0
  fi
  rm -f "$tmp" 2>/dev/null
  return 1
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
  unset ASG_ID_IDENTIFIER ASG_ID_EPOCH ASG_ID_FENCE_AFTER_MS ASG_ID_TTL_MS ASG_ID_TTL_SECONDS ASG_ID_CLAIMED_AT_MS ASG_ID_WATERMARK
  # shellcheck disable=SC1090
  . "$ASG_ID_IDENTITY_FILE"
  [ -n "$configured_urls" ] && ASG_ID_REGISTRY_URL=$configured_urls
  asg_load_key
  if [ -z "${ASG_ID_IDENTIFIER:-}" ] || [ -z "${ASG_ID_EPOCH:-}" ] || [ -z "${ASG_ID_CLIENT_ID:-}" ]; then
    asg_log "$ASG_ID_IDENTITY_FILE lacks the identifier, epoch or client id (run asg-id-claim again)"
    return 1
  fi
}

# The body of a liveness or release, into ASG_LEASE_JSON: the lease, its key, and the watermark
# when there is one.
asg_json_lease() {
  extra=
  [ -n "${ASG_KEY:-}" ] && extra=",\"key\":\"$ASG_KEY\""
  asg_watermark
  [ -n "$ASG_WM" ] && extra="$extra,\"watermark\":$ASG_WM"
  # Built in the shell, not in a subshell: a renewal forks nothing it need not.
  ASG_LEASE_JSON="{\"client_id\":\"$ASG_ID_CLIENT_ID\",\"identifier\":\"$ASG_ID_IDENTIFIER\",\"epoch\":$ASG_ID_EPOCH$extra}"
}

# Gives the identifier back; a 409 or 404 means it is not ours any more, which is what we wanted.
asg_release() {
  asg_json_lease
  if ! asg_post /release "$ASG_LEASE_JSON"; then
    asg_log "release of $ASG_ID_IDENTIFIER failed ($ASG_WHY); the reaper will reclaim it"
    return 1
  fi
  case "$ASG_CODE" in
    200) asg_log "released $ASG_ID_IDENTIFIER (epoch $ASG_ID_EPOCH)"; return 0 ;;
    404|409) asg_log "$ASG_ID_IDENTIFIER was no longer ours ($(asg_error_code))"; return 0 ;;
    *) asg_log "release of $ASG_ID_IDENTIFIER refused (HTTP $ASG_CODE $(asg_error_code) from $ASG_URL); the reaper will reclaim it"; return 1 ;;
  esac
}
