//! `lb`: the command line. Everything of substance lives in the library.
use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use clap::{Parser, Subcommand, ValueEnum};
use lb_user::{
    api, daemon,
    dataplane::{self, AttachMode, pin::Instance},
    policy, status,
};
use tracing::Level;
use tracing_subscriber::{
    filter::Targets, layer::SubscriberExt as _, util::SubscriberInitExt as _,
};

#[derive(Parser)]
#[command(
    name = "lb",
    version,
    about = "An XDP direct-server-return L4 load balancer"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum XdpMode {
    /// Driver mode (fast; the NIC driver must support XDP).
    Native,
    /// Generic (skb) mode: works everywhere, slower.
    Generic,
    /// Native if the driver supports it, else generic.
    Auto,
}

#[derive(Subcommand)]
enum Command {
    /// Attach to a NIC and balance the policy's listeners (SIGHUP reloads the
    /// policy). The data plane is pinned: it keeps forwarding after lb
    /// stops (SIGINT, SIGTERM, a crash), and the next `lb run` adopts it
    /// with every flow; `lb detach` removes it.
    Run {
        /// The policy (YAML).
        #[arg(long, short)]
        config: PathBuf,
        /// The NIC (default: the policy's `interface:`).
        #[arg(long, short)]
        iface: Option<String>,
        #[arg(long, value_enum, default_value = "auto")]
        xdp_mode: XdpMode,
        /// The API socket `lb status` talks to.
        #[arg(long, default_value = api::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Seconds to wait at start for the targets' MACs before attaching.
        #[arg(long, default_value_t = 3.0)]
        resolve_wait_s: f64,
    },
    /// Remove the data plane `lb run` left on a NIC: detach its XDP program
    /// (traffic to the VIPs falls to the kernel, so connections through it
    /// are reset), unpin its maps and remove its runtime state. Refused
    /// while an `lb run` serves the NIC.
    Detach {
        /// The NIC.
        #[arg(long, short)]
        iface: String,
    },
    /// Check a policy file and exit (nothing is attached).
    Check { config: PathBuf },
    /// Show the listeners, target groups and targets of the running lb.
    Status {
        /// Only this target group (like `gcloud compute target-pools get-health`).
        target_group: Option<String>,
        /// Print the stable JSON report instead of tables.
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = api::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
}

/// The log filter: `RUST_LOG` as `target=level` directives separated by
/// commas (a bare level sets the default, e.g. `debug` or
/// `info,lb_user::health=debug`); `info` when unset or unreadable (said on
/// stderr, since logging is not up yet).
fn log_filter(rust_log: Option<&str>) -> Targets {
    let default = Targets::new().with_default(Level::INFO);
    match rust_log.map(str::parse::<Targets>) {
        None => default,
        Some(Ok(targets)) => targets,
        Some(Err(e)) => {
            eprintln!("lb: RUST_LOG: {e}; logging at info");
            default
        }
    }
}

fn main() -> ExitCode {
    let log_filter = log_filter(std::env::var("RUST_LOG").ok().as_deref());
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(log_filter)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(execute(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("lb: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn execute(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run {
            config,
            iface,
            xdp_mode,
            socket,
            resolve_wait_s,
        } => {
            daemon::run(daemon::RunOptions {
                config,
                iface,
                mode: xdp_mode.into(),
                socket,
                resolve_wait: Duration::from_secs_f64(resolve_wait_s.max(0.0)),
            })
            .await
        }
        Command::Detach { iface } => detach(&iface),
        Command::Check { config } => check(&config),
        Command::Status {
            target_group,
            json,
            socket,
        } => show_status(&socket, target_group.as_deref(), json).await,
    }
}

impl From<XdpMode> for AttachMode {
    fn from(mode: XdpMode) -> AttachMode {
        match mode {
            XdpMode::Native => AttachMode::Native,
            XdpMode::Generic => AttachMode::Generic,
            XdpMode::Auto => AttachMode::Auto,
        }
    }
}

/// `lb detach`: removes the data plane and says what there was.
fn detach(iface: &str) -> anyhow::Result<()> {
    let instance = Instance::of_interface(iface);
    let done = dataplane::detach(&instance)?;
    let dir = instance.pin_dir();
    if !done.link && done.pins == 0 && !done.state {
        println!("{iface}: no data plane of lb ({} is empty)", dir.display());
        return Ok(());
    }
    println!(
        "{iface}: {}, {} pinned objects removed from {}{}",
        if done.link {
            "XDP program detached"
        } else {
            "no XDP link attached"
        },
        done.pins,
        dir.display(),
        if done.state {
            ", runtime state removed"
        } else {
            ""
        }
    );
    Ok(())
}

/// `lb check`: what `lb run` and a reload check, short of the host.
fn check(config: &Path) -> anyhow::Result<()> {
    let name = config.display().to_string();
    let text = policy::read(config)?;
    let policy = policy::parse(&name, &text)?;
    policy::check_servable(&name, &text, &policy)?;
    println!(
        "{}: ok ({} listeners, {} target groups)",
        config.display(),
        policy.listeners.len(),
        policy.target_groups.len()
    );
    Ok(())
}

/// `lb status`: the report of the `lb` at `socket`, or of one of its
/// groups, as JSON or as tables.
async fn show_status(socket: &Path, only_group: Option<&str>, json: bool) -> anyhow::Result<()> {
    let mut report = api::status(socket).await?;
    if let Some(name) = only_group
        && !report.target_groups.iter().any(|g| g.name == name)
    {
        anyhow::bail!("no target group named {name:?}");
    }
    if json {
        if let Some(name) = only_group {
            report.target_groups.retain(|g| g.name == name);
        }
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", status::render(&report, only_group));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_sets_levels_per_target_and_bad_values_fall_back_to_info() {
        let unset = log_filter(None);
        assert!(unset.would_enable("lb_user::daemon", &Level::INFO));
        assert!(!unset.would_enable("lb_user::daemon", &Level::DEBUG));

        let health = log_filter(Some("warn,lb_user::health=debug"));
        assert!(health.would_enable("lb_user::health::monitor", &Level::DEBUG));
        assert!(!health.would_enable("lb_user::daemon", &Level::INFO));
        assert!(health.would_enable("lb_user::daemon", &Level::WARN));

        let bad = log_filter(Some("lb_user=loud"));
        assert!(bad.would_enable("lb_user::daemon", &Level::INFO));
        assert!(!bad.would_enable("lb_user::daemon", &Level::DEBUG));
    }
}
