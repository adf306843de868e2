#!/usr/bin/env bash
# Run every fuzz target for SECONDS each (default 30) on its seed corpus, on stable Rust.
#   fuzz/run.sh             # the short run CI can call (11 targets x 30 s, plus the build)
#   fuzz/run.sh 3600        # a long run
#   fuzz/run.sh 60 engine_ops http_bodies   # some targets only
# New inputs go to fuzz/target/corpus/<target>/ (not to the committed seeds); crashes to
# fuzz/artifacts/<target>/. Prints one line per target: executions and whether it crashed.
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-30}"; shift || true
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1   # cargo fuzz needs -Z flags; stable compilers accept them with this
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list)
cargo fuzz build
status=0
for t in "${targets[@]}"; do
  mkdir -p "target/corpus/$t" "corpus/$t"
  log="target/fuzz-$t.log"
  if cargo fuzz run "$t" "target/corpus/$t" "corpus/$t" -- \
       -max_total_time="$secs" -timeout=20 -rss_limit_mb=3072 -print_final_stats=1 >"$log" 2>&1; then
    result=ok
  else
    result="CRASH (see $log and artifacts/$t/)"; status=1
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
  printf '%-16s %10s executions  %s\n' "$t" "$runs" "$result"
done
exit $status
