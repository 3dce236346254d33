//! `windlass export systemd | docker | k8s`: write deployment files for the project and say
//! how to use them. The generators live in [`crate::export`]; this verb loads the config,
//! gathers the machine's facts (the windlass binary, the project's owner) and writes.

use std::path::{Path, PathBuf};

use super::{CliError, ProjectArg, Result, exit, load_config};
use crate::export::{self, ExportError, docker, k8s, systemd};

/// Generate deployment files from the config: a systemd unit, a Dockerfile, Kubernetes
/// manifests.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "Examples:
  windlass export systemd                 ./myapp.service (Type=notify), and how to enable it
  windlass export systemd --user -o ~/.config/systemd/user
  windlass export docker                  ./Dockerfile and ./.dockerignore for the detected stack
  windlass export k8s -o k8s --namespace prod --image registry.example/myapp:20261124T031500Z")]
pub struct Args {
    #[command(subcommand)]
    pub target: Target,
}

#[derive(Debug, clap::Subcommand)]
pub enum Target {
    /// A systemd service unit running `windlass up` (Type=notify, watchdog, hardening).
    Systemd(SystemdArgs),
    /// A multi-stage Dockerfile and a .dockerignore; windlass runs as PID 1 in the image.
    Docker(DockerArgs),
    /// Deployment, Service, PodDisruptionBudget, ConfigMap and ServiceMonitor manifests.
    K8s(K8sArgs),
}

#[derive(Debug, clap::Args)]
pub struct SystemdArgs {
    /// A user unit (`systemctl --user`): WantedBy=default.target, no User=.
    #[arg(long)]
    pub user: bool,
    /// The directory to write the unit into.
    #[arg(short = 'o', long = "output", value_name = "DIR", default_value = ".")]
    pub output: PathBuf,
    /// User= of a system unit (default: the owner of the config file).
    #[arg(long, value_name = "USER")]
    pub run_as: Option<String>,
    #[command(flatten)]
    pub project: ProjectArg,
}

#[derive(Debug, clap::Args)]
pub struct DockerArgs {
    /// The directory to write the Dockerfile and .dockerignore into (default: the project's);
    /// the build context is the project directory either way.
    #[arg(short = 'o', long = "output", value_name = "DIR")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub project: ProjectArg,
}

#[derive(Debug, clap::Args)]
pub struct K8sArgs {
    /// The directory to write the manifests into.
    #[arg(
        short = 'o',
        long = "output",
        value_name = "DIR",
        default_value = "k8s"
    )]
    pub output: PathBuf,
    /// metadata.namespace of every object (default: none, kubectl's current namespace).
    #[arg(long, value_name = "NS")]
    pub namespace: Option<String>,
    /// The image the pods run (default `<project>:latest`, the tag `windlass pack --format
    /// oci` gives).
    #[arg(long, value_name = "REF")]
    pub image: Option<String>,
    #[command(flatten)]
    pub project: ProjectArg,
}

impl From<ExportError> for CliError {
    fn from(e: ExportError) -> CliError {
        let code = if e.is_usage() {
            exit::USAGE
        } else {
            exit::FAILURE
        };
        CliError {
            code,
            hint: e.hint(),
            message: e.to_string(),
        }
    }
}

pub fn run(args: Args) -> Result {
    match args.target {
        Target::Systemd(a) => run_systemd(a),
        Target::Docker(a) => run_docker(a),
        Target::K8s(a) => run_k8s(a),
    }
}

fn current_exe() -> Result<PathBuf> {
    std::env::current_exe()
        .and_then(|p| p.canonicalize())
        .map_err(|e| {
            CliError::new(
                exit::FAILURE,
                format!("cannot find windlass's own binary: {e}"),
            )
        })
}

fn print_written(written: &[PathBuf]) {
    for w in written {
        println!("wrote {}", w.display());
    }
}

fn run_systemd(a: SystemdArgs) -> Result {
    let config = load_config(a.project.file.as_ref())?;
    let run_as = a.run_as.or_else(|| owner_name(&config.file));
    let opts = systemd::Options {
        user: a.user,
        exe: current_exe()?,
        run_as,
    };
    let unit = systemd::generate(&config, &opts);
    let written = export::write(&a.output, std::slice::from_ref(&unit))?;
    print_written(&written);
    println!("install and start it:");
    for line in systemd::instructions(&config, &opts, &written[0]) {
        println!("  {line}");
    }
    Ok(exit::OK)
}

/// The name of the user owning `path`.
fn owner_name(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata(path).ok()?.uid();
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
}

fn run_docker(a: DockerArgs) -> Result {
    let config = load_config(a.project.file.as_ref())?;
    let stack = docker::detect(&config)?;
    let files = docker::generate(&config, &stack)?;
    let out = a.output.clone().unwrap_or_else(|| config.root.clone());
    let (support, top): (Vec<_>, Vec<_>) = files
        .into_iter()
        .partition(|f| f.name.starts_with(docker::SUPPORT_DIR));
    let mut written = export::write(&out, &top)?;
    written.extend(export::write(&config.root, &support)?);
    // The image runs the windlass that wrote its Dockerfile.
    let bin = config.root.join(docker::SUPPORT_DIR).join("windlass");
    let exe = current_exe()?;
    let tmp = bin.with_extension("tmp");
    std::fs::copy(&exe, &tmp)
        .and_then(|_| std::fs::rename(&tmp, &bin))
        .map_err(|e| {
            CliError::new(
                exit::FAILURE,
                format!("cannot copy {} to {}: {e}", exe.display(), bin.display()),
            )
        })?;
    written.push(bin);
    print_written(&written);
    let name = export::project_name(&config);
    let dockerfile = out.join("Dockerfile");
    println!("a {} project; build and run it:", stack.name());
    if out == config.root {
        println!("  docker build -t {name} {}", config.root.display());
    } else {
        println!(
            "  docker build -t {name} -f {} {}",
            dockerfile.display(),
            config.root.display()
        );
    }
    println!("  docker run --rm -p PORT:PORT {name}");
    Ok(exit::OK)
}

fn run_k8s(a: K8sArgs) -> Result {
    let config = load_config(a.project.file.as_ref())?;
    if let Some(ns) = &a.namespace {
        if export::dns_label(ns).as_deref() != Some(ns.as_str()) {
            return Err(
                CliError::new(exit::USAGE, format!("invalid namespace `{ns}`")).with_hint(
                    "a namespace is lowercase letters, digits and `-`, at most 63 characters",
                ),
            );
        }
    }
    let opts = k8s::Options {
        namespace: a.namespace.clone(),
        image: a.image,
    };
    let files = k8s::generate(&config, &opts);
    let written = export::write(&a.output, &files)?;
    print_written(&written);
    let ns = a.namespace.map(|n| format!(" -n {n}")).unwrap_or_default();
    for app in config.apps.iter().filter(|a| a.env_file.is_some()) {
        let file = app.env_file.as_deref().unwrap_or(Path::new(".env"));
        println!(
            "first create the Secret of `{}` (its values never go into a manifest):\n  kubectl{ns} create secret generic {} --from-env-file={}",
            app.name,
            k8s::env_secret_name(&config, app),
            file.display()
        );
    }
    if k8s::scrapable_admin_port(&config).is_some() {
        if config.admin.token.is_some() {
            println!(
                "the ServiceMonitor reads the admin token from a Secret:\n  kubectl{ns} create secret generic {} --from-literal=token=...",
                k8s::admin_secret_name(&config)
            );
        }
    } else {
        println!(
            "no ServiceMonitor: the admin listener is on loopback, out of Prometheus's reach; set `[admin] listen = \"0.0.0.0:9180\"` and a token to have one"
        );
    }
    println!("apply them:\n  kubectl apply -f {}", a.output.display());
    Ok(exit::OK)
}
