//! `lb`: the command line. Everything of substance lives in the library.
use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};
use lb_user::{api, daemon, dataplane::AttachMode, policy};

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
    /// Attach to a NIC and balance the policy's listeners until SIGINT/SIGTERM
    /// (SIGHUP reloads the policy).
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

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(execute(cli.command)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("lb: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn execute(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run {
            config,
            iface,
            xdp_mode,
            socket,
            resolve_wait_s,
        } => {
            let mode = match xdp_mode {
                XdpMode::Native => AttachMode::Native,
                XdpMode::Generic => AttachMode::Generic,
                XdpMode::Auto => AttachMode::Auto,
            };
            daemon::run(daemon::RunOptions {
                config,
                iface,
                mode,
                socket,
                resolve_wait: Duration::from_secs_f64(resolve_wait_s.max(0.0)),
            })
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { config } => {
            let policy = policy::load(&config)?;
            println!(
                "{}: ok ({} listeners, {} target groups)",
                config.display(),
                policy.listeners.len(),
                policy.target_groups.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Status {
            target_group,
            json,
            socket,
        } => {
            let report = api::status(&socket).await?;
            if let Some(name) = &target_group
                && !report.target_groups.iter().any(|g| &g.name == name)
            {
                anyhow::bail!("no target group named {name:?}");
            }
            if json {
                let mut report = report;
                if let Some(name) = &target_group {
                    report.target_groups.retain(|g| &g.name == name);
                }
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", api::render(&report, target_group.as_deref()));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
