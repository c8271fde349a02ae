# Sourced by scripts/train.sh and scripts/sample.sh: run the jobs of a batch one after the other,
# keep going when one fails, and print a table of every job's result at the end.
#
#   BATCH_TITLE=identity                the table's first column
#   batch_run NAME PATTERN COMMAND...   run COMMAND (output shown as it comes, and kept in $BATCH_LOG);
#                                       returns its status. The table's detail is the last output line
#                                       matching PATTERN on success, the `error: ...` line on failure.
#   batch_table                         print the table; $BATCH_FAILED counts the failures.
#
# Ctrl-C (a job exiting 130) stops the batch at once, after printing the table of what ran.

BATCH_NAMES=()
BATCH_RESULTS=()
BATCH_DETAILS=()
BATCH_FAILED=0
BATCH_LOG=$(mktemp)
trap 'rm -f "$BATCH_LOG"' EXIT

batch_run() {
  local name=$1 pattern=$2 rc detail
  shift 2
  set +e
  "$@" 2>&1 | tee "$BATCH_LOG"
  rc=${PIPESTATUS[0]}
  set -e
  BATCH_NAMES+=("$name")
  if [ "$rc" -eq 0 ]; then
    detail=$(tr '\r' '\n' <"$BATCH_LOG" | grep -- "$pattern" | tail -1 || true)
    BATCH_RESULTS+=("ok")
  else
    detail=$(tr '\r' '\n' <"$BATCH_LOG" | grep '^error: ' | tail -1 | sed 's/^error: //' || true)
    [ -n "$detail" ] || detail=$(tr '\r' '\n' <"$BATCH_LOG" | grep -v '^[[:space:]]*$' | tail -1 || true)
    [ "${#detail}" -le 200 ] || detail="${detail:0:197}..."
    detail="$detail (exit $rc)"
    BATCH_RESULTS+=("FAILED")
    BATCH_FAILED=$((BATCH_FAILED + 1))
  fi
  BATCH_DETAILS+=("$detail")
  if [ "$rc" -eq 130 ]; then
    batch_table
    echo "interrupted: the jobs after $name did not run; rerun the same command to go on" >&2
    exit 130
  fi
  return "$rc"
}

batch_table() {
  local title=${BATCH_TITLE:-job} i name
  local width=${#title}
  for name in "${BATCH_NAMES[@]}"; do
    [ "${#name}" -gt "$width" ] && width=${#name}
  done
  echo
  printf "%-${width}s  %-6s  %s\n" "$title" "result" "detail"
  printf "%-${width}s  %-6s  %s\n" "$(printf '%*s' "$width" '' | tr ' ' -)" "------" "------"
  for i in "${!BATCH_NAMES[@]}"; do
    printf "%-${width}s  %-6s  %s\n" "${BATCH_NAMES[$i]}" "${BATCH_RESULTS[$i]}" "${BATCH_DETAILS[$i]}"
  done
  echo "${#BATCH_NAMES[@]} run, $BATCH_FAILED failed"
}
