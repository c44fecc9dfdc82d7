//! `start`: run the node in the foreground until SIGINT or SIGTERM.

use super::*;

#[derive(Debug, Args)]
pub struct StartArgs {
    /// Address for the control API (overrides api.listen), e.g. 127.0.0.1:0 for any free port
    #[arg(long, value_name = "ADDR")]
    api_listen: Option<String>,
    /// Log filter (overrides log.level), e.g. debug or info,fab_node=debug
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
    /// Log format (overrides log.format): text or json
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<String>,
    /// Mesh listen multiaddrs, comma-separated (overrides mesh.listen), e.g.
    /// /ip4/127.0.0.1/tcp/0
    #[arg(long, value_name = "ADDRS")]
    mesh_listen: Option<String>,
    /// A peer to dial at start (repeatable; overrides mesh.bootstrap), e.g.
    /// /ip4/10.0.0.5/tcp/4001/p2p/12D3KooW...
    #[arg(long, value_name = "MULTIADDR")]
    bootstrap: Vec<String>,
    /// Do not look for peers with mDNS (overrides mesh.mdns)
    #[arg(long)]
    no_mdns: bool,
}

/// Registers SIGTERM and SIGINT handlers now, so a signal that arrives at any point after
/// this (even before the node serves) stops it cleanly; the future completes on the first.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => tracing::info!("SIGINT received; shutting down"),
            _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
        }
    })
}

pub fn start(g: &Global, a: StartArgs) -> Result<ExitCode> {
    let mut flags = Vec::new();
    if let Some(v) = a.api_listen {
        flags.push(("api.listen".to_owned(), v));
    }
    if let Some(v) = a.log_level {
        flags.push(("log.level".to_owned(), v));
    }
    if let Some(v) = a.log_format {
        flags.push(("log.format".to_owned(), v));
    }
    if let Some(v) = a.mesh_listen {
        flags.push(("mesh.listen".to_owned(), v));
    }
    if !a.bootstrap.is_empty() {
        flags.push(("mesh.bootstrap".to_owned(), a.bootstrap.join(",")));
    }
    if a.no_mdns {
        flags.push(("mesh.mdns".to_owned(), "false".to_owned()));
    }
    let config = load_config(g, &flags)?;
    init_logging(&config.log.level, config.log.format);
    let dir = data_dir(g);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("fab-rt")
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let shutdown = shutdown_signal()?;
        let node = Node::start(&dir, config).await?;
        eprintln!(
            "fabnode {} listening on http://{} (data dir {})",
            node.peer_id(),
            node.local_addr(),
            dir.display()
        );
        node.run(shutdown).await.context("serving the API")?;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
