# Sourced by the scripts that install Debian packages: `pinned NAME VERSION`
# prints `NAME=VERSION` when apt has that version, else `NAME` (logged
# through the sourcing script's `log`).
pinned() {
  if apt-cache madison "$1" 2>/dev/null | awk '{print $3}' | grep -qxF "$2"; then
    echo "$1=$2"
  else
    log "$1 $2 is no longer in the archive: installing the current one"
    echo "$1"
  fi
}
