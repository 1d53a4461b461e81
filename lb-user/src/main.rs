//! `lb`: the command line. Everything of substance lives in the library.
use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::Context as _;
use clap::{CommandFactory as _, Parser, Subcommand, ValueEnum};
use lb_user::{
    api, daemon,
    dataplane::{self, AttachMode, pin::Instance},
    policy, status, target_setup,
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
    /// Log lines as text (under systemd without a time: the journal stamps
    /// each line) or as one JSON object a line.
    #[arg(
        long,
        global = true,
        value_enum,
        env = "LB_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
    /// The lowest level logged (error, warn, info, debug, trace); RUST_LOG
    /// (`target=level` directives) refines it per module.
    #[arg(long, global = true, env = "LB_LOG_LEVEL")]
    log_level: Option<Level>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// `lb target-setup`'s arguments.
#[derive(clap::Args)]
struct TargetSetupArgs {
    /// A VIP this target serves (IPv4 or IPv6; repeat for several).
    #[arg(long = "vip", required = true, value_name = "VIP")]
    vips: Vec<IpAddr>,
    /// How UDP replies leave from the VIP: the server binds it, or
    /// stateful DNAT (iptables), or a stateless source rewrite
    /// (nftables).
    #[arg(long, value_enum, default_value = "bind")]
    udp: UdpMethod,
    /// A UDP listener's ports: one (53), a range (10000-20000) or all
    /// (repeat for several; needed by iptables and nftables; bind takes
    /// single ports only).
    #[arg(long = "udp-port", value_name = "PORTS")]
    udp_ports: Vec<policy::Ports>,
    /// This target's own address that the UDP rules use, one per
    /// family (default: the host's only address of that family).
    #[arg(long = "target-ip", value_name = "IP")]
    target_ips: Vec<IpAddr>,
    /// Set what is missing.
    #[arg(long, conflicts_with = "check")]
    apply: bool,
    /// Write the files that set it at every boot (a sysctl.d file, a
    /// script and a systemd unit, enabled).
    #[arg(long, conflicts_with = "check")]
    persist: bool,
    /// With --persist: write the files under DIR (an image being built).
    #[arg(long, value_name = "DIR", requires = "persist")]
    root: Option<PathBuf>,
    /// Report each item ok, missing or wrong, with its fix.
    #[arg(long)]
    check: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum UdpMethod {
    /// The UDP server binds the VIP (nothing to set; --check looks for it).
    Bind,
    /// iptables/ip6tables DNAT of the VIP to the target's own address.
    Iptables,
    /// nftables rewrite of the replies' source to the VIP.
    Nftables,
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

/// The options of `lb run`.
#[derive(clap::Args)]
struct RunArgs {
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
    /// Seconds to wait at start for the targets' MACs before attaching
    /// (0-3600).
    #[arg(long, default_value_t = 3.0, value_parser = seconds_arg::<0, 3600>)]
    resolve_wait_s: f64,
    /// Serve Prometheus metrics over HTTP at ADDR (/metrics); without a
    /// value, on the loopback: 127.0.0.1:9650. Off by default.
    #[arg(long, value_name = "ADDR", num_args = 0..=1,
          default_missing_value = lb_user::metrics::DEFAULT_ADDR)]
    metrics: Option<std::net::SocketAddr>,
    /// Keep a route for each VIP lb can serve (a listener with healthy
    /// targets) in routing table TABLE, lb's own, for a BGP daemon to
    /// learn and announce (BIRD: `protocol kernel { kernel table TABLE;
    /// learn; }`). Off by default.
    #[arg(long, value_name = "TABLE")]
    announce: Option<u32>,
}

impl From<RunArgs> for daemon::RunOptions {
    fn from(a: RunArgs) -> daemon::RunOptions {
        daemon::RunOptions {
            config: a.config,
            iface: a.iface,
            mode: a.xdp_mode.into(),
            socket: a.socket,
            resolve_wait: Duration::from_secs_f64(a.resolve_wait_s),
            metrics: a.metrics,
            announce: a.announce,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Attach to a NIC and balance the policy's listeners (SIGHUP reloads the
    /// policy). The data plane is pinned: it keeps forwarding after lb
    /// stops (SIGINT, SIGTERM, a crash), and the next `lb run` adopts it
    /// with every flow; `lb detach` removes it.
    Run(RunArgs),
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
    /// Send a policy to the running lb: it prints the plan (what is added,
    /// removed, drained or changed) and takes the policy whole, or with
    /// --dry-run changes nothing. The policy becomes lb's policy file (what
    /// SIGHUP and the next start read). Exit 0: applied (or valid with
    /// --dry-run); 1: refused (the policy's errors are printed); 2: lb not
    /// reached, or the file not read.
    Apply {
        /// The policy (YAML).
        file: PathBuf,
        /// Print the plan only.
        #[arg(long)]
        dry_run: bool,
        /// Target group OLD of the running policy is NEW in FILE: it keeps
        /// its flows, sticky sessions, health verdicts and drains (without
        /// it a renamed group is one removed, its flows choosing a target
        /// again, and one added). Repeat for several; names may be swapped.
        #[arg(long, value_name = "OLD=NEW", value_parser = rename_arg)]
        rename: Vec<String>,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: Client,
    },
    /// Take a target out gently: it gets no new flow, its flows go on until
    /// they end or its group's deregistration_delay_s passes. It stays
    /// drained (a restart too) until `lb undrain`. Exit 1 if refused, 2 if
    /// lb is not reached.
    Drain {
        target_group: String,
        target: IpAddr,
        #[command(flatten)]
        client: Client,
    },
    /// Put a drained target back: it takes new flows again, its flows as
    /// they are.
    Undrain {
        target_group: String,
        target: IpAddr,
        #[command(flatten)]
        client: Client,
    },
    /// Take this lb out of ECMP (maintenance): every VIP leaves the
    /// announce table (`lb run --announce`), so the BGP daemon withdraws
    /// it; the data plane goes on forwarding what still comes.
    /// It stays withdrawn (a restart too) until `lb announce`.
    Withdraw {
        #[command(flatten)]
        client: Client,
    },
    /// Announce the VIPs again after `lb withdraw` (each while a listener
    /// of it has healthy targets).
    Announce {
        #[command(flatten)]
        client: Client,
    },
    /// Print the completion script of `lb` for a shell (e.g. `lb
    /// completions bash > /etc/bash_completion.d/lb`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages of `lb` and of each command (lb.1, lb-run.1,
    /// ...) into a directory.
    Man { dir: PathBuf },
    /// Run on a DSR target: its DSR set-up for the load balancer's
    /// VIPs. Prints it as a shell script by default; --check says what is
    /// in place and what is missing (exit 0 when everything is, 1 if not),
    /// --apply sets what is missing (twice changes nothing), --persist
    /// writes the files that set it again at every boot.
    TargetSetup(TargetSetupArgs),
    /// Show the listeners, target groups and targets of the running lb.
    Status {
        /// Only this target group (like `gcloud compute target-pools get-health`).
        #[arg(value_parser = group_arg)]
        target_group: Option<String>,
        /// Print the stable JSON report instead of tables.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: Client,
    },
    /// Show packets/s, bits/s and new flows/s per listener and per target
    /// (like `ipvsadm -Ln --rate`), from the data plane's counters read
    /// twice, --interval seconds apart; with --watch, again every interval
    /// until Ctrl-C.
    Stats {
        /// Only this target group and its listener.
        #[arg(value_parser = group_arg)]
        target_group: Option<String>,
        /// Refresh every interval until Ctrl-C.
        #[arg(long, short)]
        watch: bool,
        /// Seconds between the two reads of each rate (0.1-3600).
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// One JSON object a line (each interval's counts and rates, and
        /// the CLOCK_MONOTONIC times of its two reads).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: Client,
    },
}

/// How a command reaches the running lb.
#[derive(clap::Args, Clone)]
struct Client {
    /// The API socket of the running lb.
    #[arg(long, default_value = api::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Seconds to wait for lb's answer (0-86400).
    #[arg(long, default_value_t = api::DEFAULT_TIMEOUT.as_secs_f64(), value_parser = seconds_arg::<0, 86_400>)]
    timeout: f64,
}

impl Client {
    fn timeout(&self) -> Duration {
        // At least 1 ms: `seconds_arg` lets 0 through only for waits.
        Duration::from_secs_f64(self.timeout.max(0.001))
    }
}

/// A number of seconds in MIN..=MAX (a usage error otherwise: NaN, an
/// infinity or a negative number would not make a `Duration`).
fn seconds_arg<const MIN: u32, const MAX: u32>(arg: &str) -> Result<f64, String> {
    let s: f64 = arg
        .parse()
        .map_err(|_| format!("{arg:?} is not a number of seconds"))?;
    if (f64::from(MIN)..=f64::from(MAX)).contains(&s) {
        Ok(s)
    } else {
        Err(format!("{arg} is out of range {MIN}-{MAX} seconds"))
    }
}

/// A target group's name as a command takes it: not empty.
fn group_arg(arg: &str) -> Result<String, String> {
    if arg.is_empty() {
        Err("a target group's name is not empty".into())
    } else {
        Ok(arg.to_string())
    }
}

/// The log filter: `RUST_LOG` as `target=level` directives separated by
/// commas (a bare level sets the default, e.g. `debug` or
/// `info,lb_user::health=debug`); `level` (`--log-level`) sets the default
/// level over it; `info` when neither is set or RUST_LOG is unreadable
/// (said on stderr, since logging is not up yet).
fn log_filter(rust_log: Option<&str>, level: Option<Level>) -> Targets {
    let default = Targets::new().with_default(Level::INFO);
    let targets = match rust_log.map(str::parse::<Targets>) {
        None => default,
        Some(Ok(targets)) => targets,
        Some(Err(e)) => {
            eprintln!("lb: RUST_LOG: {e}; logging at info");
            default
        }
    };
    match level {
        Some(level) => targets.with_default(level),
        None => targets,
    }
}

/// Logging to stderr, one line per event: text (no time under systemd,
/// whose journal stamps each line: `JOURNAL_STREAM` is set) or JSON.
fn init_logging(cli: &Cli) {
    let filter = log_filter(std::env::var("RUST_LOG").ok().as_deref(), cli.log_level);
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let registry = tracing_subscriber::registry().with(filter);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match (cli.log_format, journal) {
        (LogFormat::Json, _) => registry.with(fmt.json().flatten_event(true)).init(),
        (LogFormat::Text, true) => registry.with(fmt.without_time().with_ansi(false)).init(),
        (LogFormat::Text, false) => registry.with(fmt).init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli);
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

/// Exit codes of the commands that talk to a running `lb`: it said no, or
/// it could not be asked.
const REFUSED: u8 = 1;
const UNREACHED: u8 = 2;

async fn execute(command: Command) -> anyhow::Result<ExitCode> {
    let done = |r: anyhow::Result<()>| r.map(|()| ExitCode::SUCCESS);
    match command {
        Command::Apply {
            file,
            dry_run,
            rename,
            json,
            client,
        } => Ok(apply(&client, &file, dry_run, rename, json).await),
        Command::Drain {
            target_group,
            target,
            client,
        } => Ok(drain(&client, target_group, target, true).await),
        Command::Undrain {
            target_group,
            target,
            client,
        } => Ok(drain(&client, target_group, target, false).await),
        Command::Run(args) => done(daemon::run(args.into()).await),
        Command::Detach { iface } => done(detach(&iface).await),
        Command::Withdraw { client } => Ok(announce(&client, false).await),
        Command::Announce { client } => Ok(announce(&client, true).await),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "lb", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { dir } => done(man_pages(&dir)),
        Command::Check { config } => done(check(&config)),
        Command::TargetSetup(args) => target_setup(args).await,
        Command::Status {
            target_group,
            json,
            client,
        } => done(show_status(&client, target_group.as_deref(), json).await),
        Command::Stats {
            target_group,
            watch,
            interval,
            json,
            client,
        } => done(show_stats(&client, target_group.as_deref(), watch, interval, json).await),
    }
}

/// `lb target-setup`: exit 0, or 1 when a check found something missing.
async fn target_setup(args: TargetSetupArgs) -> anyhow::Result<ExitCode> {
    let options = target_setup::Options {
        request: target_setup::Request {
            vips: args.vips,
            udp: args.udp.into(),
            ports: args.udp_ports,
            target_ips: args.target_ips,
        },
        apply: args.apply,
        persist: args
            .persist
            .then(|| args.root.unwrap_or_else(|| PathBuf::from("/"))),
        check: args.check,
    };
    let ok = target_setup::run(&options).await?;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(REFUSED)
    })
}

impl From<UdpMethod> for target_setup::UdpMethod {
    fn from(method: UdpMethod) -> target_setup::UdpMethod {
        match method {
            UdpMethod::Bind => target_setup::UdpMethod::Bind,
            UdpMethod::Iptables => target_setup::UdpMethod::Iptables,
            UdpMethod::Nftables => target_setup::UdpMethod::Nftables,
        }
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

/// `lb detach`: empties the announce table (the BGP daemon withdraws the
/// VIPs first), then removes the data plane, and says what there was.
async fn detach(iface: &str) -> anyhow::Result<()> {
    let instance = Instance::of_interface(iface);
    let saved = lb_user::state::RuntimeState::load_any(&instance.state_dir());
    let tables: Vec<u32> = saved
        .map(|s| s.announce.into_iter().chain(s.stale_announce).collect())
        .unwrap_or_default();
    if !tables.is_empty() {
        // Refused while lb runs: then nothing is touched.
        drop(instance.lock()?);
    }
    // Every table tried, then the first failure reported (before the data
    // plane goes: the next detach tries again).
    let mut failed = None;
    for table in tables {
        match lb_user::announce::remove(table).await {
            Ok(held) => println!(
                "{iface}: announce table {table} emptied ({held} routes): its VIPs are withdrawn"
            ),
            Err(err) => {
                eprintln!("lb: cannot empty announce table {table}: {err:#}");
                failed.get_or_insert(err);
            }
        }
    }
    if let Some(err) = failed {
        return Err(err);
    }
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

/// `lb man DIR`: the man pages of `lb` and of each command, written into
/// `dir` (made if missing).
fn man_pages(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot make {}", dir.display()))?;
    clap_mangen::generate_to(Cli::command(), dir)
        .with_context(|| format!("cannot write the man pages into {}", dir.display()))?;
    println!("man pages written to {}", dir.display());
    Ok(())
}

/// `lb check`: what `lb run` and a reload check, short of the host; then
/// the notices `lb run` would log (settings that do nothing).
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
    for notice in policy::notices(&name, &text, &policy) {
        println!("{notice}");
    }
    Ok(())
}

/// `lb status`: the report of the `lb` at `socket`, or of one of its
/// groups, as JSON or as tables.
async fn show_status(client: &Client, only_group: Option<&str>, json: bool) -> anyhow::Result<()> {
    let report = api::status(&client.socket, only_group, client.timeout()).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", status::render(&report, only_group));
    }
    Ok(())
}

/// A `--rename` argument: `OLD=NEW`.
fn rename_arg(arg: &str) -> Result<String, String> {
    lb_user::rename::Renames::parse(&[arg])
        .map(|_| arg.to_string())
        .map_err(|e| e.to_string())
}

/// `lb apply`: sends the policy, prints the plan and what was done.
async fn apply(
    client: &Client,
    file: &Path,
    dry_run: bool,
    renames: Vec<String>,
    json: bool,
) -> ExitCode {
    let text = match policy::read(file) {
        Ok(text) => text,
        Err(err) => {
            eprintln!("lb: {err}");
            return ExitCode::from(UNREACHED);
        }
    };
    let request = api::Request::Apply(api::Apply {
        source: file.display().to_string(),
        text,
        dry_run,
        renames,
    });
    let reply = match api::call(&client.socket, &request, client.timeout()).await {
        Ok(api::Reply::Apply(reply)) => reply,
        Ok(other) => {
            eprintln!("lb: lb answered {other:?} to `apply`");
            return ExitCode::from(UNREACHED);
        }
        Err(err @ api::ClientError::Remote { .. }) => {
            eprintln!("lb: {err}");
            return ExitCode::from(REFUSED);
        }
        Err(err) => {
            eprintln!("lb: {err}");
            return ExitCode::from(UNREACHED);
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&reply).expect("a reply serializes")
        );
    } else {
        print!("{}", reply.render());
    }
    if reply.refused.is_some() {
        ExitCode::from(REFUSED)
    } else {
        ExitCode::SUCCESS
    }
}

/// `lb drain` (`drain`) or `lb undrain`.
async fn drain(client: &Client, group: String, ip: IpAddr, drain: bool) -> ExitCode {
    let target = api::TargetRef { group, ip };
    let request = if drain {
        api::Request::Drain(target)
    } else {
        api::Request::Undrain(target)
    };
    match ask(client, &request).await {
        Ok(api::Reply::Drain(reply)) => {
            println!("{}", reply.render(now_unix()));
            ExitCode::SUCCESS
        }
        Ok(other) => unexpected(&other),
        Err(code) => code,
    }
}

/// `lb announce` (`on`) or `lb withdraw`: prints each VIP and why.
async fn announce(client: &Client, on: bool) -> ExitCode {
    let status = match ask(client, &api::Request::Announce(on)).await {
        Ok(api::Reply::Announce(status)) => status,
        Ok(other) => return unexpected(&other),
        Err(code) => return code,
    };
    let how = if status.withdrawn {
        "withdrawn (until lb announce)"
    } else {
        "announced while they can be served"
    };
    println!("VIPs in table {}: {how}", status.table);
    for v in &status.vips {
        let state = if v.announced {
            "announced"
        } else {
            "withdrawn"
        };
        println!("  {} {state}: {}", v.vip, v.reason);
    }
    ExitCode::SUCCESS
}

/// `request`'s reply, or the exit code of its failure (said on stderr):
/// refused by lb, or lb not reached.
async fn ask(client: &Client, request: &api::Request) -> Result<api::Reply, ExitCode> {
    match api::call(&client.socket, request, client.timeout()).await {
        Ok(reply) => Ok(reply),
        Err(err @ api::ClientError::Remote { .. }) => {
            eprintln!("lb: {err}");
            Err(ExitCode::from(REFUSED))
        }
        Err(err) => {
            eprintln!("lb: {err}");
            Err(ExitCode::from(UNREACHED))
        }
    }
}

/// A reply of another kind than the request's.
fn unexpected(reply: &api::Reply) -> ExitCode {
    eprintln!("lb: lb answered {reply:?}");
    ExitCode::from(UNREACHED)
}

/// `lb stats`: two samples `interval` apart, and their rates; with
/// `watch`, one more every interval until Ctrl-C.
async fn show_stats(
    client: &Client,
    group: Option<&str>,
    watch: bool,
    interval: f64,
    json: bool,
) -> anyhow::Result<()> {
    if !(0.1..=3600.0).contains(&interval) {
        anyhow::bail!("--interval {interval}: use 0.1 to 3600 seconds");
    }
    let interval = Duration::from_secs_f64(interval);
    let read = || api::stats(&client.socket, group, client.timeout());
    let mut before = read().await?;
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        let after = read().await?;
        let rates = lb_user::stats::rates(&before, &after);
        if json {
            println!("{}", serde_json::to_string(&rates)?);
        } else {
            if watch {
                println!();
            }
            print!("{}", lb_user::stats::render(&rates));
        }
        if !watch {
            return Ok(());
        }
        before = after;
    }
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_sets_levels_per_target_and_bad_values_fall_back_to_info() {
        let unset = log_filter(None, None);
        assert!(unset.would_enable("lb_user::daemon", &Level::INFO));
        assert!(!unset.would_enable("lb_user::daemon", &Level::DEBUG));

        let health = log_filter(Some("warn,lb_user::health=debug"), None);
        assert!(health.would_enable("lb_user::health::monitor", &Level::DEBUG));
        assert!(!health.would_enable("lb_user::daemon", &Level::INFO));
        assert!(health.would_enable("lb_user::daemon", &Level::WARN));

        let bad = log_filter(Some("lb_user=loud"), None);
        assert!(bad.would_enable("lb_user::daemon", &Level::INFO));
        assert!(!bad.would_enable("lb_user::daemon", &Level::DEBUG));

        // --log-level sets the default; RUST_LOG's per-module levels stay.
        let flag = log_filter(Some("lb_user::health=trace"), Some(Level::WARN));
        assert!(!flag.would_enable("lb_user::daemon", &Level::INFO));
        assert!(flag.would_enable("lb_user::health", &Level::TRACE));
        let debug = log_filter(None, Some(Level::DEBUG));
        assert!(debug.would_enable("lb_user::daemon", &Level::DEBUG));
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
