
# Added to clap's script by balctl (src/docs.rs): the NAME of `balctl policy
# get|update|delete NAME` completes to the policies the installed balctl
# lists, from the state dir the command line names (--state-dir, else
# BALCTL_STATE_DIR, else the default).
_balctl_policy_names() {
    local i word positional=() state_dir=()
    for ((i = 1; i < COMP_CWORD; i++)); do
        word="${COMP_WORDS[i]}"
        case "${word}" in
            --state-dir) state_dir=(--state-dir "${COMP_WORDS[i + 1]}"); i=$((i + 1)) ;;
            --bpffs | --output | -o | --log-format) i=$((i + 1)) ;;
            -*) ;;
            *) positional+=("${word}") ;;
        esac
    done
    if [[ ${#positional[@]} -eq 2 && ${positional[0]} == policy && ${COMP_WORDS[COMP_CWORD]} != -* ]]; then
        case "${positional[1]}" in
            get | update | delete)
                local names
                names="$("${COMP_WORDS[0]}" "${state_dir[@]}" policy list \
                    -o 'jsonpath={range .policies[*]}{.name}{"\n"}{end}' 2>/dev/null)"
                COMPREPLY=($(compgen -W "${names}" -- "${COMP_WORDS[COMP_CWORD]}"))
                return 0
                ;;
        esac
    fi
    _balctl "$@"
}

if [[ "${BASH_VERSINFO[0]}" -eq 4 && "${BASH_VERSINFO[1]}" -ge 4 || "${BASH_VERSINFO[0]}" -gt 4 ]]; then
    complete -F _balctl_policy_names -o nosort -o bashdefault -o default balctl
else
    complete -F _balctl_policy_names -o bashdefault -o default balctl
fi
