
# Added to clap's script by balctl (src/docs.rs): the NAME of `balctl policy
# get|update|delete NAME` completes to the policies the installed balctl
# lists (from BALCTL_STATE_DIR, else the default state dir).
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from get update delete" -f -a "(balctl policy list -o 'jsonpath={range .policies[*]}{.name}{\"\n\"}{end}' 2>/dev/null)"
