# Sourced by the time-limited GPU call scripts (world_gpu_call.sh, world_identity_call.sh, ...): their state
# travels between calls as <= 15 MiB pieces NAME.tgz.00, .01, ... (a call returns at most 8 files of 16 MiB).
#   restore_state NAME DEST              unpack ${STATE:-.gpu_ops/state}/NAME.tgz.* into DEST (if any)
#   pack_state NAME SRC OUTD [TAR ARGS]   pack SRC (tar's own arguments: excludes, then paths) into OUTD/NAME.tgz.*
restore_state() {
  local name=$1 dest=$2 dir=${STATE:-.gpu_ops/state}
  ls "$dir/$name".tgz.* >/dev/null 2>&1 || return 0
  mkdir -p "$dest" && cat "$dir/$name".tgz.* | tar xz -C "$dest" && echo "state $name restored from $dir"
}
pack_state() {
  local name=$1 src=$2 outd=$3; shift 3
  tar czf "/tmp/$name.tgz" -C "$src" "$@" && split -b 15M -d "/tmp/$name.tgz" "$outd/$name.tgz." && rm -f "/tmp/$name.tgz"
}
# overlay_world DEST PART...   DEST: a copy of checkpoints/world in which each PART (a file or folder: a candidate's
#                              models/, renderer.json, faces/, ...) replaces its namesake whole, marked .candidate
overlay_world() {
  local dest=$1 f; shift
  rm -rf "$dest" && mkdir -p "$dest" && cp -r checkpoints/world/. "$dest/" || return 1
  for f in "$@"; do rm -rf "${dest:?}/${f##*/}" && cp -r "$f" "$dest/" || return 1; done
  touch "$dest/.candidate"
}
