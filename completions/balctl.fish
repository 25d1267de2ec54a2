# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_balctl_global_optspecs
    string join \n bpffs= state-dir= o/output= no-headers v/verbose q/quiet log-format= h/help V/version
end

function __fish_balctl_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_balctl_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_balctl_using_subcommand
    set -l cmd (__fish_balctl_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c balctl -n "__fish_balctl_needs_command" -l bpffs -d 'Pin directory for balctl\'s maps and links (on a bpf filesystem)' -r -F
complete -c balctl -n "__fish_balctl_needs_command" -l state-dir -d 'Directory where applied state is kept' -r -F
complete -c balctl -n "__fish_balctl_needs_command" -s o -l output -d 'Output format: table, wide (the table with more columns), json, yaml, or jsonpath=TEMPLATE (kubectl\'s JSONPath template of the JSON document, e.g. -o jsonpath=\'{range .services[*]}{.frontend}{"\\n"}{end}\')' -r -f -a "table\t'A table for people'
wide\t'The table with more columns'
json\t'The JSON document'
yaml\t'The same document as YAML'
jsonpath=\t'kubectl\'s JSONPath template of the JSON document, e.g. jsonpath=\'{.services[*].name}\''"
complete -c balctl -n "__fish_balctl_needs_command" -l log-format -d 'Log lines as text (TIME LEVEL message) or JSON, one object a line with time (RFC 3339, UTC), level, target and message' -r -f -a "text\t''
json\t''"
complete -c balctl -n "__fish_balctl_needs_command" -l no-headers -d 'Print tables without their header row (-o table and wide; other formats have no headers and ignore it, as kubectl\'s does)'
complete -c balctl -n "__fish_balctl_needs_command" -s v -l verbose -d 'Print more (repeat for debug logs)'
complete -c balctl -n "__fish_balctl_needs_command" -s q -l quiet -d 'Print only errors'
complete -c balctl -n "__fish_balctl_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c balctl -n "__fish_balctl_needs_command" -s V -l version -d 'Print version'
complete -c balctl -n "__fish_balctl_needs_command" -f -a "load" -d 'Load the programs and attach them to a cgroup, or replace them in place'
complete -c balctl -n "__fish_balctl_needs_command" -f -a "unload" -d 'Detach every hook and remove every pin'
complete -c balctl -n "__fish_balctl_needs_command" -f -a "status" -d 'Show whether balctl is loaded, where, and how full its maps are'
complete -c balctl -n "__fish_balctl_needs_command" -f -a "policy" -d 'Add, change, list and delete balancing rules'
complete -c balctl -n "__fish_balctl_needs_command" -f -a "sync" -d 'Make the maps match state files: plan the difference, print it, apply it'
complete -c balctl -n "__fish_balctl_needs_command" -f -a "dump" -d 'Show what the pinned maps hold'
complete -c balctl -n "__fish_balctl_needs_command" -f -a "trace" -d 'Show resolutions as they happen: who connected where, and which backend it got'
complete -c balctl -n "__fish_balctl_needs_command" -f -a "explain" -d 'Show what a connect from a client to DEST would resolve to, without connecting'
complete -c balctl -n "__fish_balctl_needs_command" -f -a "completions" -d 'Print a shell completion script'
complete -c balctl -n "__fish_balctl_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c balctl -n "__fish_balctl_using_subcommand load" -l cgroup -d 'cgroup v2 directory to attach to [default: the cgroup2 root]' -r -F
complete -c balctl -n "__fish_balctl_using_subcommand load" -l map-size -d 'Capacity of a map when it is created, as NAME=ENTRIES (services, backends, affinity, sockets, revnat, nodes, rate_limits, external, maglev, source_ranges, flows); repeat or separate with commas' -r
complete -c balctl -n "__fish_balctl_using_subcommand load" -l devices -d 'Attach the tc programs, which translate traffic from outside the node (node ports, LoadBalancer and external IPs), to these network devices' -r
complete -c balctl -n "__fish_balctl_using_subcommand load" -l object -d 'Load the eBPF programs from this object file instead of the built-in ones' -r -F
complete -c balctl -n "__fish_balctl_using_subcommand load" -l bpffs -d 'Pin directory for balctl\'s maps and links (on a bpf filesystem)' -r -F
complete -c balctl -n "__fish_balctl_using_subcommand load" -l state-dir -d 'Directory where applied state is kept' -r -F
complete -c balctl -n "__fish_balctl_using_subcommand load" -s o -l output -d 'Output format: table, wide (the table with more columns), json, yaml, or jsonpath=TEMPLATE (kubectl\'s JSONPath template of the JSON document, e.g. -o jsonpath=\'{range .services[*]}{.frontend}{"\\n"}{end}\')' -r -f -a "table\t'A table for people'
wide\t'The table with more columns'
json\t'The JSON document'
yaml\t'The same document as YAML'
jsonpath=\t'kubectl\'s JSONPath template of the JSON document, e.g. jsonpath=\'{.services[*].name}\''"
complete -c balctl -n "__fish_balctl_using_subcommand load" -l log-format -d 'Log lines as text (TIME LEVEL message) or JSON, one object a line with time (RFC 3339, UTC), level, target and message' -r -f -a "text\t''
json\t''"
complete -c balctl -n "__fish_balctl_using_subcommand load" -l no-headers -d 'Print tables without their header row (-o table and wide; other formats have no headers and ignore it, as kubectl\'s does)'
complete -c balctl -n "__fish_balctl_using_subcommand load" -s v -l verbose -d 'Print more (repeat for debug logs)'
complete -c balctl -n "__fish_balctl_using_subcommand load" -s q -l quiet -d 'Print only errors'
complete -c balctl -n "__fish_balctl_using_subcommand load" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c balctl -n "__fish_balctl_using_subcommand load" -s V -l version -d 'Print version'
complete -c balctl -n "__fish_balctl_using_subcommand unload" -l bpffs -d 'Pin directory for balctl\'s maps and links (on a bpf filesystem)' -r -F
complete -c balctl -n "__fish_balctl_using_subcommand unload" -l state-dir -d 'Directory where applied state is kept' -r -F
complete -c balctl -n "__fish_balctl_using_subcommand unload" -s o -l output -d 'Output format: table, wide (the table with more columns), json, yaml, or jsonpath=TEMPLATE (kubectl\'s JSONPath template of the JSON document, e.g. -o jsonpath=\'{range .services[*]}{.frontend}{"\\n"}{end}\')' -r -f -a "table\t'A table for people'
wide\t'The table with more columns'
json\t'The JSON document'
yaml\t'The same document as YAML'
jsonpath=\t'kubectl\'s JSONPath template of the JSON document, e.g. jsonpath=\'{.services[*].name}\''"
complete -c balctl -n "__fish_balctl_using_subcommand unload" -l log-format -d 'Log lines as text (TIME LEVEL message) or JSON, one object a line with time (RFC 3339, UTC), level, target and message' -r -f -a "text\t''
json\t''"
complete -c balctl -n "__fish_balctl_using_subcommand unload" -s y -l yes -d 'Do not ask for confirmation'
complete -c balctl -n "__fish_balctl_using_subcommand unload" -l purge -d 'Also remove the state dir\'s files (the applied rules and ids), so that nothing of balctl is left on the machine; `load` then starts empty. For uninstalling (deploy/uninstall.yaml)'
complete -c balctl -n "__fish_balctl_using_subcommand unload" -l stay -d 'After unloading, keep running until SIGTERM or SIGINT, then exit 0: the command of a DaemonSet\'s container, which must not exit (deploy/uninstall.yaml). Exits 1 at once if unloading fails'
complete -c balctl -n "__fish_balctl_using_subcommand unload" -l no-headers -d 'Print tables without their header row (-o table and wide; other formats have no headers and ignore it, as kubectl\'s does)'
complete -c balctl -n "__fish_balctl_using_subcommand unload" -s v -l verbose -d 'Print more (repeat for debug logs)'
complete -c balctl -n "__fish_balctl_using_subcommand unload" -s q -l quiet -d 'Print only errors'
complete -c balctl -n "__fish_balctl_using_subcommand unload" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c balctl -n "__fish_balctl_using_subcommand unload" -s V -l version -d 'Print version'
complete -c balctl -n "__fish_balctl_using_subcommand status" -l bpffs -d 'Pin directory for balctl\'s maps and links (on a bpf filesystem)' -r -F
complete -c balctl -n "__fish_balctl_using_subcommand status" -l state-dir -d 'Directory where applied state is kept' -r -F
complete -c balctl -n "__fish_balctl_using_subcommand status" -s o -l output -d 'Output format: table, wide (the table with more columns), json, yaml, or jsonpath=TEMPLATE (kubectl\'s JSONPath template of the JSON document, e.g. -o jsonpath=\'{range .services[*]}{.frontend}{"\\n"}{end}\')' -r -f -a "table\t'A table for people'
wide\t'The table with more columns'
json\t'The JSON document'
yaml\t'The same document as YAML'
jsonpath=\t'kubectl\'s JSONPath template of the JSON document, e.g. jsonpath=\'{.services[*].name}\''"
complete -c balctl -n "__fish_balctl_using_subcommand status" -l log-format -d 'Log lines as text (TIME LEVEL message) or JSON, one object a line with time (RFC 3339, UTC), level, target and message' -r -f -a "text\t''
json\t''"
complete -c balctl -n "__fish_balctl_using_subcommand status" -l no-headers -d 'Print tables without their header row (-o table and wide; other formats have no headers and ignore it, as kubectl\'s does)'
complete -c balctl -n "__fish_balctl_using_subcommand status" -s v -l verbose -d 'Print more (repeat for debug logs)'
complete -c balctl -n "__fish_balctl_using_subcommand status" -s q -l quiet -d 'Print only errors'
complete -c balctl -n "__fish_balctl_using_subcommand status" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c balctl -n "__fish_balctl_using_subcommand status" -s V -l version -d 'Print version'
complete -c balctl -n "__fish_balctl_using_subcommand policy; and not __fish_seen_subcommand_from add update list get delete help" -l bpffs -d 'Pin directory for balctl\'s maps and links (on a bpf filesystem)' -r -F
complete -c balctl -n "__fish_balctl_using_subcommand policy; and not __fish_seen_subcommand_from add update list get delete help" -l state-dir -d 'Directory where applied state is kept' -r -F
complete -c balctl -n "__fish_balctl_using_subcommand policy; and not __fish_seen_subcommand_from add update list get delete help" -s o -l output -d 'Output format: table, wide (the table with more columns), json, yaml, or jsonpath=TEMPLATE (kubectl\'s JSONPath template of the JSON document, e.g. -o jsonpath=\'{range .services[*]}{.frontend}{"\\n"}{end}\')' -r -f -a "table\t'A table for people'
wide\t'The table with more columns'
json\t'The JSON document'
yaml\t'The same document as YAML'
jsonpath=\t'kubectl\'s JSONPath template of the JSON document, e.g. jsonpath=\'{.services[*].name}\''"
complete -c balctl -n "__fish_balctl_using_subcommand policy; and not __fish_seen_subcommand_from add update list get delete help" -l log-format -d 'Log lines as text (TIME LEVEL message) or JSON, one object a line with time (RFC 3339, UTC), level, target and message' -r -f -a "text\t''
json\t''"
complete -c balctl -n "__fish_balctl_using_subcommand policy; and not __fish_seen_subcommand_from add update list get delete help" -l no-headers -d 'Print tables without their header row (-o table and wide; other formats have no headers and ignore it, as kubectl\'s does)'
complete -c balctl -n "__fish_balctl_using_subcommand policy; and not __fish_seen_subcommand_from add update list get delete help" -s v -l verbose -d 'Print more (repeat for debug logs)'
complete -c balctl -n "__fish_balctl_using_subcommand policy; and not __fish_seen_subcommand_from add update list get delete help" -s q -l quiet -d 'Print only errors'
complete -c balctl -n "__fish_balctl_using_subcommand policy; and not __fish_seen_subcommand_from add update list get delete help" -s h -l help -d 'Print help'
complete -c balctl -n "__fish_balctl_using_subcommand policy; and not __fish_seen_subcommand_from add update list get delete help" -s V -l version -d 'Print version'
complete -c balctl -n "__fish_balctl_using_subcommand policy; and not __fish_seen_subcommand_from add update list get delete help" -f -a "add" -d 'Add a rule that balances a frontend over backends'
complete -c balctl -n "__fish_balctl_using_subcommand policy; and not __fish_seen_subcommand_from add update list get delete help" -f -a "update" -d 'Change an existing rule; the options given replace the old values'
complete -c balctl -n "__fish_balctl_using_subcommand policy; and not __fish_seen_subcommand_from add update list get delete help" -f -a "list" -d 'List all rules'
complete -c balctl -n "__fish_balctl_using_subcommand policy; and not __fish_seen_subcommand_from add update list get delete help" -f -a "get" -d 'Show one rule'
complete -c balctl -n "__fish_balctl_using_subcommand policy; and not __fish_seen_subcommand_from add update list get delete help" -f -a "delete" -d 'Delete a rule'
complete -c balctl -n "__fish_balctl_using_subcommand policy; and not __fish_seen_subcommand_from add update list get delete help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from add" -l vip -d 'Frontend clients connect to: IP:PORT[/tcp|udp] (IPv6 as [IP]:PORT)' -r
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from add" -l backend -d 'Backend address; repeat for more' -r
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from add" -l weight -d 'Each backend\'s weight (1-100), in the order of --backend: a backend of weight 2 takes twice the connections of one of weight 1; give one per backend, or none (all 1)' -r
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from add" -l lb-algorithm -d 'random (the default), or least-connections: a new connection goes to the backend with the fewest open ones' -r -f -a "random\t''
least-connections\t''"
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from add" -l affinity -d 'Keep each client network namespace on one backend for SECONDS of inactivity' -r
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from add" -l kind -d 'balancing: takes the frontend\'s traffic before a Service on the same address; redirect: before that too, and gives way to the next rule (balancing, service, or the address itself) while it has no backend' -r -f -a "balancing\t''
redirect\t''"
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from add" -l rate-limit -d 'Redirect only: connections a second it takes; the rest of that second go to the next rule' -r
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from add" -l health-check -d 'Check each backend\'s health (run by `sync --watch`): tcp (a connect), http (a GET answered with the expected status) or dns (a query); an unhealthy backend leaves the slots until it passes again' -r -f -a "tcp\t''
http\t''
dns\t''"
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from add" -l health-check-path -d 'http: the path to GET' -r
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from add" -l health-check-status -d 'http: the status that means healthy' -r
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from add" -l health-check-query -d 'dns: the name to ask for (type A)' -r
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from add" -l health-check-port -d 'The port to probe [default: the backend\'s]' -r
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from add" -l health-check-interval -d 'How often each backend is probed [default: 5s]' -r
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from add" -l health-check-timeout -d 'How long a probe may take [default: 2s, at most the interval]' -r
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from add" -l health-check-rise -d 'Successes in a row that bring an unhealthy backend back [default: 2]' -r
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from add" -l health-check-fall -d 'Failures in a row that take a healthy backend out [default: 3]' -r
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from add" -l when-all-unhealthy -d 'While every backend is unhealthy: keep them all (fail-open) or refuse connections [default: fail-open]' -r -f -a "fail-open\t''
refuse\t''"
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from add" -l bpffs -d 'Pin directory for balctl\'s maps and links (on a bpf filesystem)' -r -F
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from add" -l state-dir -d 'Directory where applied state is kept' -r -F
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from add" -s o -l output -d 'Output format: table, wide (the table with more columns), json, yaml, or jsonpath=TEMPLATE (kubectl\'s JSONPath template of the JSON document, e.g. -o jsonpath=\'{range .services[*]}{.frontend}{"\\n"}{end}\')' -r -f -a "table\t'A table for people'
wide\t'The table with more columns'
json\t'The JSON document'
yaml\t'The same document as YAML'
jsonpath=\t'kubectl\'s JSONPath template of the JSON document, e.g. jsonpath=\'{.services[*].name}\''"
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from add" -l log-format -d 'Log lines as text (TIME LEVEL message) or JSON, one object a line with time (RFC 3339, UTC), level, target and message' -r -f -a "text\t''
json\t''"
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from add" -l no-headers -d 'Print tables without their header row (-o table and wide; other formats have no headers and ignore it, as kubectl\'s does)'
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from add" -s v -l verbose -d 'Print more (repeat for debug logs)'
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from add" -s q -l quiet -d 'Print only errors'
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from add" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from add" -s V -l version -d 'Print version'
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from update" -l vip -d 'New frontend: IP:PORT[/tcp|udp]' -r
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from update" -l backend -d 'New backend list (replaces the old one, and its weights: all 1); repeat for more' -r
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from update" -l affinity -d 'New affinity timeout in seconds' -r
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from update" -l bpffs -d 'Pin directory for balctl\'s maps and links (on a bpf filesystem)' -r -F
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from update" -l state-dir -d 'Directory where applied state is kept' -r -F
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from update" -s o -l output -d 'Output format: table, wide (the table with more columns), json, yaml, or jsonpath=TEMPLATE (kubectl\'s JSONPath template of the JSON document, e.g. -o jsonpath=\'{range .services[*]}{.frontend}{"\\n"}{end}\')' -r -f -a "table\t'A table for people'
wide\t'The table with more columns'
json\t'The JSON document'
yaml\t'The same document as YAML'
jsonpath=\t'kubectl\'s JSONPath template of the JSON document, e.g. jsonpath=\'{.services[*].name}\''"
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from update" -l log-format -d 'Log lines as text (TIME LEVEL message) or JSON, one object a line with time (RFC 3339, UTC), level, target and message' -r -f -a "text\t''
json\t''"
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from update" -l no-backends -d 'Remove every backend: the frontend then rejects connections'
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from update" -l no-affinity -d 'Turn session affinity off'
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from update" -l no-headers -d 'Print tables without their header row (-o table and wide; other formats have no headers and ignore it, as kubectl\'s does)'
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from update" -s v -l verbose -d 'Print more (repeat for debug logs)'
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from update" -s q -l quiet -d 'Print only errors'
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from update" -s h -l help -d 'Print help'
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from update" -s V -l version -d 'Print version'
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from list" -l bpffs -d 'Pin directory for balctl\'s maps and links (on a bpf filesystem)' -r -F
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from list" -l state-dir -d 'Directory where applied state is kept' -r -F
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from list" -s o -l output -d 'Output format: table, wide (the table with more columns), json, yaml, or jsonpath=TEMPLATE (kubectl\'s JSONPath template of the JSON document, e.g. -o jsonpath=\'{range .services[*]}{.frontend}{"\\n"}{end}\')' -r -f -a "table\t'A table for people'
wide\t'The table with more columns'
json\t'The JSON document'
yaml\t'The same document as YAML'
jsonpath=\t'kubectl\'s JSONPath template of the JSON document, e.g. jsonpath=\'{.services[*].name}\''"
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from list" -l log-format -d 'Log lines as text (TIME LEVEL message) or JSON, one object a line with time (RFC 3339, UTC), level, target and message' -r -f -a "text\t''
json\t''"
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from list" -l no-headers -d 'Print tables without their header row (-o table and wide; other formats have no headers and ignore it, as kubectl\'s does)'
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from list" -s v -l verbose -d 'Print more (repeat for debug logs)'
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from list" -s q -l quiet -d 'Print only errors'
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help'
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from list" -s V -l version -d 'Print version'
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from get" -l bpffs -d 'Pin directory for balctl\'s maps and links (on a bpf filesystem)' -r -F
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from get" -l state-dir -d 'Directory where applied state is kept' -r -F
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from get" -s o -l output -d 'Output format: table, wide (the table with more columns), json, yaml, or jsonpath=TEMPLATE (kubectl\'s JSONPath template of the JSON document, e.g. -o jsonpath=\'{range .services[*]}{.frontend}{"\\n"}{end}\')' -r -f -a "table\t'A table for people'
wide\t'The table with more columns'
json\t'The JSON document'
yaml\t'The same document as YAML'
jsonpath=\t'kubectl\'s JSONPath template of the JSON document, e.g. jsonpath=\'{.services[*].name}\''"
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from get" -l log-format -d 'Log lines as text (TIME LEVEL message) or JSON, one object a line with time (RFC 3339, UTC), level, target and message' -r -f -a "text\t''
json\t''"
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from get" -l no-headers -d 'Print tables without their header row (-o table and wide; other formats have no headers and ignore it, as kubectl\'s does)'
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from get" -s v -l verbose -d 'Print more (repeat for debug logs)'
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from get" -s q -l quiet -d 'Print only errors'
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from get" -s h -l help -d 'Print help'
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from get" -s V -l version -d 'Print version'
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from delete" -l bpffs -d 'Pin directory for balctl\'s maps and links (on a bpf filesystem)' -r -F
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from delete" -l state-dir -d 'Directory where applied state is kept' -r -F
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from delete" -s o -l output -d 'Output format: table, wide (the table with more columns), json, yaml, or jsonpath=TEMPLATE (kubectl\'s JSONPath template of the JSON document, e.g. -o jsonpath=\'{range .services[*]}{.frontend}{"\\n"}{end}\')' -r -f -a "table\t'A table for people'
wide\t'The table with more columns'
json\t'The JSON document'
yaml\t'The same document as YAML'
jsonpath=\t'kubectl\'s JSONPath template of the JSON document, e.g. jsonpath=\'{.services[*].name}\''"
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from delete" -l log-format -d 'Log lines as text (TIME LEVEL message) or JSON, one object a line with time (RFC 3339, UTC), level, target and message' -r -f -a "text\t''
json\t''"
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from delete" -l no-headers -d 'Print tables without their header row (-o table and wide; other formats have no headers and ignore it, as kubectl\'s does)'
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from delete" -s v -l verbose -d 'Print more (repeat for debug logs)'
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from delete" -s q -l quiet -d 'Print only errors'
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from delete" -s h -l help -d 'Print help'
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from delete" -s V -l version -d 'Print version'
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from help" -f -a "add" -d 'Add a rule that balances a frontend over backends'
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from help" -f -a "update" -d 'Change an existing rule; the options given replace the old values'
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from help" -f -a "list" -d 'List all rules'
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from help" -f -a "get" -d 'Show one rule'
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from help" -f -a "delete" -d 'Delete a rule'
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c balctl -n "__fish_balctl_using_subcommand sync" -s f -l filename -d 'TOML state file, Kubernetes YAML/JSON file, a directory of them, or - for standard input' -r -F
complete -c balctl -n "__fish_balctl_using_subcommand sync" -l kubeconfig -d 'kubeconfig for --kube [default: the pod\'s service account in a cluster, else $KUBECONFIG or ~/.kube/config]; sync: repeat for other clusters, whose global Services join this one\'s (the first is this node\'s cluster; each other is named by its --context, else by its file name without extension)' -r -F
complete -c balctl -n "__fish_balctl_using_subcommand sync" -l context -d 'Context of the kubeconfig to use with --kube [default: its current context]; sync: repeat for other clusters (one per --kubeconfig, or several of one kubeconfig)' -r
complete -c balctl -n "__fish_balctl_using_subcommand sync" -l node-name -d 'This node\'s name, for internalTrafficPolicy: Local [default: the hostname]' -r
complete -c balctl -n "__fish_balctl_using_subcommand sync" -l nodeport-addresses -d 'Which of the Nodes\' addresses serve node ports, as kube-proxy\'s flag: `primary` (each Node\'s first InternalIP of each family, else its first ExternalIP of it) or CIDRs separated by commas (the addresses inside them; every address of a family without a CIDR). IPv4 loopback serves them unless the CIDRs of IPv4 leave out 127.0.0.0 or `primary` is given [default: every InternalIP and ExternalIP, and loopback]' -r
complete -c balctl -n "__fish_balctl_using_subcommand sync" -l max-input-size -d 'The most bytes read from one input file, FIFO or standard input, as bytes or with a unit: 512M, 1G, 1GiB (K, M, G, T: powers of 1024; KB, MB, GB, TB: of 1000). A larger input is refused, and nothing changes' -r
complete -c balctl -n "__fish_balctl_using_subcommand sync" -l metrics-addr -d 'With --watch, serve the counters, the maps\' fill and the agent\'s metrics to Prometheus on http://ADDR/metrics (e.g. 127.0.0.1:9464)' -r
complete -c balctl -n "__fish_balctl_using_subcommand sync" -l health-addr -d 'With --watch, serve /healthz, /livez and /readyz on http://ADDR (e.g. 127.0.0.1:10256), as kube-proxy\'s healthz: /healthz is 503 once a change has waited longer than --health-timeout (or, with --kube, the API server has not answered for that long), /readyz 200 once the first complete sync is applied; the same ADDR as --metrics-addr serves all four paths' -r
complete -c balctl -n "__fish_balctl_using_subcommand sync" -l health-timeout -d 'With --watch: how long a change may wait unapplied (and, with --kube, the API server not answer) before /healthz says 503, and the longest a sync may run before /livez does (e.g. 60s, 2m); kube-proxy\'s is twice its sync period' -r
complete -c balctl -n "__fish_balctl_using_subcommand sync" -l settle -d 'With --watch -f, hold a change that would remove more than a quarter of a source\'s frontends until the inputs have not changed for this long (e.g. 5s, 1m), so that a file still being written is never applied half written' -r
complete -c balctl -n "__fish_balctl_using_subcommand sync" -l bpffs -d 'Pin directory for balctl\'s maps and links (on a bpf filesystem)' -r -F
complete -c balctl -n "__fish_balctl_using_subcommand sync" -l state-dir -d 'Directory where applied state is kept' -r -F
complete -c balctl -n "__fish_balctl_using_subcommand sync" -s o -l output -d 'Output format: table, wide (the table with more columns), json, yaml, or jsonpath=TEMPLATE (kubectl\'s JSONPath template of the JSON document, e.g. -o jsonpath=\'{range .services[*]}{.frontend}{"\\n"}{end}\')' -r -f -a "table\t'A table for people'
wide\t'The table with more columns'
json\t'The JSON document'
yaml\t'The same document as YAML'
jsonpath=\t'kubectl\'s JSONPath template of the JSON document, e.g. jsonpath=\'{.services[*].name}\''"
complete -c balctl -n "__fish_balctl_using_subcommand sync" -l log-format -d 'Log lines as text (TIME LEVEL message) or JSON, one object a line with time (RFC 3339, UTC), level, target and message' -r -f -a "text\t''
json\t''"
complete -c balctl -n "__fish_balctl_using_subcommand sync" -l kube -d 'Read Services, EndpointSlices, Nodes, Pods and the policy kinds from the Kubernetes API server instead of files (one source, `kubernetes`); with --watch, keep following them'
complete -c balctl -n "__fish_balctl_using_subcommand sync" -l dry-run -d 'Print the whole plan and change nothing'
complete -c balctl -n "__fish_balctl_using_subcommand sync" -l destroy-tcp-sockets -d 'Also reset the established TCP connections that were made through a frontend to a backend the change took away from it (connected UDP sockets are always destroyed; needs Linux 6.5)'
complete -c balctl -n "__fish_balctl_using_subcommand sync" -l watch -d 'Keep running and sync again whenever an input changes (not with -f -)'
complete -c balctl -n "__fish_balctl_using_subcommand sync" -l metrics-per-backend -d 'With --metrics-addr, also serve balctl_backend_hits_total: one series per backend of every frontend, hundreds of thousands on a big cluster\'s node'
complete -c balctl -n "__fish_balctl_using_subcommand sync" -l no-headers -d 'Print tables without their header row (-o table and wide; other formats have no headers and ignore it, as kubectl\'s does)'
complete -c balctl -n "__fish_balctl_using_subcommand sync" -s v -l verbose -d 'Print more (repeat for debug logs)'
complete -c balctl -n "__fish_balctl_using_subcommand sync" -s q -l quiet -d 'Print only errors'
complete -c balctl -n "__fish_balctl_using_subcommand sync" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c balctl -n "__fish_balctl_using_subcommand sync" -s V -l version -d 'Print version'
complete -c balctl -n "__fish_balctl_using_subcommand dump" -l vip -d 'Only entries of frontends at this address (and port); nodes: that node address; config is not narrowed' -r
complete -c balctl -n "__fish_balctl_using_subcommand dump" -l name -d 'Only entries of frontends of the object with this name, as `dump` names them: NAME (any kind and namespace), NAMESPACE/NAME or KIND/[NAMESPACE/]NAME (e.g. web, default/web, service/default/web); nodes: the Nodes\' names; config is not narrowed' -r
complete -c balctl -n "__fish_balctl_using_subcommand dump" -s n -l namespace -d 'Only entries of frontends of Kubernetes objects in this namespace; nodes (cluster-wide, as for kubectl) and config are not narrowed' -r
complete -c balctl -n "__fish_balctl_using_subcommand dump" -l bpffs -d 'Pin directory for balctl\'s maps and links (on a bpf filesystem)' -r -F
complete -c balctl -n "__fish_balctl_using_subcommand dump" -l state-dir -d 'Directory where applied state is kept' -r -F
complete -c balctl -n "__fish_balctl_using_subcommand dump" -s o -l output -d 'Output format: table, wide (the table with more columns), json, yaml, or jsonpath=TEMPLATE (kubectl\'s JSONPath template of the JSON document, e.g. -o jsonpath=\'{range .services[*]}{.frontend}{"\\n"}{end}\')' -r -f -a "table\t'A table for people'
wide\t'The table with more columns'
json\t'The JSON document'
yaml\t'The same document as YAML'
jsonpath=\t'kubectl\'s JSONPath template of the JSON document, e.g. jsonpath=\'{.services[*].name}\''"
complete -c balctl -n "__fish_balctl_using_subcommand dump" -l log-format -d 'Log lines as text (TIME LEVEL message) or JSON, one object a line with time (RFC 3339, UTC), level, target and message' -r -f -a "text\t''
json\t''"
complete -c balctl -n "__fish_balctl_using_subcommand dump" -l no-headers -d 'Print tables without their header row (-o table and wide; other formats have no headers and ignore it, as kubectl\'s does)'
complete -c balctl -n "__fish_balctl_using_subcommand dump" -s v -l verbose -d 'Print more (repeat for debug logs)'
complete -c balctl -n "__fish_balctl_using_subcommand dump" -s q -l quiet -d 'Print only errors'
complete -c balctl -n "__fish_balctl_using_subcommand dump" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c balctl -n "__fish_balctl_using_subcommand dump" -s V -l version -d 'Print version'
complete -c balctl -n "__fish_balctl_using_subcommand trace" -l vip -d 'Only resolutions for this destination address (and port)' -r
complete -c balctl -n "__fish_balctl_using_subcommand trace" -l pid -d 'Only resolutions made by this process (packets from outside the node have none: it leaves them out)' -r
complete -c balctl -n "__fish_balctl_using_subcommand trace" -l client -d 'Only north-south flows opened by packets from clients in this prefix (sockets\' resolutions have no client: it leaves them out)' -r
complete -c balctl -n "__fish_balctl_using_subcommand trace" -l count -d 'Stop after this many events' -r
complete -c balctl -n "__fish_balctl_using_subcommand trace" -l duration -d 'Stop after this long (e.g. 30s, 5m)' -r
complete -c balctl -n "__fish_balctl_using_subcommand trace" -l kubeconfig -d 'kubeconfig for --kube [default: the pod\'s service account in a cluster, else $KUBECONFIG or ~/.kube/config]; sync: repeat for other clusters, whose global Services join this one\'s (the first is this node\'s cluster; each other is named by its --context, else by its file name without extension)' -r -F
complete -c balctl -n "__fish_balctl_using_subcommand trace" -l context -d 'Context of the kubeconfig to use with --kube [default: its current context]; sync: repeat for other clusters (one per --kubeconfig, or several of one kubeconfig)' -r
complete -c balctl -n "__fish_balctl_using_subcommand trace" -l bpffs -d 'Pin directory for balctl\'s maps and links (on a bpf filesystem)' -r -F
complete -c balctl -n "__fish_balctl_using_subcommand trace" -l state-dir -d 'Directory where applied state is kept' -r -F
complete -c balctl -n "__fish_balctl_using_subcommand trace" -s o -l output -d 'Output format: table, wide (the table with more columns), json, yaml, or jsonpath=TEMPLATE (kubectl\'s JSONPath template of the JSON document, e.g. -o jsonpath=\'{range .services[*]}{.frontend}{"\\n"}{end}\')' -r -f -a "table\t'A table for people'
wide\t'The table with more columns'
json\t'The JSON document'
yaml\t'The same document as YAML'
jsonpath=\t'kubectl\'s JSONPath template of the JSON document, e.g. jsonpath=\'{.services[*].name}\''"
complete -c balctl -n "__fish_balctl_using_subcommand trace" -l log-format -d 'Log lines as text (TIME LEVEL message) or JSON, one object a line with time (RFC 3339, UTC), level, target and message' -r -f -a "text\t''
json\t''"
complete -c balctl -n "__fish_balctl_using_subcommand trace" -l failed -d 'Only resolutions that failed (no backend, no local backend...)'
complete -c balctl -n "__fish_balctl_using_subcommand trace" -l kube -d 'Name the pod of each container from the Kubernetes API server'
complete -c balctl -n "__fish_balctl_using_subcommand trace" -l no-headers -d 'Print tables without their header row (-o table and wide; other formats have no headers and ignore it, as kubectl\'s does)'
complete -c balctl -n "__fish_balctl_using_subcommand trace" -s v -l verbose -d 'Print more (repeat for debug logs)'
complete -c balctl -n "__fish_balctl_using_subcommand trace" -s q -l quiet -d 'Print only errors'
complete -c balctl -n "__fish_balctl_using_subcommand trace" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c balctl -n "__fish_balctl_using_subcommand trace" -s V -l version -d 'Print version'
complete -c balctl -n "__fish_balctl_using_subcommand explain" -l pid -d 'The client is this process: its cgroup and network namespace' -r
complete -c balctl -n "__fish_balctl_using_subcommand explain" -l pod -d 'The client is this Pod: its cgroup (`pod<UID>`, the UID from the API server) and the network namespace of a process in it' -r
complete -c balctl -n "__fish_balctl_using_subcommand explain" -l kubeconfig -d 'kubeconfig for --kube [default: the pod\'s service account in a cluster, else $KUBECONFIG or ~/.kube/config]; sync: repeat for other clusters, whose global Services join this one\'s (the first is this node\'s cluster; each other is named by its --context, else by its file name without extension)' -r -F
complete -c balctl -n "__fish_balctl_using_subcommand explain" -l context -d 'Context of the kubeconfig to use with --kube [default: its current context]; sync: repeat for other clusters (one per --kubeconfig, or several of one kubeconfig)' -r
complete -c balctl -n "__fish_balctl_using_subcommand explain" -l cgroup -d 'The client is a process in this cgroup v2 directory (the network namespace, which keys session affinity, is that of the first process found in it or below)' -r -F
complete -c balctl -n "__fish_balctl_using_subcommand explain" -l proto -d 'The protocol of the connect' -r -f -a "tcp\t''
udp\t''"
complete -c balctl -n "__fish_balctl_using_subcommand explain" -l bpffs -d 'Pin directory for balctl\'s maps and links (on a bpf filesystem)' -r -F
complete -c balctl -n "__fish_balctl_using_subcommand explain" -l state-dir -d 'Directory where applied state is kept' -r -F
complete -c balctl -n "__fish_balctl_using_subcommand explain" -s o -l output -d 'Output format: table, wide (the table with more columns), json, yaml, or jsonpath=TEMPLATE (kubectl\'s JSONPath template of the JSON document, e.g. -o jsonpath=\'{range .services[*]}{.frontend}{"\\n"}{end}\')' -r -f -a "table\t'A table for people'
wide\t'The table with more columns'
json\t'The JSON document'
yaml\t'The same document as YAML'
jsonpath=\t'kubectl\'s JSONPath template of the JSON document, e.g. jsonpath=\'{.services[*].name}\''"
complete -c balctl -n "__fish_balctl_using_subcommand explain" -l log-format -d 'Log lines as text (TIME LEVEL message) or JSON, one object a line with time (RFC 3339, UTC), level, target and message' -r -f -a "text\t''
json\t''"
complete -c balctl -n "__fish_balctl_using_subcommand explain" -l kube -d 'Ask the Kubernetes API server for --pod\'s UID'
complete -c balctl -n "__fish_balctl_using_subcommand explain" -l no-headers -d 'Print tables without their header row (-o table and wide; other formats have no headers and ignore it, as kubectl\'s does)'
complete -c balctl -n "__fish_balctl_using_subcommand explain" -s v -l verbose -d 'Print more (repeat for debug logs)'
complete -c balctl -n "__fish_balctl_using_subcommand explain" -s q -l quiet -d 'Print only errors'
complete -c balctl -n "__fish_balctl_using_subcommand explain" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c balctl -n "__fish_balctl_using_subcommand explain" -s V -l version -d 'Print version'
complete -c balctl -n "__fish_balctl_using_subcommand completions" -l bpffs -d 'Pin directory for balctl\'s maps and links (on a bpf filesystem)' -r -F
complete -c balctl -n "__fish_balctl_using_subcommand completions" -l state-dir -d 'Directory where applied state is kept' -r -F
complete -c balctl -n "__fish_balctl_using_subcommand completions" -s o -l output -d 'Output format: table, wide (the table with more columns), json, yaml, or jsonpath=TEMPLATE (kubectl\'s JSONPath template of the JSON document, e.g. -o jsonpath=\'{range .services[*]}{.frontend}{"\\n"}{end}\')' -r -f -a "table\t'A table for people'
wide\t'The table with more columns'
json\t'The JSON document'
yaml\t'The same document as YAML'
jsonpath=\t'kubectl\'s JSONPath template of the JSON document, e.g. jsonpath=\'{.services[*].name}\''"
complete -c balctl -n "__fish_balctl_using_subcommand completions" -l log-format -d 'Log lines as text (TIME LEVEL message) or JSON, one object a line with time (RFC 3339, UTC), level, target and message' -r -f -a "text\t''
json\t''"
complete -c balctl -n "__fish_balctl_using_subcommand completions" -l no-headers -d 'Print tables without their header row (-o table and wide; other formats have no headers and ignore it, as kubectl\'s does)'
complete -c balctl -n "__fish_balctl_using_subcommand completions" -s v -l verbose -d 'Print more (repeat for debug logs)'
complete -c balctl -n "__fish_balctl_using_subcommand completions" -s q -l quiet -d 'Print only errors'
complete -c balctl -n "__fish_balctl_using_subcommand completions" -s h -l help -d 'Print help'
complete -c balctl -n "__fish_balctl_using_subcommand completions" -s V -l version -d 'Print version'
complete -c balctl -n "__fish_balctl_using_subcommand help; and not __fish_seen_subcommand_from load unload status policy sync dump trace explain completions help" -f -a "load" -d 'Load the programs and attach them to a cgroup, or replace them in place'
complete -c balctl -n "__fish_balctl_using_subcommand help; and not __fish_seen_subcommand_from load unload status policy sync dump trace explain completions help" -f -a "unload" -d 'Detach every hook and remove every pin'
complete -c balctl -n "__fish_balctl_using_subcommand help; and not __fish_seen_subcommand_from load unload status policy sync dump trace explain completions help" -f -a "status" -d 'Show whether balctl is loaded, where, and how full its maps are'
complete -c balctl -n "__fish_balctl_using_subcommand help; and not __fish_seen_subcommand_from load unload status policy sync dump trace explain completions help" -f -a "policy" -d 'Add, change, list and delete balancing rules'
complete -c balctl -n "__fish_balctl_using_subcommand help; and not __fish_seen_subcommand_from load unload status policy sync dump trace explain completions help" -f -a "sync" -d 'Make the maps match state files: plan the difference, print it, apply it'
complete -c balctl -n "__fish_balctl_using_subcommand help; and not __fish_seen_subcommand_from load unload status policy sync dump trace explain completions help" -f -a "dump" -d 'Show what the pinned maps hold'
complete -c balctl -n "__fish_balctl_using_subcommand help; and not __fish_seen_subcommand_from load unload status policy sync dump trace explain completions help" -f -a "trace" -d 'Show resolutions as they happen: who connected where, and which backend it got'
complete -c balctl -n "__fish_balctl_using_subcommand help; and not __fish_seen_subcommand_from load unload status policy sync dump trace explain completions help" -f -a "explain" -d 'Show what a connect from a client to DEST would resolve to, without connecting'
complete -c balctl -n "__fish_balctl_using_subcommand help; and not __fish_seen_subcommand_from load unload status policy sync dump trace explain completions help" -f -a "completions" -d 'Print a shell completion script'
complete -c balctl -n "__fish_balctl_using_subcommand help; and not __fish_seen_subcommand_from load unload status policy sync dump trace explain completions help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c balctl -n "__fish_balctl_using_subcommand help; and __fish_seen_subcommand_from policy" -f -a "add" -d 'Add a rule that balances a frontend over backends'
complete -c balctl -n "__fish_balctl_using_subcommand help; and __fish_seen_subcommand_from policy" -f -a "update" -d 'Change an existing rule; the options given replace the old values'
complete -c balctl -n "__fish_balctl_using_subcommand help; and __fish_seen_subcommand_from policy" -f -a "list" -d 'List all rules'
complete -c balctl -n "__fish_balctl_using_subcommand help; and __fish_seen_subcommand_from policy" -f -a "get" -d 'Show one rule'
complete -c balctl -n "__fish_balctl_using_subcommand help; and __fish_seen_subcommand_from policy" -f -a "delete" -d 'Delete a rule'

# Added to clap's script by balctl (src/docs.rs): the NAME of `balctl policy
# get|update|delete NAME` completes to the policies the installed balctl
# lists (from BALCTL_STATE_DIR, else the default state dir).
complete -c balctl -n "__fish_balctl_using_subcommand policy; and __fish_seen_subcommand_from get update delete" -f -a "(balctl policy list -o 'jsonpath={range .policies[*]}{.name}{\"\n\"}{end}' 2>/dev/null)"
