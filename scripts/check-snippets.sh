#!/usr/bin/env bash
# Checks that each Rust snippet of README.md and docs/*.md compiles in a
# crate of its own whose dependencies are exactly the ```toml lines shown
# before it (the bbr crates taken from this checkout): the doc tests
# compile the code, this checks that a reader who copies the Cargo.toml
# lines gets the crates and features the code needs.
#
# A snippet without a ```toml block before it in its file fails. Snippets
# are compiled with `cargo check` in $CARGO_TARGET_DIR/snippets (default
# target/snippets), so a second run is quick.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
case "$target" in /*) ;; *) target="$root/$target" ;; esac
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Splits a Markdown file into snippet crates: $work/<file>-<line>/.
python3 - "$root" "$work" README.md docs/*.md <<'EOF'
import os, re, sys

root, work, files = sys.argv[1], sys.argv[2], sys.argv[3:]
failed = False
for path in files:
    toml = None
    block, kind, start = None, None, 0
    for n, line in enumerate(open(os.path.join(root, path)), 1):
        fence = re.match(r"^```(\S*)\s*$", line)
        if block is None and fence and fence.group(1):
            block, kind, start = [], fence.group(1), n
        elif block is not None and line.rstrip() == "```":
            text = "".join(block)
            if kind == "toml" and text.startswith("[dependencies]"):
                toml = text
            elif kind.split(",")[0] == "rust":
                if toml is None:
                    print(f"{path}:{start}: a Rust snippet with no Cargo.toml lines before it")
                    failed = True
                else:
                    # The bbr crates from this checkout, not the registry.
                    deps = re.sub(r'^(bbr-[a-z]+) = "[^"]*"$',
                                  rf'\1 = {{ path = "{root}/crates/\1" }}', toml, flags=re.M)
                    deps = re.sub(r'^(bbr-[a-z]+) = \{ version = "[^"]*"',
                                  rf'\1 = {{ path = "{root}/crates/\1"', deps, flags=re.M)
                    code = "".join(l for l in text.splitlines(True)
                                   if not re.match(r"^\s*# ", l) and l.strip() != "#")
                    if "fn main" not in code:
                        code = "fn main() {\n" + code + "}\n"
                    name = re.sub(r"[^a-z0-9]+", "-", path.lower()) + str(start)
                    crate = os.path.join(work, name)
                    os.makedirs(os.path.join(crate, "src"))
                    with open(os.path.join(crate, "Cargo.toml"), "w") as f:
                        f.write(f'[package]\nname = "snippet-{name}"\nversion = "0.0.0"\n'
                                f'edition = "2024"\npublish = false\n\n[workspace]\n\n{deps}')
                    with open(os.path.join(crate, "src", "main.rs"), "w") as f:
                        f.write(f"// {path}, line {start}\n#![allow(unused)]\n{code}")
            block = None
        elif block is not None:
            block.append(line)
sys.exit(1 if failed else 0)
EOF

status=0
for crate in "$work"/*/; do
  name="$(basename "$crate")"
  # The workspace's lock file: the same versions as the doc tests.
  cp Cargo.lock "$crate"
  if ! (cd "$crate" && CARGO_TARGET_DIR="$target/snippets" cargo check -q 2>"$work/$name.log"); then
    echo "check-snippets: $(sed -n '1s|^// ||p' "$crate/src/main.rs"): does not compile with its Cargo.toml lines:" >&2
    cat "$crate/Cargo.toml" "$work/$name.log" >&2
    status=1
  fi
done
[ "$status" -eq 0 ] && echo "check-snippets: $(ls -d "$work"/*/ | wc -l) snippets compile with the Cargo.toml lines they show"
exit "$status"
