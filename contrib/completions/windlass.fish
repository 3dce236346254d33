# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_windlass_global_optspecs
    string join \n v/verbose h/help V/version
end

function __fish_windlass_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_windlass_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_windlass_using_subcommand
    set -l cmd (__fish_windlass_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c windlass -n "__fish_windlass_needs_command" -s v -l verbose -d 'More log output from windlass itself (-v info, -vv debug); RUST_LOG overrides'
complete -c windlass -n "__fish_windlass_needs_command" -s h -l help -d 'Print help'
complete -c windlass -n "__fish_windlass_needs_command" -s V -l version -d 'Print version'
complete -c windlass -n "__fish_windlass_needs_command" -f -a "up" -d 'Start the apps of the config and keep them running'
complete -c windlass -n "__fish_windlass_needs_command" -f -a "down" -d 'Stop every app gracefully, then the supervisor'
complete -c windlass -n "__fish_windlass_needs_command" -f -a "status" -d 'Show every app instance: state, pid, port, uptime, restarts, memory, CPU'
complete -c windlass -n "__fish_windlass_needs_command" -f -a "ps" -d 'Show every app instance: state, pid, port, uptime, restarts, memory, CPU'
complete -c windlass -n "__fish_windlass_needs_command" -f -a "logs" -d 'Show the logs of every app, or of one; -f follows'
complete -c windlass -n "__fish_windlass_needs_command" -f -a "start" -d 'Start, stop or restart every instance of an app'
complete -c windlass -n "__fish_windlass_needs_command" -f -a "stop" -d 'Start, stop or restart every instance of an app'
complete -c windlass -n "__fish_windlass_needs_command" -f -a "restart" -d 'Start, stop or restart every instance of an app'
complete -c windlass -n "__fish_windlass_needs_command" -f -a "reload" -d 'Reload an app with zero downtime (its `reload` strategy)'
complete -c windlass -n "__fish_windlass_needs_command" -f -a "check" -d 'Validate the config and exit: 0 when valid, 2 with every error otherwise'
complete -c windlass -n "__fish_windlass_needs_command" -f -a "top" -d 'Watch every app instance live: CPU%, memory, restarts, requests per second'
complete -c windlass -n "__fish_windlass_needs_command" -f -a "init" -d 'Write a windlass.toml for the project in this directory'
complete -c windlass -n "__fish_windlass_needs_command" -f -a "completions" -d 'Print shell completions for bash, zsh or fish (also elvish, powershell)'
complete -c windlass -n "__fish_windlass_needs_command" -f -a "man" -d 'Print the man page (roff) to stdout'
complete -c windlass -n "__fish_windlass_needs_command" -f -a "build" -d 'Build a release of each app (or APP): an immutable copy in .windlass/releases/ID/'
complete -c windlass -n "__fish_windlass_needs_command" -f -a "releases" -d 'List built releases (oldest first): `*` marks the one the next start runs, RUNNING the instances that run each one'
complete -c windlass -n "__fish_windlass_needs_command" -f -a "rollback" -d 'Switch an app to its previous release, or to any built RELEASE, with zero downtime'
complete -c windlass -n "__fish_windlass_needs_command" -f -a "git-remote" -d 'Deploy with `git push`: a bare repository whose hook builds and switches to each push'
complete -c windlass -n "__fish_windlass_needs_command" -f -a "pack" -d 'Pack the project into one self-contained artefact: releases, interpreters, shared libraries, windlass'
complete -c windlass -n "__fish_windlass_needs_command" -f -a "repl" -d 'Evaluate Lisp in a running app over swank: a REPL, or one form with --eval'
complete -c windlass -n "__fish_windlass_needs_command" -f -a "attach" -d 'Attach the terminal to an app\'s console (console = true); detach with Ctrl-]'
complete -c windlass -n "__fish_windlass_needs_command" -f -a "export" -d 'Generate deployment files from the config: a systemd unit, a Dockerfile, Kubernetes manifests'
complete -c windlass -n "__fish_windlass_needs_command" -f -a "deploy" -d 'Ship the newest release of every app to the hosts of `[deploy]` over ssh, host by host (or `batch` at once), switch each through a health-gated zero-downtime reload, and roll the updated hosts back on the first failure'
complete -c windlass -n "__fish_windlass_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c windlass -n "__fish_windlass_using_subcommand up" -s f -l file -d 'The config file' -r -F
complete -c windlass -n "__fish_windlass_using_subcommand up" -l wait -d 'How long `-d` waits for the apps to start' -r
complete -c windlass -n "__fish_windlass_using_subcommand up" -l instances -d 'Run N instances of every app instead of each app\'s `instances` (a Kubernetes pod runs 1: the cluster runs the replicas)' -r
complete -c windlass -n "__fish_windlass_using_subcommand up" -s d -l detach -d 'Detach: keep the supervisor running in the background'
complete -c windlass -n "__fish_windlass_using_subcommand up" -l detached-child -d 'Internal: this process is the detached supervisor'
complete -c windlass -n "__fish_windlass_using_subcommand up" -s v -l verbose -d 'More log output from windlass itself (-v info, -vv debug); RUST_LOG overrides'
complete -c windlass -n "__fish_windlass_using_subcommand up" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c windlass -n "__fish_windlass_using_subcommand up" -s V -l version -d 'Print version'
complete -c windlass -n "__fish_windlass_using_subcommand down" -s f -l file -d 'The config file (default: windlass.toml or Procfile here or in a parent directory)' -r -F
complete -c windlass -n "__fish_windlass_using_subcommand down" -s v -l verbose -d 'More log output from windlass itself (-v info, -vv debug); RUST_LOG overrides'
complete -c windlass -n "__fish_windlass_using_subcommand down" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c windlass -n "__fish_windlass_using_subcommand down" -s V -l version -d 'Print version'
complete -c windlass -n "__fish_windlass_using_subcommand status" -s f -l file -d 'The config file (default: windlass.toml or Procfile here or in a parent directory)' -r -F
complete -c windlass -n "__fish_windlass_using_subcommand status" -l json -d 'Print the status as JSON (the schema is `Status` in the guide)'
complete -c windlass -n "__fish_windlass_using_subcommand status" -s v -l verbose -d 'More log output from windlass itself (-v info, -vv debug); RUST_LOG overrides'
complete -c windlass -n "__fish_windlass_using_subcommand status" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c windlass -n "__fish_windlass_using_subcommand status" -s V -l version -d 'Print version'
complete -c windlass -n "__fish_windlass_using_subcommand ps" -s f -l file -d 'The config file (default: windlass.toml or Procfile here or in a parent directory)' -r -F
complete -c windlass -n "__fish_windlass_using_subcommand ps" -l json -d 'Print the status as JSON (the schema is `Status` in the guide)'
complete -c windlass -n "__fish_windlass_using_subcommand ps" -s v -l verbose -d 'More log output from windlass itself (-v info, -vv debug); RUST_LOG overrides'
complete -c windlass -n "__fish_windlass_using_subcommand ps" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c windlass -n "__fish_windlass_using_subcommand ps" -s V -l version -d 'Print version'
complete -c windlass -n "__fish_windlass_using_subcommand logs" -s n -l lines -d 'How many past lines to show (per app), at most 10000' -r
complete -c windlass -n "__fish_windlass_using_subcommand logs" -l file -d 'The config file' -r -F
complete -c windlass -n "__fish_windlass_using_subcommand logs" -s f -l follow -d 'Keep printing new lines as they come'
complete -c windlass -n "__fish_windlass_using_subcommand logs" -l json -d 'One JSON object per line: {ts, app, instance, stream, line}'
complete -c windlass -n "__fish_windlass_using_subcommand logs" -l raw -d 'Print what the apps wrote as is: escape sequences reach the terminal. By default, control characters (ESC, other C0 but tab, DEL, C1) are shown as `\\xNN`'
complete -c windlass -n "__fish_windlass_using_subcommand logs" -s v -l verbose -d 'More log output from windlass itself (-v info, -vv debug); RUST_LOG overrides'
complete -c windlass -n "__fish_windlass_using_subcommand logs" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c windlass -n "__fish_windlass_using_subcommand logs" -s V -l version -d 'Print version'
complete -c windlass -n "__fish_windlass_using_subcommand start" -s f -l file -d 'The config file (default: windlass.toml or Procfile here or in a parent directory)' -r -F
complete -c windlass -n "__fish_windlass_using_subcommand start" -s v -l verbose -d 'More log output from windlass itself (-v info, -vv debug); RUST_LOG overrides'
complete -c windlass -n "__fish_windlass_using_subcommand start" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c windlass -n "__fish_windlass_using_subcommand start" -s V -l version -d 'Print version'
complete -c windlass -n "__fish_windlass_using_subcommand stop" -s f -l file -d 'The config file (default: windlass.toml or Procfile here or in a parent directory)' -r -F
complete -c windlass -n "__fish_windlass_using_subcommand stop" -s v -l verbose -d 'More log output from windlass itself (-v info, -vv debug); RUST_LOG overrides'
complete -c windlass -n "__fish_windlass_using_subcommand stop" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c windlass -n "__fish_windlass_using_subcommand stop" -s V -l version -d 'Print version'
complete -c windlass -n "__fish_windlass_using_subcommand restart" -s f -l file -d 'The config file (default: windlass.toml or Procfile here or in a parent directory)' -r -F
complete -c windlass -n "__fish_windlass_using_subcommand restart" -s v -l verbose -d 'More log output from windlass itself (-v info, -vv debug); RUST_LOG overrides'
complete -c windlass -n "__fish_windlass_using_subcommand restart" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c windlass -n "__fish_windlass_using_subcommand restart" -s V -l version -d 'Print version'
complete -c windlass -n "__fish_windlass_using_subcommand reload" -s f -l file -d 'The config file (default: windlass.toml or Procfile here or in a parent directory)' -r -F
complete -c windlass -n "__fish_windlass_using_subcommand reload" -s v -l verbose -d 'More log output from windlass itself (-v info, -vv debug); RUST_LOG overrides'
complete -c windlass -n "__fish_windlass_using_subcommand reload" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c windlass -n "__fish_windlass_using_subcommand reload" -s V -l version -d 'Print version'
complete -c windlass -n "__fish_windlass_using_subcommand check" -s f -l file -d 'The config file (default: windlass.toml or Procfile here or in a parent directory)' -r -F
complete -c windlass -n "__fish_windlass_using_subcommand check" -l json -d 'Report as JSON: {version, ok, file, apps, warnings, errors} (schema in docs/json.md)'
complete -c windlass -n "__fish_windlass_using_subcommand check" -s v -l verbose -d 'More log output from windlass itself (-v info, -vv debug); RUST_LOG overrides'
complete -c windlass -n "__fish_windlass_using_subcommand check" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c windlass -n "__fish_windlass_using_subcommand check" -s V -l version -d 'Print version'
complete -c windlass -n "__fish_windlass_using_subcommand top" -l interval -d 'Time between frames' -r
complete -c windlass -n "__fish_windlass_using_subcommand top" -l count -d 'Print this many frames, then exit' -r
complete -c windlass -n "__fish_windlass_using_subcommand top" -s f -l file -d 'The config file (default: windlass.toml or Procfile here or in a parent directory)' -r -F
complete -c windlass -n "__fish_windlass_using_subcommand top" -l once -d 'Print one frame and exit'
complete -c windlass -n "__fish_windlass_using_subcommand top" -s v -l verbose -d 'More log output from windlass itself (-v info, -vv debug); RUST_LOG overrides'
complete -c windlass -n "__fish_windlass_using_subcommand top" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c windlass -n "__fish_windlass_using_subcommand top" -s V -l version -d 'Print version'
complete -c windlass -n "__fish_windlass_using_subcommand init" -l port -d 'The port the app listens on (passed to it in $PORT or the detected variable)' -r
complete -c windlass -n "__fish_windlass_using_subcommand init" -l force -d 'Overwrite an existing windlass.toml'
complete -c windlass -n "__fish_windlass_using_subcommand init" -l dry-run -d 'Print the config to stdout instead of writing it'
complete -c windlass -n "__fish_windlass_using_subcommand init" -l json -d 'Report as JSON: {version, file, written, kind, found, apps, fill_in, next}'
complete -c windlass -n "__fish_windlass_using_subcommand init" -s v -l verbose -d 'More log output from windlass itself (-v info, -vv debug); RUST_LOG overrides'
complete -c windlass -n "__fish_windlass_using_subcommand init" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c windlass -n "__fish_windlass_using_subcommand init" -s V -l version -d 'Print version'
complete -c windlass -n "__fish_windlass_using_subcommand completions" -s v -l verbose -d 'More log output from windlass itself (-v info, -vv debug); RUST_LOG overrides'
complete -c windlass -n "__fish_windlass_using_subcommand completions" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c windlass -n "__fish_windlass_using_subcommand completions" -s V -l version -d 'Print version'
complete -c windlass -n "__fish_windlass_using_subcommand man" -s v -l verbose -d 'More log output from windlass itself (-v info, -vv debug); RUST_LOG overrides'
complete -c windlass -n "__fish_windlass_using_subcommand man" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c windlass -n "__fish_windlass_using_subcommand man" -s V -l version -d 'Print version'
complete -c windlass -n "__fish_windlass_using_subcommand build" -s f -l file -d 'The config file (default: windlass.toml or Procfile here or in a parent directory)' -r -F
complete -c windlass -n "__fish_windlass_using_subcommand build" -s v -l verbose -d 'More log output from windlass itself (-v info, -vv debug); RUST_LOG overrides'
complete -c windlass -n "__fish_windlass_using_subcommand build" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c windlass -n "__fish_windlass_using_subcommand build" -s V -l version -d 'Print version'
complete -c windlass -n "__fish_windlass_using_subcommand releases" -s f -l file -d 'The config file (default: windlass.toml or Procfile here or in a parent directory)' -r -F
complete -c windlass -n "__fish_windlass_using_subcommand releases" -l json -d 'One JSON object: {\\"releases\\": [manifest + \\"path\\" + \\"selected\\"]}'
complete -c windlass -n "__fish_windlass_using_subcommand releases" -s v -l verbose -d 'More log output from windlass itself (-v info, -vv debug); RUST_LOG overrides'
complete -c windlass -n "__fish_windlass_using_subcommand releases" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c windlass -n "__fish_windlass_using_subcommand releases" -s V -l version -d 'Print version'
complete -c windlass -n "__fish_windlass_using_subcommand rollback" -s f -l file -d 'The config file (default: windlass.toml or Procfile here or in a parent directory)' -r -F
complete -c windlass -n "__fish_windlass_using_subcommand rollback" -l json -d 'Print one JSON object: {ok, app, from, to, message, hint?, status?}'
complete -c windlass -n "__fish_windlass_using_subcommand rollback" -s v -l verbose -d 'More log output from windlass itself (-v info, -vv debug); RUST_LOG overrides'
complete -c windlass -n "__fish_windlass_using_subcommand rollback" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c windlass -n "__fish_windlass_using_subcommand rollback" -s V -l version -d 'Print version'
complete -c windlass -n "__fish_windlass_using_subcommand git-remote; and not __fish_seen_subcommand_from init receive help" -s v -l verbose -d 'More log output from windlass itself (-v info, -vv debug); RUST_LOG overrides'
complete -c windlass -n "__fish_windlass_using_subcommand git-remote; and not __fish_seen_subcommand_from init receive help" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c windlass -n "__fish_windlass_using_subcommand git-remote; and not __fish_seen_subcommand_from init receive help" -s V -l version -d 'Print version'
complete -c windlass -n "__fish_windlass_using_subcommand git-remote; and not __fish_seen_subcommand_from init receive help" -f -a "init" -d 'Create the bare repository to push to (default .windlass/repo.git)'
complete -c windlass -n "__fish_windlass_using_subcommand git-remote; and not __fish_seen_subcommand_from init receive help" -f -a "receive" -d 'The hook\'s side (run by git, not by hand)'
complete -c windlass -n "__fish_windlass_using_subcommand git-remote; and not __fish_seen_subcommand_from init receive help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c windlass -n "__fish_windlass_using_subcommand git-remote; and __fish_seen_subcommand_from init" -l branch -d 'The branch whose pushes deploy (others are accepted and not deployed)' -r
complete -c windlass -n "__fish_windlass_using_subcommand git-remote; and __fish_seen_subcommand_from init" -s f -l file -d 'The config file (default: windlass.toml or Procfile here or in a parent directory)' -r -F
complete -c windlass -n "__fish_windlass_using_subcommand git-remote; and __fish_seen_subcommand_from init" -s v -l verbose -d 'More log output from windlass itself (-v info, -vv debug); RUST_LOG overrides'
complete -c windlass -n "__fish_windlass_using_subcommand git-remote; and __fish_seen_subcommand_from init" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c windlass -n "__fish_windlass_using_subcommand git-remote; and __fish_seen_subcommand_from init" -s V -l version -d 'Print version'
complete -c windlass -n "__fish_windlass_using_subcommand git-remote; and __fish_seen_subcommand_from receive" -l branch -r
complete -c windlass -n "__fish_windlass_using_subcommand git-remote; and __fish_seen_subcommand_from receive" -s f -l file -d 'The config file (default: windlass.toml or Procfile here or in a parent directory)' -r -F
complete -c windlass -n "__fish_windlass_using_subcommand git-remote; and __fish_seen_subcommand_from receive" -s v -l verbose -d 'More log output from windlass itself (-v info, -vv debug); RUST_LOG overrides'
complete -c windlass -n "__fish_windlass_using_subcommand git-remote; and __fish_seen_subcommand_from receive" -s h -l help -d 'Print help'
complete -c windlass -n "__fish_windlass_using_subcommand git-remote; and __fish_seen_subcommand_from receive" -s V -l version -d 'Print version'
complete -c windlass -n "__fish_windlass_using_subcommand git-remote; and __fish_seen_subcommand_from help" -f -a "init" -d 'Create the bare repository to push to (default .windlass/repo.git)'
complete -c windlass -n "__fish_windlass_using_subcommand git-remote; and __fish_seen_subcommand_from help" -f -a "receive" -d 'The hook\'s side (run by git, not by hand)'
complete -c windlass -n "__fish_windlass_using_subcommand git-remote; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c windlass -n "__fish_windlass_using_subcommand pack" -l format -d 'The artefact\'s format' -r -f -a "tar\t'A relocatable .tar.gz root with a `run` launcher'
oci\t'An OCI image layout in a tar (`oci-archive`), for `podman load` / `skopeo`'
docker\t'A `docker save`-style archive, for `docker load`'"
complete -c windlass -n "__fish_windlass_using_subcommand pack" -s o -l output -d 'Where to write it (default: .windlass/packs/<project>-<tag>.tar.gz / .oci.tar / .docker.tar)' -r -F
complete -c windlass -n "__fish_windlass_using_subcommand pack" -s f -l file -d 'The config file (default: windlass.toml or Procfile here or in a parent directory)' -r -F
complete -c windlass -n "__fish_windlass_using_subcommand pack" -s v -l verbose -d 'More log output from windlass itself (-v info, -vv debug); RUST_LOG overrides'
complete -c windlass -n "__fish_windlass_using_subcommand pack" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c windlass -n "__fish_windlass_using_subcommand pack" -s V -l version -d 'Print version'
complete -c windlass -n "__fish_windlass_using_subcommand repl" -s e -l eval -d 'Evaluate this form, print its values and exit' -r
complete -c windlass -n "__fish_windlass_using_subcommand repl" -l instance -d 'Which instance (0-based)' -r
complete -c windlass -n "__fish_windlass_using_subcommand repl" -s p -l package -d 'The package forms are read and evaluated in' -r
complete -c windlass -n "__fish_windlass_using_subcommand repl" -s f -l file -d 'The config file (default: windlass.toml or Procfile here or in a parent directory)' -r -F
complete -c windlass -n "__fish_windlass_using_subcommand repl" -s v -l verbose -d 'More log output from windlass itself (-v info, -vv debug); RUST_LOG overrides'
complete -c windlass -n "__fish_windlass_using_subcommand repl" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c windlass -n "__fish_windlass_using_subcommand repl" -s V -l version -d 'Print version'
complete -c windlass -n "__fish_windlass_using_subcommand attach" -l instance -d 'Which instance (0-based)' -r
complete -c windlass -n "__fish_windlass_using_subcommand attach" -s f -l file -d 'The config file (default: windlass.toml or Procfile here or in a parent directory)' -r -F
complete -c windlass -n "__fish_windlass_using_subcommand attach" -l read-only -d 'Watch only; never type'
complete -c windlass -n "__fish_windlass_using_subcommand attach" -s v -l verbose -d 'More log output from windlass itself (-v info, -vv debug); RUST_LOG overrides'
complete -c windlass -n "__fish_windlass_using_subcommand attach" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c windlass -n "__fish_windlass_using_subcommand attach" -s V -l version -d 'Print version'
complete -c windlass -n "__fish_windlass_using_subcommand export; and not __fish_seen_subcommand_from systemd docker k8s help" -s v -l verbose -d 'More log output from windlass itself (-v info, -vv debug); RUST_LOG overrides'
complete -c windlass -n "__fish_windlass_using_subcommand export; and not __fish_seen_subcommand_from systemd docker k8s help" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c windlass -n "__fish_windlass_using_subcommand export; and not __fish_seen_subcommand_from systemd docker k8s help" -s V -l version -d 'Print version'
complete -c windlass -n "__fish_windlass_using_subcommand export; and not __fish_seen_subcommand_from systemd docker k8s help" -f -a "systemd" -d 'A systemd service unit running `windlass up` (Type=notify, watchdog, hardening)'
complete -c windlass -n "__fish_windlass_using_subcommand export; and not __fish_seen_subcommand_from systemd docker k8s help" -f -a "docker" -d 'A multi-stage Dockerfile and a .dockerignore; windlass runs as PID 1 in the image'
complete -c windlass -n "__fish_windlass_using_subcommand export; and not __fish_seen_subcommand_from systemd docker k8s help" -f -a "k8s" -d 'Deployment, Service, PodDisruptionBudget, ConfigMap and ServiceMonitor manifests'
complete -c windlass -n "__fish_windlass_using_subcommand export; and not __fish_seen_subcommand_from systemd docker k8s help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c windlass -n "__fish_windlass_using_subcommand export; and __fish_seen_subcommand_from systemd" -s o -l output -d 'The directory to write the unit into' -r -F
complete -c windlass -n "__fish_windlass_using_subcommand export; and __fish_seen_subcommand_from systemd" -l run-as -d 'User= of a system unit (default: the owner of the config file)' -r
complete -c windlass -n "__fish_windlass_using_subcommand export; and __fish_seen_subcommand_from systemd" -s f -l file -d 'The config file (default: windlass.toml or Procfile here or in a parent directory)' -r -F
complete -c windlass -n "__fish_windlass_using_subcommand export; and __fish_seen_subcommand_from systemd" -l user -d 'A user unit (`systemctl --user`): WantedBy=default.target, no User='
complete -c windlass -n "__fish_windlass_using_subcommand export; and __fish_seen_subcommand_from systemd" -s v -l verbose -d 'More log output from windlass itself (-v info, -vv debug); RUST_LOG overrides'
complete -c windlass -n "__fish_windlass_using_subcommand export; and __fish_seen_subcommand_from systemd" -s h -l help -d 'Print help'
complete -c windlass -n "__fish_windlass_using_subcommand export; and __fish_seen_subcommand_from systemd" -s V -l version -d 'Print version'
complete -c windlass -n "__fish_windlass_using_subcommand export; and __fish_seen_subcommand_from docker" -s o -l output -d 'The directory to write the Dockerfile and .dockerignore into (default: the project\'s); the build context is the project directory either way' -r -F
complete -c windlass -n "__fish_windlass_using_subcommand export; and __fish_seen_subcommand_from docker" -s f -l file -d 'The config file (default: windlass.toml or Procfile here or in a parent directory)' -r -F
complete -c windlass -n "__fish_windlass_using_subcommand export; and __fish_seen_subcommand_from docker" -s v -l verbose -d 'More log output from windlass itself (-v info, -vv debug); RUST_LOG overrides'
complete -c windlass -n "__fish_windlass_using_subcommand export; and __fish_seen_subcommand_from docker" -s h -l help -d 'Print help'
complete -c windlass -n "__fish_windlass_using_subcommand export; and __fish_seen_subcommand_from docker" -s V -l version -d 'Print version'
complete -c windlass -n "__fish_windlass_using_subcommand export; and __fish_seen_subcommand_from k8s" -s o -l output -d 'The directory to write the manifests into' -r -F
complete -c windlass -n "__fish_windlass_using_subcommand export; and __fish_seen_subcommand_from k8s" -l namespace -d 'metadata.namespace of every object (default: none, kubectl\'s current namespace)' -r
complete -c windlass -n "__fish_windlass_using_subcommand export; and __fish_seen_subcommand_from k8s" -l image -d 'The image the pods run (default `<project>:latest`, the tag `windlass pack --format oci` gives)' -r
complete -c windlass -n "__fish_windlass_using_subcommand export; and __fish_seen_subcommand_from k8s" -s f -l file -d 'The config file (default: windlass.toml or Procfile here or in a parent directory)' -r -F
complete -c windlass -n "__fish_windlass_using_subcommand export; and __fish_seen_subcommand_from k8s" -s v -l verbose -d 'More log output from windlass itself (-v info, -vv debug); RUST_LOG overrides'
complete -c windlass -n "__fish_windlass_using_subcommand export; and __fish_seen_subcommand_from k8s" -s h -l help -d 'Print help'
complete -c windlass -n "__fish_windlass_using_subcommand export; and __fish_seen_subcommand_from k8s" -s V -l version -d 'Print version'
complete -c windlass -n "__fish_windlass_using_subcommand export; and __fish_seen_subcommand_from help" -f -a "systemd" -d 'A systemd service unit running `windlass up` (Type=notify, watchdog, hardening)'
complete -c windlass -n "__fish_windlass_using_subcommand export; and __fish_seen_subcommand_from help" -f -a "docker" -d 'A multi-stage Dockerfile and a .dockerignore; windlass runs as PID 1 in the image'
complete -c windlass -n "__fish_windlass_using_subcommand export; and __fish_seen_subcommand_from help" -f -a "k8s" -d 'Deployment, Service, PodDisruptionBudget, ConfigMap and ServiceMonitor manifests'
complete -c windlass -n "__fish_windlass_using_subcommand export; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c windlass -n "__fish_windlass_using_subcommand deploy" -l host -d 'Deploy to this host only (a name of [deploy] hosts, or NAME, USER@NAME, USER@NAME:PATH); repeat for several' -r
complete -c windlass -n "__fish_windlass_using_subcommand deploy" -s f -l file -d 'The config file (default: windlass.toml or Procfile here or in a parent directory)' -r -F
complete -c windlass -n "__fish_windlass_using_subcommand deploy" -l setup -d 'First contact: create PATH/.windlass on the hosts and start the remote supervisor (a systemd unit where systemd runs, else `windlass up -d`)'
complete -c windlass -n "__fish_windlass_using_subcommand deploy" -l dry-run -d 'Print the plan and exit, contacting no host'
complete -c windlass -n "__fish_windlass_using_subcommand deploy" -l json -d 'One JSON object a line per step: {"host","step","status","app","release","bytes","detail"}'
complete -c windlass -n "__fish_windlass_using_subcommand deploy" -s v -l verbose -d 'More log output from windlass itself (-v info, -vv debug); RUST_LOG overrides'
complete -c windlass -n "__fish_windlass_using_subcommand deploy" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c windlass -n "__fish_windlass_using_subcommand deploy" -s V -l version -d 'Print version'
complete -c windlass -n "__fish_windlass_using_subcommand help; and not __fish_seen_subcommand_from up down status logs start stop restart reload check top init completions man build releases rollback git-remote pack repl attach export deploy help" -f -a "up" -d 'Start the apps of the config and keep them running'
complete -c windlass -n "__fish_windlass_using_subcommand help; and not __fish_seen_subcommand_from up down status logs start stop restart reload check top init completions man build releases rollback git-remote pack repl attach export deploy help" -f -a "down" -d 'Stop every app gracefully, then the supervisor'
complete -c windlass -n "__fish_windlass_using_subcommand help; and not __fish_seen_subcommand_from up down status logs start stop restart reload check top init completions man build releases rollback git-remote pack repl attach export deploy help" -f -a "status" -d 'Show every app instance: state, pid, port, uptime, restarts, memory, CPU'
complete -c windlass -n "__fish_windlass_using_subcommand help; and not __fish_seen_subcommand_from up down status logs start stop restart reload check top init completions man build releases rollback git-remote pack repl attach export deploy help" -f -a "logs" -d 'Show the logs of every app, or of one; -f follows'
complete -c windlass -n "__fish_windlass_using_subcommand help; and not __fish_seen_subcommand_from up down status logs start stop restart reload check top init completions man build releases rollback git-remote pack repl attach export deploy help" -f -a "start" -d 'Start, stop or restart every instance of an app'
complete -c windlass -n "__fish_windlass_using_subcommand help; and not __fish_seen_subcommand_from up down status logs start stop restart reload check top init completions man build releases rollback git-remote pack repl attach export deploy help" -f -a "stop" -d 'Start, stop or restart every instance of an app'
complete -c windlass -n "__fish_windlass_using_subcommand help; and not __fish_seen_subcommand_from up down status logs start stop restart reload check top init completions man build releases rollback git-remote pack repl attach export deploy help" -f -a "restart" -d 'Start, stop or restart every instance of an app'
complete -c windlass -n "__fish_windlass_using_subcommand help; and not __fish_seen_subcommand_from up down status logs start stop restart reload check top init completions man build releases rollback git-remote pack repl attach export deploy help" -f -a "reload" -d 'Reload an app with zero downtime (its `reload` strategy)'
complete -c windlass -n "__fish_windlass_using_subcommand help; and not __fish_seen_subcommand_from up down status logs start stop restart reload check top init completions man build releases rollback git-remote pack repl attach export deploy help" -f -a "check" -d 'Validate the config and exit: 0 when valid, 2 with every error otherwise'
complete -c windlass -n "__fish_windlass_using_subcommand help; and not __fish_seen_subcommand_from up down status logs start stop restart reload check top init completions man build releases rollback git-remote pack repl attach export deploy help" -f -a "top" -d 'Watch every app instance live: CPU%, memory, restarts, requests per second'
complete -c windlass -n "__fish_windlass_using_subcommand help; and not __fish_seen_subcommand_from up down status logs start stop restart reload check top init completions man build releases rollback git-remote pack repl attach export deploy help" -f -a "init" -d 'Write a windlass.toml for the project in this directory'
complete -c windlass -n "__fish_windlass_using_subcommand help; and not __fish_seen_subcommand_from up down status logs start stop restart reload check top init completions man build releases rollback git-remote pack repl attach export deploy help" -f -a "completions" -d 'Print shell completions for bash, zsh or fish (also elvish, powershell)'
complete -c windlass -n "__fish_windlass_using_subcommand help; and not __fish_seen_subcommand_from up down status logs start stop restart reload check top init completions man build releases rollback git-remote pack repl attach export deploy help" -f -a "man" -d 'Print the man page (roff) to stdout'
complete -c windlass -n "__fish_windlass_using_subcommand help; and not __fish_seen_subcommand_from up down status logs start stop restart reload check top init completions man build releases rollback git-remote pack repl attach export deploy help" -f -a "build" -d 'Build a release of each app (or APP): an immutable copy in .windlass/releases/ID/'
complete -c windlass -n "__fish_windlass_using_subcommand help; and not __fish_seen_subcommand_from up down status logs start stop restart reload check top init completions man build releases rollback git-remote pack repl attach export deploy help" -f -a "releases" -d 'List built releases (oldest first): `*` marks the one the next start runs, RUNNING the instances that run each one'
complete -c windlass -n "__fish_windlass_using_subcommand help; and not __fish_seen_subcommand_from up down status logs start stop restart reload check top init completions man build releases rollback git-remote pack repl attach export deploy help" -f -a "rollback" -d 'Switch an app to its previous release, or to any built RELEASE, with zero downtime'
complete -c windlass -n "__fish_windlass_using_subcommand help; and not __fish_seen_subcommand_from up down status logs start stop restart reload check top init completions man build releases rollback git-remote pack repl attach export deploy help" -f -a "git-remote" -d 'Deploy with `git push`: a bare repository whose hook builds and switches to each push'
complete -c windlass -n "__fish_windlass_using_subcommand help; and not __fish_seen_subcommand_from up down status logs start stop restart reload check top init completions man build releases rollback git-remote pack repl attach export deploy help" -f -a "pack" -d 'Pack the project into one self-contained artefact: releases, interpreters, shared libraries, windlass'
complete -c windlass -n "__fish_windlass_using_subcommand help; and not __fish_seen_subcommand_from up down status logs start stop restart reload check top init completions man build releases rollback git-remote pack repl attach export deploy help" -f -a "repl" -d 'Evaluate Lisp in a running app over swank: a REPL, or one form with --eval'
complete -c windlass -n "__fish_windlass_using_subcommand help; and not __fish_seen_subcommand_from up down status logs start stop restart reload check top init completions man build releases rollback git-remote pack repl attach export deploy help" -f -a "attach" -d 'Attach the terminal to an app\'s console (console = true); detach with Ctrl-]'
complete -c windlass -n "__fish_windlass_using_subcommand help; and not __fish_seen_subcommand_from up down status logs start stop restart reload check top init completions man build releases rollback git-remote pack repl attach export deploy help" -f -a "export" -d 'Generate deployment files from the config: a systemd unit, a Dockerfile, Kubernetes manifests'
complete -c windlass -n "__fish_windlass_using_subcommand help; and not __fish_seen_subcommand_from up down status logs start stop restart reload check top init completions man build releases rollback git-remote pack repl attach export deploy help" -f -a "deploy" -d 'Ship the newest release of every app to the hosts of `[deploy]` over ssh, host by host (or `batch` at once), switch each through a health-gated zero-downtime reload, and roll the updated hosts back on the first failure'
complete -c windlass -n "__fish_windlass_using_subcommand help; and not __fish_seen_subcommand_from up down status logs start stop restart reload check top init completions man build releases rollback git-remote pack repl attach export deploy help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c windlass -n "__fish_windlass_using_subcommand help; and __fish_seen_subcommand_from git-remote" -f -a "init" -d 'Create the bare repository to push to (default .windlass/repo.git)'
complete -c windlass -n "__fish_windlass_using_subcommand help; and __fish_seen_subcommand_from git-remote" -f -a "receive" -d 'The hook\'s side (run by git, not by hand)'
complete -c windlass -n "__fish_windlass_using_subcommand help; and __fish_seen_subcommand_from export" -f -a "systemd" -d 'A systemd service unit running `windlass up` (Type=notify, watchdog, hardening)'
complete -c windlass -n "__fish_windlass_using_subcommand help; and __fish_seen_subcommand_from export" -f -a "docker" -d 'A multi-stage Dockerfile and a .dockerignore; windlass runs as PID 1 in the image'
complete -c windlass -n "__fish_windlass_using_subcommand help; and __fish_seen_subcommand_from export" -f -a "k8s" -d 'Deployment, Service, PodDisruptionBudget, ConfigMap and ServiceMonitor manifests'
