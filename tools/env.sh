# The environment edge_lam runs in from this checkout: `source tools/env.sh` (the Makefile does this for you).
# It activates .venv, makes the ROS 2 wheels findable (AMENT_PREFIX_PATH), sources the colcon install of
# edge_lam_msgs and edge_lam, and selects Fast DDS with edge_lam's profile. Nothing here downloads anything.

_edge_lam_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
source "$_edge_lam_root/.venv/bin/activate"
case ":${AMENT_PREFIX_PATH:-}:" in
  *":$VIRTUAL_ENV:"*) ;;
  *) export AMENT_PREFIX_PATH="$VIRTUAL_ENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}" ;;
esac
case ":${CMAKE_PREFIX_PATH:-}:" in
  *":$VIRTUAL_ENV:"*) ;;
  *) export CMAKE_PREFIX_PATH="$VIRTUAL_ENV${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}" ;;
esac
if [ -f "$_edge_lam_root/install/setup.bash" ]; then
  case $- in *u*) _edge_lam_nounset=1; set +u ;; esac  # colcon's setup scripts read unset variables
  # shellcheck disable=SC1091
  source "$_edge_lam_root/install/setup.bash"
  [ -n "${_edge_lam_nounset:-}" ] && set -u
  unset _edge_lam_nounset
fi
export RMW_IMPLEMENTATION=rmw_fastrtps_cpp
# EDGE_LAM_NETWORK=interhost selects the profile for traffic between hosts (UDP only, fragments that fit a frame:
# doc/network.md, "Across hosts"); unset or onehost, the one-host profile (shared memory). A profile file the user
# chose is kept; one of ours is replaced, so sourcing this again with another EDGE_LAM_NETWORK switches.
case "${EDGE_LAM_NETWORK:-onehost}" in
  interhost) _edge_lam_profile="$_edge_lam_root/config/fastdds_interhost.xml" ;;
  onehost) _edge_lam_profile="$_edge_lam_root/config/fastdds.xml" ;;
  *) echo "tools/env.sh: EDGE_LAM_NETWORK must be onehost or interhost, not '$EDGE_LAM_NETWORK'" >&2
     _edge_lam_profile="$_edge_lam_root/config/fastdds.xml" ;;
esac
case "${FASTDDS_DEFAULT_PROFILES_FILE:-}" in
  ""|"$_edge_lam_root/config/fastdds.xml"|"$_edge_lam_root/config/fastdds_interhost.xml")
    export FASTDDS_DEFAULT_PROFILES_FILE="$_edge_lam_profile" ;;
esac
export EDGE_LAM_CACHE="${EDGE_LAM_CACHE:-$_edge_lam_root/.cache}"
# Models come from the cache folder only; never from a hub.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
unset _edge_lam_root _edge_lam_profile
