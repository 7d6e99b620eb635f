# Sourced by run_gym.sh and run_robomimic.sh: launch the release preset "<suite>_<TASK>" on the base
# policy in $BASE_POLICY (required), its kind read from the directory unless BASE_POLICY_KIND is
# set: DiffusionMLPPolicy.save writes a "sampler" section (DDIM), a flow_mlp directory does not.
#   run_state_release <suite> <default task> [launcher arguments...]
run_state_release() {
  local suite="$1" default_task="$2"
  shift 2
  source "$(dirname "${BASH_SOURCE[0]}")/sim_env.sh"
  export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
  local task="${TASK:-$default_task}"
  local logdir="${LOGDIR:-./logs/DSRL_${suite}_${task}}"
  if [ -z "${BASE_POLICY:-}" ]; then
    echo "run_${suite}.sh: set BASE_POLICY=<base policy directory> (a state-conditioned policy" \
      "with the observation and action sizes of ${suite} ${task})" >&2
    exit 2
  fi
  local kind="${BASE_POLICY_KIND:-}"
  if [ -z "$kind" ]; then
    if grep -q '"sampler"' "$BASE_POLICY/config.json" 2>/dev/null; then kind=diffusion_mlp
    else kind=flow_mlp; fi
  fi
  python examples/launch_train_sim.py --env "${suite}_${task}" --logdir "$logdir" \
    --config.base_policy.kind="$kind" --config.base_policy.checkpoint="$BASE_POLICY" "$@"
}
